"""Long polls woken together read together. A wave's start changes the desired state of
hundreds of devices at once and wakes their long polls in one pass; each then needs its new
desired state. Read one by one, that was a worker-thread call and a transaction per device;
``DesiredReads`` gathers the reads made in the same turn of the event loop into one
``desired_many`` query."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from edgeshift.fleet.schema import DesiredState

ReadMany = Callable[[Sequence[str]], Awaitable[dict[str, DesiredState]]]
ReadOne = Callable[[str], Awaitable[DesiredState]]


class DesiredReads:
    def __init__(self, read_many: ReadMany, read_one: ReadOne) -> None:
        self._read_many = read_many
        self._read_one = read_one  # a device the batch did not find: its own error
        self._pending: dict[str, list[asyncio.Future[DesiredState | None]]] = {}
        self._flush: asyncio.Task[None] | None = None

    async def read(self, device_id: str) -> DesiredState:
        """DEVICE_ID's desired state, read in one query with every other read asked for
        before the event loop next gets round to it."""
        future: asyncio.Future[DesiredState | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(device_id, []).append(future)
        if self._flush is None:
            self._flush = asyncio.create_task(self._read_pending())
        state = await future
        return state if state is not None else await self._read_one(device_id)

    async def _read_pending(self) -> None:
        await asyncio.sleep(0)  # the polls woken in the same pass ask before this reads
        pending, self._pending, self._flush = self._pending, {}, None
        try:
            states = await self._read_many(list(pending))
        except BaseException as exc:
            for futures in pending.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for device_id, futures in pending.items():
            for future in futures:
                if not future.done():
                    # None: not found in the batch (unknown since); read() asks alone.
                    future.set_result(states.get(device_id))
