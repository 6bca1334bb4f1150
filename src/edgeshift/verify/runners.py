"""Runners: one per architecture, each runs a batch of jobs and returns their outputs.

An architecture is a pluggable runner: :func:`register_runner` maps an ``--arch`` name to a
factory. ``x86_64`` runs in this process; ``arm64`` runs one QEMU user-mode process over the
cached userland for the whole batch; ``cortex-m*`` compiles the model with ``edgeshift compile``
and runs it under qemu-system-arm (``edgeshift.mcu.arch_runner``).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import edgeshift
from edgeshift.errors import BackendError
from edgeshift.verify import _worker
from edgeshift.verify.userland import Userland, require_qemu, require_userland

ARCH_ALIASES = {"aarch64": "arm64", "amd64": "x86_64", "x86-64": "x86_64", "x64": "x86_64"}
CORTEX_M = ("cortex-m4", "cortex-m7", "cortex-m55")
# Runtimes with a build for each architecture (both ship manylinux wheels for x86_64 and
# aarch64); a backend missing here has no build there and its artifacts cannot be verified.
ARCH_BACKENDS: dict[str, tuple[str, ...]] = {
    "x86_64": ("onnxruntime", "openvino"),
    "arm64": ("onnxruntime", "openvino"),
}


# The emulated CPU matches the Neoverse-N1 the userland's /proc/cpuinfo describes (what the
# runtimes pick kernels from). Measured with QEMU 7.2: `-cpu max` (SVE, i8mm) made ORT's
# dynamic int8 MatMul disagree with x86 on 80% of digits-mlp samples while neoverse-n1
# agreed on all; cortex-a72 (no dot product) dies with SIGILL on the kernels cpuinfo promised.
DEFAULT_CPU = "neoverse-n1"


@dataclass(frozen=True)
class Job:
    """One model over one input set: what the worker needs, all paths absolute."""

    id: str
    model: str
    inputs: str
    backend: str | None = None
    precision: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    threads: int = 1  # one thread: the same reduction order on every side, and a fair guest
    batch: int = 32

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "inputs": self.inputs,
            "backend": self.backend,
            "precision": self.precision,
            "options": self.options,
            "threads": self.threads,
            "batch": self.batch,
        }


@dataclass
class JobResult:
    id: str
    outputs: dict[str, np.ndarray] | None
    error: str | None
    seconds: float = 0.0  # inference only; under emulation a cost, never a performance figure


class Runner(Protocol):
    """Runs jobs on one architecture. ``unavailable()`` says why it cannot, or None."""

    arch: str
    emulated: bool
    backends: tuple[str, ...]

    def unavailable(self) -> str | None: ...

    def run(self, jobs: Sequence[Job], jobdir: Path) -> list[JobResult]: ...


def native_arch() -> str:
    machine = platform.machine().lower()
    return ARCH_ALIASES.get(machine, machine)


def _read_results(jobdir: Path) -> tuple[dict[str, JobResult], list[str]]:
    """Finished results by id, and the ids that started (in order)."""
    done: dict[str, JobResult] = {}
    started: list[str] = []
    progress = jobdir / _worker.PROGRESS_FILE
    lines = progress.read_text().splitlines() if progress.is_file() else []
    for line in lines:
        record = json.loads(line)
        job_id = record["id"]
        if record["event"] == "started":
            started.append(job_id)
        elif record["event"] == "error":
            done[job_id] = JobResult(job_id, None, record["message"])
        else:
            with np.load(jobdir / f"{job_id}.npz") as data:
                arrays = [data[f"out{i}"] for i in range(len(record["outputs"]))]
            outputs = dict(zip(record["outputs"], arrays, strict=True))
            done[job_id] = JobResult(job_id, outputs, None, float(record["seconds"]))
    return done, started


def _write_jobs(jobs: Sequence[Job], jobdir: Path) -> None:
    jobdir.mkdir(parents=True, exist_ok=True)
    (jobdir / _worker.PROGRESS_FILE).unlink(missing_ok=True)
    (jobdir / _worker.JOBS_FILE).write_text(json.dumps({"jobs": [j.as_dict() for j in jobs]}))


class NativeRunner:
    """This machine's own CPU, in this process (the reference side)."""

    emulated = False

    def __init__(self, arch: str | None = None) -> None:
        self.arch = arch or native_arch()
        self.backends = ARCH_BACKENDS.get(self.arch, ("onnxruntime", "openvino"))

    def unavailable(self) -> str | None:
        if self.arch != native_arch():
            return f"unavailable: this host is {native_arch()}, not {self.arch}"
        return None

    def run(self, jobs: Sequence[Job], jobdir: Path) -> list[JobResult]:
        _write_jobs(jobs, jobdir)
        _worker.run_jobs(jobdir)
        done, _ = _read_results(jobdir)
        return [done[j.id] for j in jobs]


