"""edgeshift: move AI inference off accelerators onto CPUs, edge boxes and IoT devices.

The public API is what ``__all__`` lists (a test pins it); everything else is private.
"""

__version__ = "0.1.0"

from edgeshift import zoo
from edgeshift.bench import BenchResult
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
from edgeshift.model import LoadedModel, ModelAnalysis, analyze, load_model
from edgeshift.model.torch_export import from_torch
from edgeshift.optimize import OptimizeResult, optimize
from edgeshift.plan import PlanResult, load_scenario, plan_scenario
from edgeshift.runtime import Backend, open_backend, usable_cpus
from edgeshift.targets import Estimate, Target, estimate, get_target, load_catalog

__all__ = [
    "Backend",
    "BackendError",
    "BenchResult",
    "BudgetError",
    "ConfigError",
    "DataError",
    "EdgeshiftError",
    "Estimate",
    "LoadedModel",
    "ModelAnalysis",
    "ModelError",
    "OptimizeError",
    "OptimizeResult",
    "PlanError",
    "PlanResult",
    "ProtocolError",
    "ShapeError",
    "Target",
    "TargetError",
    "__version__",
    "analyze",
    "estimate",
    "from_torch",
    "get_target",
    "load_catalog",
    "load_model",
    "load_scenario",
    "open_backend",
    "optimize",
    "plan_scenario",
    "usable_cpus",
    "zoo",
]
