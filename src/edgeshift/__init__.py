"""edgeshift: move AI inference off accelerators onto CPUs, edge boxes and IoT devices.

The public API is what ``__all__`` lists (a test pins it); everything else is private.
Names are imported on first use, so ``import edgeshift`` stays light: a server or an edge
agent pays only for the parts it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgeshift.errors import (
    BackendError,
    BudgetError,
    ConfigError,
    DataError,
    EdgeshiftError,
    MismatchError,
    ModelError,
    OptimizeError,
    PlanError,
    ProtocolError,
    ShapeError,
    TargetError,
)

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None: the module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    "zoo": ("edgeshift.zoo", None),
    # The optimize package is callable: edgeshift.optimize(...) runs the search, and
    # `import edgeshift.optimize.search` still works (no function shadowing the package).
    "optimize": ("edgeshift.optimize", None),
    "OptimizeResult": ("edgeshift.optimize", "OptimizeResult"),
    "BenchResult": ("edgeshift.bench", "BenchResult"),
    "LoadedModel": ("edgeshift.model", "LoadedModel"),
    "ModelAnalysis": ("edgeshift.model", "ModelAnalysis"),
    "analyze": ("edgeshift.model", "analyze"),
    "load_model": ("edgeshift.model", "load_model"),
    "from_torch": ("edgeshift.model.torch_export", "from_torch"),
    "Backend": ("edgeshift.runtime", "Backend"),
    "open_backend": ("edgeshift.runtime", "open_backend"),
    "usable_cpus": ("edgeshift.runtime", "usable_cpus"),
    "Estimate": ("edgeshift.targets", "Estimate"),
    "Target": ("edgeshift.targets", "Target"),
    "estimate": ("edgeshift.targets", "estimate"),
    "get_target": ("edgeshift.targets", "get_target"),
    "load_catalog": ("edgeshift.targets", "load_catalog"),
    "PlanResult": ("edgeshift.plan", "PlanResult"),
    "load_scenario": ("edgeshift.plan", "load_scenario"),
    "plan_scenario": ("edgeshift.plan", "plan_scenario"),
    "compile": ("edgeshift.mcu.compile", "compile_model"),
    "CompileResult": ("edgeshift.mcu.compile", "CompileResult"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'edgeshift' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from edgeshift import optimize, zoo
    from edgeshift.bench import BenchResult
    from edgeshift.mcu.compile import CompileResult
    from edgeshift.mcu.compile import compile_model as compile
    from edgeshift.model import LoadedModel, ModelAnalysis, analyze, load_model
    from edgeshift.model.torch_export import from_torch
    from edgeshift.optimize import OptimizeResult
    from edgeshift.plan import PlanResult, load_scenario, plan_scenario
    from edgeshift.runtime import Backend, open_backend, usable_cpus
    from edgeshift.targets import Estimate, Target, estimate, get_target, load_catalog

__all__ = [
    "Backend",
    "BackendError",
    "BenchResult",
    "BudgetError",
    "CompileResult",
    "ConfigError",
    "DataError",
    "EdgeshiftError",
    "Estimate",
    "LoadedModel",
    "MismatchError",
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
    "compile",
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
