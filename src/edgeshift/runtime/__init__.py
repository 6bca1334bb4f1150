"""Runtimes behind one interface (numpy in, numpy out) and the function that opens them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeshift.errors import BackendError
from edgeshift.model.load import LoadedModel, resolve_model_path
from edgeshift.runtime.base import PRECISIONS, Backend, normalize_precision
from edgeshift.runtime.threads import usable_cpus

BACKENDS = ("onnxruntime", "openvino")


def _backend_class(name: str) -> type[Backend]:
    # Imported lazily: loading OpenVINO costs ~0.3 s and is not needed for ORT-only work.
    if name == "onnxruntime":
        from edgeshift.runtime.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    if name == "openvino":
        from edgeshift.runtime.openvino import OpenVINOBackend

        return OpenVINOBackend
    raise BackendError(f"unknown backend {name!r} — use one of {', '.join(BACKENDS)}")


def open_backend(
    model: str | Path | LoadedModel,
    backend: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    options: dict[str, Any] | None = None,
) -> Backend:
    """Open MODEL (a .onnx file, an artifact directory or a LoadedModel) on a runtime.

    For an optimize artifact, its manifest supplies backend, precision and runtime options
    unless given here, so running it reproduces the chosen variant. Threads default to the
    CPUs this process may really use (:func:`usable_cpus`).
    """
    if isinstance(model, LoadedModel):
        path, manifest = model.path, model.manifest
    else:
        path, manifest = resolve_model_path(model)
    saved: dict[str, Any] = dict((manifest or {}).get("runtime_options") or {})
    backend = backend or (manifest or {}).get("backend") or "onnxruntime"
    if manifest and backend != manifest.get("backend"):
        saved = {}  # options of another runtime do not apply
    precision = normalize_precision(precision or saved.pop("precision", None) or "fp32")
    saved.pop("precision", None)
    cls = _backend_class(backend)
    if precision not in cls.precisions:
        raise BackendError(
            f"{backend} runs models at {', '.join(cls.precisions)}, not {precision} — "
            "use `edgeshift optimize` to build a reduced-precision variant for it"
        )
    if threads is not None and threads < 1:
        raise BackendError(f"--threads must be >= 1, not {threads}")
    merged = {**saved, **(options or {})}
    try:
        return cls(path, precision=precision, threads=threads or usable_cpus(), **merged)
    except TypeError as exc:
        raise BackendError(f"bad runtime option for {backend}: {exc}") from exc


__all__ = ["BACKENDS", "PRECISIONS", "Backend", "open_backend", "usable_cpus"]
