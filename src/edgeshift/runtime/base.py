"""One interface over inference runtimes: numpy in, numpy out.

A backend is opened on a model file with an explicit precision and thread count; ``run``
checks the feeds against the model's inputs (names, dtypes, ranks and fixed dims) so that a
bad request is a DataError with a clear message, never a runtime's stack trace.

With a memory budget (the server sets one), a call whose activations would exceed it runs in
row chunks whose outputs are joined, and afterwards the runtime and the C heap give back what
the call made them grow by: a large request leaves memory where it found it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeshift.errors import BackendError, DataError, EdgeshiftError
from edgeshift.model.shapes import TensorSpec, check_tensor

PRECISIONS = ("fp32", "bf16", "fp16")
_PRECISION_ALIASES = {
    "f32": "fp32",
    "float32": "fp32",
    "f16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
}


# Activation bytes per input byte assumed when the model cannot be analysed (the digits CNN
# measures 64: conv layers widen each row 16-32x and two are live at once).
FALLBACK_ACTIVATION_RATIO = 256.0
# glibc serves allocations at or above this from mmap, so freeing them returns the pages. Left
# dynamic, glibc raises it to the largest block freed so far (up to 32 MiB), and the next
# request's multi-MiB buffers stay on the heap after they are freed.
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - absent on musl and macOS: then there is nothing to tune
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return None
    return libc


@lru_cache(maxsize=1)
def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD_BYTES for this process (once); False
    where the C library is not glibc."""
    libc = _libc()
    return bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def trim_heap() -> None:
    """Return the free memory at the top of each C heap to the OS (glibc's malloc_trim)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def activation_ratio(model_path: Path) -> float:
    """Peak activation bytes per input byte of the model at batch 1 (from the static memory
    plan of edgeshift.model.analysis, read as runtime.graph_facts reads it: in a child process
    where this one has not loaded onnx); FALLBACK_ACTIVATION_RATIO when it cannot be analysed."""
    from edgeshift.runtime.graph_facts import graph_facts

    try:
        return graph_facts(model_path).activation_ratio
    except EdgeshiftError:  # any model a runtime opens must still be servable
        return FALLBACK_ACTIVATION_RATIO


def analysed_activation_ratio(model_path: Path) -> float:
    """activation_ratio computed in this process (imports onnx and the analysis)."""
    from edgeshift.model.analysis import analyze

    try:
        analysis = analyze(model_path, batch=1, available_bytes=1 << 62)
    except Exception:  # any model a runtime opens must still be servable
        return FALLBACK_ACTIVATION_RATIO
    input_bytes = sum(
        math.prod(analysis.input_shapes[spec.name]) * _itemsize(spec.dtype)
        for spec in analysis.inputs
        if spec.name in analysis.input_shapes
    )
    if input_bytes <= 0 or analysis.peak_activation_bytes <= 0:
        return FALLBACK_ACTIVATION_RATIO
    return max(1.0, analysis.peak_activation_bytes / input_bytes)


def _itemsize(dtype: str) -> int:
    try:
        return max(1, np.dtype(dtype).itemsize)
    except TypeError:
        return 8


def chunk_rows(
    feeds: Mapping[str, np.ndarray], activation_ratio: float, budget_bytes: int
) -> int | None:
    """Rows per runtime call that keep FEEDS' activations within BUDGET_BYTES, or None when
    FEEDS fit in one call or cannot be split by rows (no common first axis)."""
    rows = -1
    total_bytes = 0
    for arr in feeds.values():
        if arr.ndim == 0 or (rows >= 0 and arr.shape[0] != rows):
            return None
        rows = arr.shape[0]
        total_bytes += arr.nbytes
    if rows <= 1 or total_bytes * activation_ratio <= budget_bytes:
        return None
    return max(1, int(budget_bytes // (activation_ratio * total_bytes / rows)))


def normalize_precision(precision: str) -> str:
    p = _PRECISION_ALIASES.get(precision.lower(), precision.lower())
    if p not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r} — use one of {', '.join(PRECISIONS)}")
    return p


class Backend(ABC):
    """A loaded model on one runtime. Subclasses set ``name`` and ``precisions``."""

    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    # True when one loaded backend may ``run`` from several threads at once (each call then
    # uses its own ``threads``); False: one backend per concurrent caller.
    concurrent_runs: ClassVar[bool] = False

    def __init__(
        self,
        model_path: Path,
        *,
        precision: str,
        threads: int,
        memory_budget_bytes: int | None = None,
    ) -> None:
        if memory_budget_bytes is not None and memory_budget_bytes < 1:
            raise BackendError(
                f"memory_budget_bytes must be >= 1, not {memory_budget_bytes} — give a "
                "positive budget, or none for unchunked runs"
            )
        self.model_path = model_path
        self.precision = precision
        self.threads = threads
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.memory_budget_bytes = memory_budget_bytes
        self.activation_ratio = FALLBACK_ACTIVATION_RATIO
        self.row_axis = False  # every input and output has a dynamic first axis
        if memory_budget_bytes is not None:
            fix_mmap_threshold()

    def _plan_memory(self) -> None:
        """Called by subclasses once inputs and outputs are known: can this model's calls be
        split by rows, and how many activation bytes does an input byte cost."""
        specs = [*self.inputs, *self.outputs]
        self.row_axis = bool(specs) and all(
            s.shape is not None and len(s.shape) >= 1 and not isinstance(s.shape[0], int)
            for s in specs
        )
        if self.memory_budget_bytes is not None and self.row_axis:
            self.activation_ratio = activation_ratio(self.model_path)

    def _run_last_chunk(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        """The last chunk of a chunked call: runtimes that can free their arena at the end of
        a run do it here."""
        return self._run(feeds, output_names)

    def _release(self) -> None:  # noqa: B027 - optional hook
        """Give back what the runtime grew by during a chunked call (after its last chunk)."""

    @abstractmethod
    def _run(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]: ...

    def fix_input_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:  # noqa: B027
        """Specialise the loaded model to SHAPES before measuring (a no-op where the runtime
        runs any shape as fast as a fixed one); raises ShapeError when it cannot."""

    def runtime_options(self) -> dict[str, Any]:
        """What was applied at load time, as recorded in manifests (reproduces this backend)."""
        return {"precision": self.precision}

    def run(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        checked = self.check_feeds(feeds)
        if output_names is not None:
            known = {o.name for o in self.outputs}
            unknown = [n for n in output_names if n not in known]
            if unknown:
                raise DataError(
                    f"unknown output {unknown[0]!r} — this model's outputs: {', '.join(sorted(known))}"
                )
        if self.memory_budget_bytes is None or not self.row_axis:
            return self._run(checked, output_names)
        step = chunk_rows(checked, self.activation_ratio, self.memory_budget_bytes)
        if step is None:
            return self._run(checked, output_names)
        try:
            return self._run_chunks(checked, output_names, step)
        finally:
            self._release()
            trim_heap()

    def _run_chunks(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None, step: int
    ) -> dict[str, np.ndarray]:
        rows = next(iter(feeds.values())).shape[0]
        joined: dict[str, np.ndarray] = {}
        for start in range(0, rows, step):
            run = self._run_last_chunk if start + step >= rows else self._run
            part = run({n: a[start : start + step] for n, a in feeds.items()}, output_names)
            for name, value in part.items():
                if value.ndim == 0 or value.shape[0] != min(step, rows - start):
                    raise DataError(
                        f"output {name!r} has shape {list(value.shape)} for "
                        f"{min(step, rows - start)} input rows: the model's first axis is not "
                        "a batch axis — serve it without a memory budget"
                    )
                if name not in joined:  # one buffer per output: no list of parts to concatenate
                    joined[name] = np.empty((rows, *value.shape[1:]), value.dtype)
                joined[name][start : start + len(value)] = value
        return joined

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = {i.name: i for i in self.inputs}
        missing = [n for n in expected if n not in feeds]
        extra = [n for n in feeds if n not in expected]
        if extra:
            raise DataError(
                f"unknown input {extra[0]!r} — this model's inputs: {', '.join(expected)}"
            )
        if missing:
            raise DataError(
                f"missing input {missing[0]!r} — this model needs {', '.join(expected)}"
            )
        out: dict[str, np.ndarray] = {}
        for name, spec in expected.items():
            arr = np.asarray(feeds[name])
            check_tensor(spec, arr, f"input {name!r}")
            out[name] = arr
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources early (they are also freed when collected)."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_path.name}, precision={self.precision}, "
            f"threads={self.threads})"
        )
