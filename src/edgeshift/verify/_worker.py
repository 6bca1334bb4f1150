"""Runs a batch of verification jobs in one process, natively or inside the arm64 userland.

``python -m edgeshift.verify._worker JOBDIR`` reads ``JOBDIR/jobs.json``, runs every job
through :func:`edgeshift.runtime.open_backend` (so an artifact runs with its recorded
backend, precision and options, exactly as on x86) and writes each job's outputs to
``JOBDIR/<id>.npz``. Before a job starts it appends a ``started`` line to
``JOBDIR/progress.jsonl``: if the runtime kills the process, the host knows which model did it.
One process for all jobs because under QEMU the imports alone cost seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

JOBS_FILE = "jobs.json"
PROGRESS_FILE = "progress.jsonl"


def _log(progress: Path, record: dict[str, Any]) -> None:
    with progress.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def run_job(job: dict[str, Any]) -> tuple[dict[str, np.ndarray], float]:
    """Outputs of one job over all its samples, and the seconds the runs took."""
    from edgeshift.runtime import open_backend

    backend = open_backend(
        job["model"],
        job.get("backend"),
        job.get("precision"),
        job.get("threads", 1),
        job.get("options"),
    )
    with np.load(job["inputs"]) as data:
        feeds = {name: data[name] for name in data.files}
    samples = int(next(iter(feeds.values())).shape[0])
    first = backend.inputs[0].shape[0] if backend.inputs and backend.inputs[0].shape else None
    batch = first if isinstance(first, int) and first > 0 else int(job.get("batch", 32))
    chunks: list[dict[str, np.ndarray]] = []
    start = time.perf_counter()
    for lo in range(0, samples, batch):
        chunks.append(backend.run({k: v[lo : lo + batch] for k, v in feeds.items()}))
    seconds = time.perf_counter() - start
    backend.close()
    names = [o.name for o in backend.outputs]
    return {n: np.concatenate([c[n] for c in chunks]) for n in names}, seconds


def run_jobs(jobdir: Path) -> None:
    spec = json.loads((jobdir / JOBS_FILE).read_text())
    progress = jobdir / PROGRESS_FILE
    for job in spec["jobs"]:
        _log(progress, {"id": job["id"], "event": "started"})
        try:
            outputs, seconds = run_job(job)
        except Exception as exc:  # every failure is this job's verdict; the others still run
            text = str(exc).strip()
            line = (text.splitlines()[0] if text else type(exc).__name__)[:400]
            _log(progress, {"id": job["id"], "event": "error", "message": line})
            continue
        names = list(outputs)
        arrays = {f"out{i}": outputs[n] for i, n in enumerate(names)}
        np.savez(jobdir / f"{job['id']}.npz", **arrays)  # type: ignore[arg-type]  # numpy stub
        _log(progress, {"id": job["id"], "event": "done", "outputs": names, "seconds": seconds})


if __name__ == "__main__":
    run_jobs(Path(sys.argv[1]))
