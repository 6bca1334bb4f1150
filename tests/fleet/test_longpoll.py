"""Woken long polls read their desired state in one query (fleet/longpoll.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from edgeshift.errors import FleetError
from edgeshift.fleet.longpoll import DesiredReads
from edgeshift.fleet.schema import DesiredState


def state(generation: int) -> DesiredState:
    return DesiredState(generation=generation)


class FakeStore:
    def __init__(self, known: dict[str, int], fail: bool = False) -> None:
        self.known = known
        self.fail = fail
        self.many: list[list[str]] = []
        self.one: list[str] = []

    async def read_many(self, ids: Sequence[str]) -> dict[str, DesiredState]:
        self.many.append(list(ids))
        await asyncio.sleep(0)  # a worker-thread hop in the real thing
        if self.fail:
            raise FleetError("the fleet database failed", 503)
        return {d: state(self.known[d]) for d in ids if d in self.known}

    async def read_one(self, device_id: str) -> DesiredState:
        self.one.append(device_id)
        if device_id not in self.known:
            raise FleetError(f"no device {device_id}", 404)
        return state(self.known[device_id])


def test_polls_woken_together_read_in_one_query() -> None:
    store = FakeStore({f"d{i}": i for i in range(50)})
    reads = DesiredReads(store.read_many, store.read_one)

    async def main() -> tuple[list[DesiredState], list[DesiredState]]:
        first = await asyncio.gather(*(reads.read(f"d{i}") for i in range(50)))
        later = await asyncio.gather(reads.read("d7"), reads.read("d7"))
        return first, later

    first, later = asyncio.run(main())
    assert [s.generation for s in first] == list(range(50))  # each its own
    assert [s.generation for s in later] == [7, 7]
    assert store.many == [[f"d{i}" for i in range(50)], ["d7"]]  # one query per pass
    assert store.one == []


def test_a_device_gone_since_gets_its_own_error_and_a_failed_read_fails_each_poll() -> None:
    store = FakeStore({"d1": 1})
    reads = DesiredReads(store.read_many, store.read_one)

    async def main() -> list[object]:
        return await asyncio.gather(reads.read("d1"), reads.read("gone"), return_exceptions=True)

    ok, gone = asyncio.run(main())
    assert isinstance(ok, DesiredState) and ok.generation == 1
    assert isinstance(gone, FleetError) and gone.status == 404 and store.one == ["gone"]

    store.fail = True

    async def failing() -> list[object]:
        return await asyncio.gather(reads.read("d1"), reads.read("d2"), return_exceptions=True)

    results = asyncio.run(failing())
    assert [getattr(r, "status", None) for r in results] == [503, 503]


def test_reads_work_again_after_a_failure() -> None:
    store = FakeStore({"d1": 3}, fail=True)
    reads = DesiredReads(store.read_many, store.read_one)

    async def main() -> DesiredState:
        with pytest.raises(FleetError):
            await reads.read("d1")
        store.fail = False
        return await reads.read("d1")

    assert asyncio.run(main()).generation == 3
