"""What the runtimes may keep between requests: the options a served model's backend is
opened with, so memory returns to its idle level after a large request.
"""

from __future__ import annotations

from typing import Any


def server_runtime_options(backend: str, memory_budget_bytes: int | None) -> dict[str, Any] | None:
    """Runtime options for a served model on BACKEND.

    ORT without spinning pool threads: idle threads that spin take the cycles the event loop
    needs to parse the next batch (measured on a busy 2-core box: ~2x served throughput; on an
    idle box about the same)."""
    return {"allow_spinning": False} if backend == "onnxruntime" else None
