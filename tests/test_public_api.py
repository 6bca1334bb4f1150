"""The public API is exactly __all__: adding or removing a name is a decision, made here."""

from __future__ import annotations

import inspect
import subprocess
import sys

import edgeshift

EXPECTED = {
    # errors
    "EdgeshiftError", "ModelError", "ShapeError", "DataError", "BackendError", "ConfigError",
    "TargetError", "OptimizeError", "BudgetError", "PlanError", "ProtocolError",
    "MismatchError",
    # model + runtimes + bench
    "load_model", "LoadedModel", "analyze", "ModelAnalysis", "from_torch",
    "open_backend", "Backend", "usable_cpus", "BenchResult",
    # verbs
    "optimize", "OptimizeResult",
    "estimate", "Estimate", "get_target", "load_catalog", "Target",
    "load_scenario", "plan_scenario", "PlanResult",
    "compile", "CompileResult",
    "zoo",
    "__version__",
}  # fmt: skip


def test_all_is_pinned() -> None:
    assert set(edgeshift.__all__) == EXPECTED
    assert len(edgeshift.__all__) == len(set(edgeshift.__all__))


def test_every_name_resolves() -> None:
    for name in edgeshift.__all__:
        assert getattr(edgeshift, name) is not None, name


def test_errors_form_one_tree() -> None:
    errors = [getattr(edgeshift, n) for n in edgeshift.__all__ if n.endswith("Error")]
    assert all(issubclass(e, edgeshift.EdgeshiftError) for e in errors)


def test_verbs_are_functions_with_docstrings() -> None:
    for name in ("estimate", "analyze", "open_backend", "plan_scenario", "from_torch"):
        fn = getattr(edgeshift, name)
        assert inspect.isfunction(fn), name
        assert fn.__doc__, f"{name} has no docstring"


def test_optimize_is_callable_and_still_a_package() -> None:
    import edgeshift.optimize.search as search

    assert callable(edgeshift.optimize)
    assert edgeshift.optimize.optimize is search.optimize
    assert search.optimize.__doc__


def test_import_is_light() -> None:
    # A server or an edge agent must not pay for the planner, the solver or the quantizer.
    code = (
        "import sys, edgeshift; heavy = ('scipy', 'nncf', 'torch', 'openvino', 'onnxruntime',"
        " 'matplotlib', 'starlette'); print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
