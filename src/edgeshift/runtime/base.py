"""One interface over inference runtimes: numpy in, numpy out.

A backend is opened on a model file with an explicit precision and thread count; ``run``
checks the feeds against the model's inputs (names, dtypes, ranks and fixed dims) so that a
bad request is a DataError with a clear message, never a runtime's stack trace.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeshift.errors import BackendError, DataError
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

    def __init__(self, model_path: Path, *, precision: str, threads: int) -> None:
        self.model_path = model_path
        self.precision = precision
        self.threads = threads
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []

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
        return self._run(checked, output_names)

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
