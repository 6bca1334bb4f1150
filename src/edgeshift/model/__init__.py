"""Model loading, shapes and static analysis (pure, except for reading the file).

Names load on first use (PEP 562): the runtime path imports ``model.load`` and
``model.shapes`` without onnx; the analysis (onnx, psutil) loads only where it is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "ModelAnalysis": "edgeshift.model.analysis",
    "NodeCost": "edgeshift.model.analysis",
    "analyze": "edgeshift.model.analysis",
    "LoadedModel": "edgeshift.model.load",
    "load_model": "edgeshift.model.load",
    "sha256_file": "edgeshift.model.load",
    "DEFAULT_DYNAMIC_DIM": "edgeshift.model.shapes",
    "TensorSpec": "edgeshift.model.shapes",
    "graph_io": "edgeshift.model.shapes",
    "parse_shape_overrides": "edgeshift.model.shapes",
    "resolve_input_shapes": "edgeshift.model.shapes",
}


def __getattr__(name: str) -> Any:
    try:
        module_name = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'edgeshift.model' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from edgeshift.model.analysis import ModelAnalysis, NodeCost, analyze
    from edgeshift.model.load import LoadedModel, load_model, sha256_file
    from edgeshift.model.shapes import (
        DEFAULT_DYNAMIC_DIM,
        TensorSpec,
        graph_io,
        parse_shape_overrides,
        resolve_input_shapes,
    )

__all__ = [
    "DEFAULT_DYNAMIC_DIM",
    "LoadedModel",
    "ModelAnalysis",
    "NodeCost",
    "TensorSpec",
    "analyze",
    "graph_io",
    "load_model",
    "parse_shape_overrides",
    "resolve_input_shapes",
    "sha256_file",
]
