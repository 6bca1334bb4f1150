"""The estimate's interval: conformal bounds on synthetic errors, widening, leave-one-model-out
coverage, the shipped error model, and the interval shown by estimate, compare and plan."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edgeshift.cli.main import app
from edgeshift.errors import ConfigError
from edgeshift.targets.compare import compare
from edgeshift.targets.estimate import estimate_analysis
from edgeshift.targets.interval import (
    COMPILED_FACTORS,
    POOLED,
    UNCALIBRATED_WIDEN,
    WIDEN,
    ErrorModel,
    ErrorSample,
    conformal_bounds,
    covered,
    error_model_to_yaml,
    fit_error_model,
    interval_for,
    leave_one_model_out,
    load_error_model,
    min_cases,
    parse_error_model,
)


def _samples(ratios: list[float], runtime: str = "onnxruntime", precision: str = "fp32",
             per_model: int = 1) -> list[ErrorSample]:  # fmt: skip
    return [
        ErrorSample(f"m{i // per_model}", runtime, precision, 10.0, 10.0 * r)
        for i, r in enumerate(ratios)
    ]


def test_conformal_bounds_pick_the_order_statistics_by_hand() -> None:
    # n = 19, t = 0.1: k_lo = floor(20 * 0.1) = 2, k_hi = ceil(20 * 0.9) = 18 (1-based).
    ratios = [1 + i / 100 for i in range(19)]  # 1.00 .. 1.18
    random.Random(0).shuffle(ratios)
    lo, hi = conformal_bounds(ratios, 0.8) or (0, 0)
    assert lo == pytest.approx(1.01) and hi == pytest.approx(1.17)


def test_conformal_bounds_need_enough_cases() -> None:
    assert min_cases(0.8) == 9  # floor(10 * 0.1) = 1 and ceil(10 * 0.9) = 9 <= 9
    assert conformal_bounds([1.0] * 8, 0.8) is None
    lo, hi = conformal_bounds([0.5, 2.0, *[1.0] * 7], 0.8) or (0, 0)
    assert (lo, hi) == (pytest.approx(0.5), pytest.approx(2.0))  # the extremes at n = 9
    with pytest.raises(ValueError, match="coverage"):
        conformal_bounds([1.0] * 20, 1.0)


def test_conformal_bounds_cover_new_draws_at_the_stated_rate() -> None:
    # The guarantee: a fresh exchangeable case lands inside with probability >= coverage.
    rng = random.Random(1)
    hits = trials = 0
    for _ in range(400):
        fit = [math.exp(rng.gauss(0.1, 0.3)) for _ in range(20)]
        lo, hi = conformal_bounds(fit, 0.8) or (0, 0)
        for _ in range(10):
            trials += 1
            hits += lo <= math.exp(rng.gauss(0.1, 0.3)) <= hi
    # 4000 trials: the binomial sd at p = 0.8 is 0.6 %; the exact rate here is 18/21 = 0.857.
    assert hits / trials >= 0.8


def test_fit_groups_and_pooled_fallback() -> None:
    ort = _samples([0.9, 1.0, 1.1, 1.2, 1.3, 0.8, 1.05, 1.15, 0.95, 1.25])
    ov_few = _samples([2.0, 2.1, 2.2], "openvino", "bf16")
    model = fit_error_model(ort + ov_few, run={"host": "test cpu"})
    assert set(model.groups) == {("onnxruntime", "fp32"), POOLED}  # bf16 has only 3 cases
    g = model.groups[("onnxruntime", "fp32")]
    assert (g.n, g.models, g.lo, g.hi) == (10, 10, pytest.approx(0.8), pytest.approx(1.3))
    assert g.median == pytest.approx(1.075)
    assert model.group("openvino", "bf16") is model.groups[POOLED]
    assert model.groups[POOLED].n == 13


def test_leave_one_model_out_never_fits_on_the_model_itself() -> None:
    # Ten models of two cases each; model 'far' is far off: its interval from the others
    # cannot reach it, and it does not widen the others' intervals enough to cover itself.
    near_one = [1.0, 1.02, 0.98, 1.01, 0.99, 1.03, 0.97, 1.04, 0.96] * 2
    samples = [
        *_samples(near_one, per_model=2),
        ErrorSample("far", "onnxruntime", "fp32", 10.0, 50.0),
        ErrorSample("far", "onnxruntime", "fp32", 10.0, 51.0),
    ]
    factors = leave_one_model_out(samples)
    assert len(factors) == 20
    assert not covered(samples[-1], factors[-1]) and not covered(samples[-2], factors[-2])
    # Fitted on all 20 cases, 'far''s own cases set the upper bound (the 19th smallest).
    assert fit_error_model(samples).groups[POOLED].hi == pytest.approx(5.0)
    assert sum(covered(s, f) for s, f in zip(samples[:18], factors[:18], strict=True)) >= 14


def test_too_few_other_models_give_no_interval() -> None:
    samples = _samples([1.0] * 9)
    assert leave_one_model_out(samples) == [None] * 9  # each fit has 8 cases left
    assert not covered(samples[0], None)


def _model(lo: float = 0.8, hi: float = 1.25) -> ErrorModel:
    samples = _samples([lo] + [1.0] * 17 + [hi])  # n = 19: bounds are the 2nd and 18th
    samples[1:2] = [ErrorSample("x", "onnxruntime", "fp32", 1.0, lo)]
    samples[-2:-1] = [ErrorSample("y", "onnxruntime", "fp32", 1.0, hi)]
    return fit_error_model(samples, run={"host": "test cpu"})


def test_interval_on_the_host_is_the_measured_factors() -> None:
    iv = interval_for(_model(), tier="server", on_host=True, runtime="onnxruntime",
                      precision="fp32", calibrated=True)  # fmt: skip
    assert iv is not None and (iv.lo_factor, iv.hi_factor) == (pytest.approx(0.8), 1.25)
    assert iv.coverage == 0.8 and "19 corpus cases" in iv.basis and "test cpu" in iv.basis
    assert iv.around(4.0) == (pytest.approx(3.2), pytest.approx(5.0))
    assert iv.around(math.inf) is None


@pytest.mark.parametrize("tier", ["edge", "server", "gpu", "mcu"])
def test_targets_the_host_cannot_time_are_widened(tier: str) -> None:
    iv = interval_for(_model(), tier=tier, on_host=False, runtime="onnxruntime",
                      precision="fp32", calibrated=True)  # fmt: skip
    w = WIDEN[tier]
    assert iv is not None
    assert (iv.lo_factor, iv.hi_factor) == (pytest.approx(0.8 / w), pytest.approx(1.25 * w))
    assert "coverage not measured" in iv.basis
    raw = interval_for(_model(), tier=tier, on_host=False, runtime="onnxruntime",
                       precision="fp32", calibrated=False)  # fmt: skip
    assert raw is not None and raw.hi_factor == pytest.approx(1.25 * w * UNCALIBRATED_WIDEN)
    assert "no host calibration" in raw.basis


def test_unmeasured_runtime_uses_the_pooled_group_and_says_so() -> None:
    iv = interval_for(_model(), tier="gpu", on_host=False, runtime="tensorrt",
                      precision="fp16", calibrated=True)  # fmt: skip
    assert iv is not None and "none measured for tensorrt fp16" in iv.basis
    assert interval_for(None, tier="server", on_host=True, runtime="onnxruntime",
                        precision="fp32", calibrated=True) is None  # fmt: skip


def test_compiled_mcu_interval_is_narrow_and_needs_no_measurements() -> None:
    iv = interval_for(None, tier="mcu", on_host=False, runtime="", precision="int8",
                      calibrated=False, compiled=True)  # fmt: skip
    assert iv is not None and (iv.lo_factor, iv.hi_factor) == COMPILED_FACTORS
    assert COMPILED_FACTORS[1] / COMPILED_FACTORS[0] < WIDEN["mcu"] ** 2


def test_error_model_file_round_trips_and_bad_files_name_the_fix() -> None:
    model = _model()
    back = parse_error_model(error_model_to_yaml(model))
    assert back.groups.keys() == model.groups.keys() and back.run == {"host": "test cpu"}
    g, h = back.groups[POOLED], model.groups[POOLED]
    assert (g.n, g.lo, g.hi) == (h.n, pytest.approx(h.lo, rel=1e-3), pytest.approx(h.hi, rel=1e-3))
    with pytest.raises(ConfigError, match="regenerate it with"):
        parse_error_model("format: other/1\n")
    with pytest.raises(ConfigError, match="lo <= hi"):
        parse_error_model(
            "format: edgeshift-estimate-error/1\ncoverage: 0.8\ngroups:\n"
            "- {runtime: a, precision: b, n: 9, models: 3, lo: 2.0, hi: 1.0, median: 1.5}\n"
        )


def test_the_shipped_error_model_loads_and_states_its_run() -> None:
    model = load_error_model()
    assert model is not None and model.coverage == 0.8
    for key in ("date", "host", "corpus", "n", "loo_coverage"):
        assert key in model.run
    for g in model.groups.values():
        assert 0 < g.lo <= g.hi and g.n >= min_cases(0.8)
    assert POOLED in model.groups


def test_estimate_carries_the_interval(make_target: Any, half: Any, one_gemm: Any) -> None:
    e = estimate_analysis(one_gemm, make_target(), efficiency=half, precision="fp32",
                          error_model=_model())  # fmt: skip
    assert e.interval_ms is not None and e.interval_coverage == 0.8
    w = WIDEN["edge"]  # the toy target is an edge CPU the host cannot time
    assert e.interval_ms[0] == pytest.approx(e.latency_ms * 0.8 / w)
    assert e.interval_ms[1] == pytest.approx(e.latency_ms * 1.25 * w)
    assert "coverage not measured" in e.interval_basis
    cannot = estimate_analysis(one_gemm, make_target(precisions=["fp32"]), efficiency=half,
                               precision="int8", error_model=_model())  # fmt: skip
    assert cannot.interval_ms is None and not cannot.fits


# ---- what the user sees: estimate / compare / plan, with a synthetic error model ----

EXAMPLE = Path(__file__).parents[2] / "examples" / "factory-hospital.yaml"


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch) -> ErrorModel:
    """_model() in place of the shipped file, wherever the estimate looks it up."""
    model = _model()
    monkeypatch.setattr(
        sys.modules["edgeshift.targets.estimate"], "load_error_model", lambda: model
    )
    return model


def _cli(args: list[str]) -> Any:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_estimate_json_and_console_show_the_interval(
    mlp_path: Path, calibrated_host: Any, shipped: ErrorModel
) -> None:
    data = json.loads(
        _cli(["estimate", str(mlp_path), "-t", "host", "-p", "fp32", "--json"]).stdout
    )
    assert "confidence" not in data and data["interval_coverage"] == 0.8
    assert data["interval_ms"] == [pytest.approx(data["latency_ms"] * 0.8),
                                   pytest.approx(data["latency_ms"] * 1.25)]  # fmt: skip
    assert "19 corpus cases" in data["interval_basis"]
    out = _cli(["estimate", str(mlp_path), "-t", "host", "-p", "fp32"]).stdout
    lo, hi = data["interval_ms"]
    assert "80% interval" in out and f"{lo:,.3g}-{hi:,.3g} ms" in out
    assert "interval: error of 19 corpus cases" in out and "confidence" not in out


def test_compare_shows_an_interval_per_row(
    mlp_path: Path, calibrated_host: Any, shipped: ErrorModel
) -> None:
    c = compare(mlp_path, ["host", "rpi5", "aws-g6-l4"])
    by_id = {e.target_id: e for e in c.rows}
    widths = {t: e.interval_ms[1] / e.interval_ms[0] for t, e in by_id.items() if e.interval_ms}
    assert set(widths) == {"host", "rpi5", "aws-g6-l4"}
    assert widths["host"] < widths["rpi5"] < widths["aws-g6-l4"]  # measured < CPU x2 < GPU x3
    out = " ".join(_cli(["compare", str(mlp_path), "--targets", "host,rpi5"]).stdout.split())
    assert "interval" in out and "x2 wider: a target of tier edge" in out


def test_plan_json_report_and_console_show_the_service_interval(
    tmp_path: Path, calibrated_host: Any, shipped: ErrorModel
) -> None:
    out_dir = tmp_path / "plan"
    result = CliRunner().invoke(app, ["plan", str(EXAMPLE), "--out", str(out_dir), "--no-simulate"])
    assert result.exit_code in (0, 1), result.output
    doc = json.loads((out_dir / "plan.json").read_text())
    placed = [w for w in doc["workloads"] if w["placed"]]
    assert placed
    for w in placed:
        a = w["assumes"]
        lo, hi = a["service_interval_ms"]
        assert lo < a["service_ms"] < hi and a["interval_coverage"] == 0.8
        assert a["service_ms"] == pytest.approx(w["service_ms"])
    assert "service" in result.stdout and "80%" in result.stdout
    report = (out_dir / "report.html").read_text()
    assert "80% " in report and "confidence" not in report
