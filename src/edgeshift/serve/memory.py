"""What the runtimes may keep between requests: the options a served model's backend is
opened with, so memory returns to its idle level after a large request.

A served backend gets a memory budget: a call whose activations (estimated from the model's
static memory plan, per input byte) would exceed it runs in row chunks, and after such a call
the runtime frees its arena growth and the C heap is trimmed (see edgeshift.runtime.base).
Calls within the budget, every ordinary batch, run exactly as before.
"""

from __future__ import annotations

from typing import Any

MIB = 1 << 20
# Activations of one runtime call when --memory-budget-mb is not given. 16 MiB is 1,024 rows
# of the digits CNN (16 KiB of activations a row): on 2 cores, 65,536 rows run in 0.18 s in
# 1,024-row chunks against 0.9 s in one call (a 1 GiB arena is slower than a cached one), and
# the largest allowed binary request then peaks under 3x its body.
DEFAULT_MEMORY_BUDGET_BYTES = 16 * MIB


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