class QemuUserRunner:
    """arm64 under ``qemu-aarch64`` with the cached Debian userland; one process per batch.

    A job that kills the process (a runtime crash) gets a one-line error naming the signal,
    and the jobs after it run in a fresh process.
    """

    arch = "arm64"
    emulated = True
    backends = ARCH_BACKENDS["arm64"]

    def __init__(
        self,
        userland_root: Path | None = None,
        cpu: str | None = DEFAULT_CPU,
        timeout_s: float = 900.0,
    ) -> None:
        self.userland_root = userland_root
        self.cpu = cpu  # a QEMU -cpu model (cortex-a72, neoverse-n1, ...); None: QEMU's max
        self.timeout_s = timeout_s

    def unavailable(self) -> str | None:
        return None  # a missing QEMU or userland is an error with its fix, raised by run()

    def command(self, userland: Userland, qemu: str, jobdir: Path) -> list[str]:
        cpu = ["-cpu", self.cpu] if self.cpu else []
        python = [str(userland.python), "-m", "edgeshift.verify._worker", str(jobdir)]
        return [qemu, *cpu, "-L", str(userland.root), *python]

    def run(self, jobs: Sequence[Job], jobdir: Path) -> list[JobResult]:
        qemu = require_qemu()
        userland = require_userland(self.userland_root)
        results: dict[str, JobResult] = {}
        remaining = list(jobs)
        while remaining:
            _write_jobs(remaining, jobdir)
            argv = self.command(userland, qemu, jobdir)
            try:
                proc = subprocess.run(
                    argv,
                    env=guest_env(userland),
                    capture_output=True,
                    text=True,
                    timeout=self.timeout_s,
                    check=False,
                )
                returncode, stderr = proc.returncode, proc.stderr
            except subprocess.TimeoutExpired:
                returncode, stderr = -int(signal.SIGKILL), f"timed out after {self.timeout_s:g} s"
            done, started = _read_results(jobdir)
            results.update(done)
            unfinished = [s for s in started if s not in done]
            if returncode != 0 and not started:
                raise BackendError(
                    f"the arm64 Python did not start: {_last_line(stderr)} — rebuild the "
                    "userland with `edgeshift verify --build-userland --force`"
                )
            if returncode != 0 and unfinished:
                results[unfinished[0]] = JobResult(
                    unfinished[0], None, _crash_line(returncode, stderr)
                )
            remaining = [j for j in remaining if j.id not in results]
        return [results[j.id] for j in jobs]


class UnavailableRunner:
    """An architecture edgeshift knows but cannot run yet; it says why."""

    emulated = True
    backends: tuple[str, ...] = ()

    def __init__(self, arch: str, reason: str) -> None:
        self.arch, self.reason = arch, reason

    def unavailable(self) -> str | None:
        return self.reason

    def run(self, jobs: Sequence[Job], jobdir: Path) -> list[JobResult]:
        raise BackendError(f"{self.arch}: {self.reason}")


def guest_env(userland: Userland) -> dict[str, str]:
    """The guest Python's environment: the userland's wheels, then this edgeshift's source."""
    source = Path(edgeshift.__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        PYTHONPATH=f"{userland.site_packages}{os.pathsep}{source}",
        PYTHONNOUSERSITE="1",
        # Never write guest bytecode into the user's tree; the wheels were compiled at build.
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def _crash_line(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the runtime crashed on arm64 ({name}) running this model — {_last_line(stderr)}"
    return (
        f"the arm64 process exited with code {returncode} running this model — {_last_line(stderr)}"
    )


RunnerFactory = Callable[[], Runner]
_RUNNERS: dict[str, RunnerFactory] = {
    "x86_64": lambda: NativeRunner("x86_64"),
    "arm64": lambda: NativeRunner("arm64") if native_arch() == "arm64" else QemuUserRunner(),
}


def register_runner(arch: str, factory: RunnerFactory) -> None:
    """Make ``--arch ARCH`` run through FACTORY's runner (how ``edgeshift compile`` plugs in
    its Cortex-M runner: ``register_runner("cortex-m4", lambda: CortexMRunner("cortex-m4"))``)."""
    _RUNNERS[ARCH_ALIASES.get(arch, arch)] = factory


def known_arches() -> list[str]:
    return sorted({*_RUNNERS, *CORTEX_M})


def runner_for(arch: str) -> Runner:
    """The runner for ARCH; BackendError naming the known ones when it is unknown."""
    name = ARCH_ALIASES.get(arch.lower(), arch.lower())
    if name in _RUNNERS:
        return _RUNNERS[name]()
    if name in CORTEX_M:
        from edgeshift.mcu.arch_runner import CortexMRunner

        return CortexMRunner(name)  # type: ignore[return-value]
    raise BackendError(f"unknown --arch {arch!r} — use one of {', '.join(known_arches())}")
