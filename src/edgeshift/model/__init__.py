"""Model loading, shapes and static analysis (pure, except for reading the file)."""

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
