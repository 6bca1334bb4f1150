"""Shadow comparison: a sample of live requests also runs on the candidate (off the event
loop, on its own batcher's thread) and the outputs are compared with what last-good answered.

A request *agrees* when every output matches: float scores with a last axis of 2 or more
classes match when their top-1 along that axis is the same for every row (a classifier's
decision); any other output matches when ``np.allclose(rtol=1e-3, atol=1e-4)`` (float32
noise of a re-optimized graph, well below a changed answer). *Drift* is the mean absolute
difference over every float output element, averaged over the compared requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import numpy as np

Outputs = dict[str, np.ndarray]
RTOL = 1e-3
ATOL = 1e-4


def compare_outputs(reference: Outputs, candidate: Outputs) -> tuple[bool, float | None]:
    """(agree, mean |difference| over float elements or None when nothing numeric compares)."""
    agree = True
    diffs: list[float] = []
    for name, ref in reference.items():
        cand = candidate.get(name)
        if cand is None or cand.shape != ref.shape:
            agree = False
            continue
        is_float = np.issubdtype(ref.dtype, np.floating) and np.issubdtype(cand.dtype, np.floating)
        if is_float:
            if ref.size:
                diffs.append(float(np.mean(np.abs(ref.astype(np.float64) - cand))))
            if ref.ndim >= 1 and ref.shape[-1] >= 2:
                same = np.array_equal(np.argmax(ref, axis=-1), np.argmax(cand, axis=-1))
            else:
                same = bool(np.allclose(ref, cand, rtol=RTOL, atol=ATOL))
        elif ref.dtype == object or cand.dtype == object:
            same = bool(np.array_equal(ref, cand))
        else:
            same = bool(np.array_equal(ref, cand))
        agree = agree and same
    return agree, (float(np.mean(diffs)) if diffs else None)


class Comparator(Protocol):
    """What the agent reads of a shadow run."""

    @property
    def samples(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def agreement(self) -> float | None: ...
    @property
    def drift(self) -> float | None: ...
    async def close(self) -> None: ...


CandidateRun = Callable[[Outputs], "asyncio.Future[Outputs]"]


class ShadowComparator:
    """Fed by the served model's observer; runs every SAMPLE_EVERY-th request on the candidate,
    at most MAX_IN_FLIGHT at once (shadow never queues up behind live traffic: a request that
    finds the candidate busy is skipped and counted)."""

    def __init__(
        self,
        run: CandidateRun,
        close: Callable[[], object] | None = None,
        *,
        sample_every: int = 1,
        max_in_flight: int = 2,
    ) -> None:
        self._run = run
        self._close = close
        self.sample_every = max(1, sample_every)
        self.max_in_flight = max(1, max_in_flight)
        self.seen = 0
        self.skipped = 0
        self._samples = 0
        self._matches = 0
        self._errors = 0
        self._drift_sum = 0.0
        self._drift_count = 0
        self._in_flight = 0
        self._closed = False

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def errors(self) -> int:
        return self._errors

    @property
    def agreement(self) -> float | None:
        return self._matches / self._samples if self._samples else None

    @property
    def drift(self) -> float | None:
        return self._drift_sum / self._drift_count if self._drift_count else None

    def observe(self, feeds: Outputs, outputs: Outputs | None, elapsed_s: float = 0.0) -> None:
        if self._closed or outputs is None:
            return
        self.seen += 1
        if self.seen % self.sample_every:
            return
        if self._in_flight >= self.max_in_flight:
            self.skipped += 1
            return
        try:
            future = self._run(feeds)
        except Exception:
            self._errors += 1
            return
        self._in_flight += 1

        def done(f: asyncio.Future[Outputs]) -> None:
            self._in_flight -= 1
            if f.cancelled() or f.exception() is not None:
                self._errors += 1
                return
            agree, drift = compare_outputs(outputs, f.result())
            self._samples += 1
            self._matches += agree
            if drift is not None:
                self._drift_sum += drift
                self._drift_count += 1

        future.add_done_callback(done)

    async def close(self) -> None:
        self._closed = True
        if self._close is not None:
            result = self._close()
            if asyncio.iscoroutine(result):
                await result
