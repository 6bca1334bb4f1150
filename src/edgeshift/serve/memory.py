"""What the runtimes may keep between requests: the options a served model's backend is
opened with, so memory returns to its idle level after a large request.

A served backend gets a memory budget: a call whose activations (estimated from the model's
static memory plan, per input byte) would exceed it runs in row chunks, and after such a call
the runtime frees its arena growth and the C heap is trimmed (see edgeshift.runtime.base).
Calls within the budget, every ordinary batch, run exactly as before. The front ends call
``release_after_request`` once a large request's answer is written: decoding and encoding
leave freed memory on the C heap that only a trim returns (measured: +17-20 MB after the
largest JSON request without it, +3-6% of idle with it).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from edgeshift.runtime.base import trim_heap

MIB = 1 << 20
# Activations of one runtime call when --memory-budget-mb is not given: 512 rows of the
# digits CNN (16 KiB of activations a row). On 2 cores 65,536 rows then run in ~0.2 s against
# 0.9 s in one call (512- to 2,048-row chunks take the same time: a 1 GiB arena is what is
# slow), and the largest allowed binary request peaks at 0.65x of 3x its body (0.9x at 16 MiB).
DEFAULT_MEMORY_BUDGET_BYTES = 8 * MIB
# Bodies at least this large trigger a heap trim once answered; smaller ones never do (a
# trim takes milliseconds and locks the allocator's arenas while it walks them).
TRIM_AFTER_BODY_BYTES = 1 * MIB
# The trim waits this long after the request that asked for it: the answer's buffers are
# dropped when the write completes, on the event loop's next turns.
TRIM_DELAY_S = 0.05


def rss_bytes() -> int:
    """This process's resident set size: from /proc where it exists (psutil, which costs a
    server or an edge agent ~2.6 MB of RSS itself, only where it does not)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil

        return int(psutil.Process().memory_info().rss)


def server_runtime_options(backend: str, memory_budget_bytes: int | None) -> dict[str, Any] | None:
    """Runtime options for a served model on BACKEND.

    ORT without spinning pool threads: idle threads that spin take the cycles the event loop
    needs to parse the next batch (measured on a busy 2-core box: ~2x served throughput; on an
    idle box about the same). Both runtimes get the memory budget (default
    DEFAULT_MEMORY_BUDGET_BYTES)."""
    budget = {"memory_budget_bytes": memory_budget_bytes or DEFAULT_MEMORY_BUDGET_BYTES}
    if backend == "onnxruntime":
        return {"allow_spinning": False, **budget}
    if backend == "openvino":
        return budget
    return None


class _Trimmer:
    """One daemon thread that trims the C heap shortly after it is asked, at most once for
    many requests that ask together; never on the caller's thread (the event loop)."""

    def __init__(self) -> None:
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        self._wanted.set()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="heap-trim", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            time.sleep(TRIM_DELAY_S)
            self._wanted.clear()  # the requests that asked until now share this trim
            trim_heap()


_TRIMMER = _Trimmer()


def release_after_request(body_bytes: int) -> None:
    """Call when a request of BODY_BYTES has been answered (HTTP body or gRPC message): a
    large one's freed buffers go back to the OS shortly after, off the calling thread. A
    no-op below TRIM_AFTER_BODY_BYTES, so small requests pay one comparison."""
    if body_bytes >= TRIM_AFTER_BODY_BYTES:
        _TRIMMER.request()
