"""Group commit for device nonces: every signed device request records its nonce (replay
protection) before anything else, so on a busy control plane most writes are nonces. One
writer thread takes every nonce waiting and records them in one transaction; each request
waits for the commit that holds its own. Under load that is one write transaction for dozens
of requests instead of one each (a single SQLite writer, and Python's GIL, made those queue);
idle, a request waits for exactly its own."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_BATCH = 256  # nonces recorded in one transaction at most


@dataclass
class NonceAsk:
    device_id: str
    nonce: str
    now: float
    # True: fresh (recorded, the device marked seen); False: used before (a replay); an
    # exception: what the request gets instead (FleetError 404 for an unknown or revoked device)
    result: bool | BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


WriteBatch = Callable[[list[NonceAsk]], None]  # sets every ask's result, in one transaction


class NonceBatcher:
    def __init__(self, write: WriteBatch, max_batch: int = MAX_BATCH) -> None:
        self._write = write
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[NonceAsk | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self._closed = False

    def remember(self, device_id: str, nonce: str, now: float) -> bool:
        """True for a fresh nonce, False for a replay; raises what the batch's write raised
        for this request."""
        ask = NonceAsk(device_id, nonce, now)
        self._ensure_writer()
        self._queue.put(ask)
        ask.done.wait()
        if isinstance(ask.result, BaseException):
            raise ask.result
        return bool(ask.result)

    def close(self) -> None:
        with self._start:
            self._closed = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=10)

    def _ensure_writer(self) -> None:
        if self._thread is not None:
            return
        with self._start:
            if self._closed:
                raise RuntimeError("the store is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="edgeshift-nonces", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < self._max_batch:
                try:
                    ask = self._queue.get_nowait()
                except queue.Empty:
                    break
                if ask is None:
                    stop = True
                    break
                batch.append(ask)
            try:
                self._write(batch)
            except BaseException as exc:
                for ask in batch:
                    if ask.result is None:
                        ask.result = exc
            for ask in batch:
                if ask.result is None:
                    ask.result = RuntimeError("nonce batch left a request unanswered")
                ask.done.set()
            if stop:
                return
