"""edgeshift: move AI inference off accelerators onto CPUs, edge boxes and IoT devices."""

from edgeshift.errors import (
    BackendError,
    BudgetError,
    ConfigError,
    DataError,
    EdgeshiftError,
    ModelError,
    OptimizeError,
    PlanError,
    ProtocolError,
    ShapeError,
    TargetError,
)
from edgeshift.model import load_model
from edgeshift.runtime import open_backend

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BudgetError",
    "ConfigError",
    "DataError",
    "EdgeshiftError",
    "ModelError",
    "OptimizeError",
    "PlanError",
    "ProtocolError",
    "ShapeError",
    "TargetError",
    "__version__",
    "load_model",
    "open_backend",
]
