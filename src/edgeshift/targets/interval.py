"""The 80% interval around an estimate: its measured error on the corpus, carried with care.

``benchmarks/estimate_accuracy.py`` times every corpus model on this host (ONNX Runtime and
OpenVINO, fp32 / bf16 / int8, batch 1 and 8) beside its estimate and writes the ratios
``measured / estimated`` per (runtime, precision) into ``estimate_error.yaml`` (this
package), with the run they came from. An estimate's interval is ``estimate x [lo, hi]``,
where lo and hi are split-conformal bounds of those ratios (in log space): for n exchangeable
cases, the interval between the k_lo-th and k_hi-th smallest ratio covers a new case with
probability >= the stated coverage. The benchmark checks that claim model by model (leave
one model out: a model's interval is fitted on the other models only).

Targets the host cannot time are widened by a stated factor (:data:`WIDEN`); their coverage
is not measured. A model compiled and counted for its MCU (``basis == "compiled"``) gets the
narrow :data:`COMPILED_FACTORS`. The functions here are pure; :func:`load_error_model` reads
the shipped file once.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

COVERAGE = 0.8
FORMAT = "edgeshift-estimate-error/1"
ERROR_MODEL_PATH = Path(__file__).with_name("estimate_error.yaml")
POOLED = ("*", "*")  # every measured case of the host, when a group has too few

# Carrying the host's error to a target it cannot time adds the error of carrying the
# efficiencies over, which no measurement here bounds. Stated, not fitted:
# - a catalog CPU: the same runtimes' kernels on another core, cache and memory system (and
#   often another ISA: MLAS and oneDNN have separate AVX and NEON paths); tuned GEMM/Conv
#   kernels land between ~40% and ~90% of peak across CPUs, a factor of ~2 either way;
# - a GPU: small-batch latency is launch overhead and kernels the CPU calibration never ran;
#   datasheet tensor peaks are rarely reached below batch 32: a factor of 3;
# - an MCU without a compiled, counted build: CMSIS-NN / TFLM kernels against x86 fractions
#   of peak, flash wait states: a factor of 3.
WIDEN: dict[str, float] = {"edge": 2.0, "server": 2.0, "gpu": 3.0, "mcu": 3.0}
# No host calibration cached: default efficiencies (roofline.DEFAULT_EFFICIENCY) instead of
# measured ones, on top of the above; the host's own measured spread of GEMM efficiency
# against those defaults is about 2x.
UNCALIBRATED_WIDEN = 2.0
# `edgeshift compile --verify` counted the instructions exactly; only cycles per instruction
# is assumed (mcu/cores.py): flash wait states and stalls the ART/TCM hide only partly can
# add ~40%, dual issue of loads and MACs can save ~15%.
COMPILED_FACTORS = (0.85, 1.4)


@dataclass(frozen=True)
class ErrorSample:
    """One measured case: MODEL at one runtime, precision and batch, estimated and timed."""

    model: str
    runtime: str
    precision: str
    estimated_ms: float
    measured_ms: float

    @property
    def ratio(self) -> float:
        return self.measured_ms / self.estimated_ms


@dataclass(frozen=True)
class ErrorGroup:
    """The measured error of one (runtime, precision): interval factors and what they rest on."""

    runtime: str
    precision: str
    n: int  # cases
    models: int  # distinct models among them
    lo: float  # measured / estimated at the interval's lower end
    hi: float
    median: float  # median measured / estimated

    @property
    def key(self) -> tuple[str, str]:
        return (self.runtime, self.precision)


@dataclass(frozen=True)
class ErrorModel:
    """Interval factors per (runtime, precision) on the host, plus the run they came from."""

    coverage: float
    groups: dict[tuple[str, str], ErrorGroup]
    run: dict[str, Any] = field(default_factory=dict)  # date, host, corpus, n, command, ...

    def group(self, runtime: str, precision: str) -> ErrorGroup | None:
        """The group measured for RUNTIME at PRECISION, else the pooled one, else None."""
        return self.groups.get((runtime, precision)) or self.groups.get(POOLED)


@dataclass(frozen=True)
class Interval:
    lo_factor: float
    hi_factor: float
    coverage: float
    basis: str  # what the interval rests on, in words

    def around(self, value_ms: float) -> tuple[float, float] | None:
        if not math.isfinite(value_ms):
            return None
        return (value_ms * self.lo_factor, value_ms * self.hi_factor)


def min_cases(coverage: float) -> int:
    """Fewest cases whose conformal interval at COVERAGE is bounded on both sides."""
    tail = (1 - coverage) / 2
    return max(1, math.ceil(1 / tail - 1 - 1e-9))


def conformal_bounds(ratios: Sequence[float], coverage: float) -> tuple[float, float] | None:
    """(lo, hi) ratios that a new exchangeable case falls between with probability >=
    COVERAGE: the floor((n+1)t)-th and ceil((n+1)(1-t))-th smallest, t = (1-coverage)/2.
    None when there are too few ratios for a bounded interval (see :func:`min_cases`)."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), not {coverage}")
    logs = sorted(math.log(r) for r in ratios if r > 0 and math.isfinite(r))
    n = len(logs)
    tail = (1 - coverage) / 2
    k_lo = math.floor((n + 1) * tail + 1e-9)
    k_hi = math.ceil((n + 1) * (1 - tail) - 1e-9)
    if k_lo < 1 or k_hi > n:
        return None
    return math.exp(logs[k_lo - 1]), math.exp(logs[k_hi - 1])


def fit_group(
    samples: Sequence[ErrorSample], coverage: float, key: tuple[str, str]
) -> ErrorGroup | None:
    bounds = conformal_bounds([s.ratio for s in samples], coverage)
    if bounds is None:
        return None
    return ErrorGroup(
        runtime=key[0],
        precision=key[1],
        n=len(samples),
        models=len({s.model for s in samples}),
        lo=bounds[0],
        hi=bounds[1],
        median=statistics.median(s.ratio for s in samples),
    )


def fit_error_model(
    samples: Iterable[ErrorSample], coverage: float = COVERAGE, run: Mapping[str, Any] | None = None
) -> ErrorModel:
    """Groups per (runtime, precision) with enough cases, and the pooled group."""
    rows = list(samples)
    groups: dict[tuple[str, str], ErrorGroup] = {}
    keys = sorted({(s.runtime, s.precision) for s in rows})
    for key in [*keys, POOLED]:
        members = [s for s in rows if key == POOLED or (s.runtime, s.precision) == key]
        fitted = fit_group(members, coverage, key)
        if fitted is not None:
            groups[key] = fitted
    return ErrorModel(coverage, groups, dict(run or {}))


def leave_one_model_out(
    samples: Sequence[ErrorSample], coverage: float = COVERAGE
) -> list[tuple[float, float] | None]:
    """Per sample, the interval factors fitted on the OTHER models' samples (None: too few)."""
    out: list[tuple[float, float] | None] = []
    fits: dict[str, ErrorModel] = {}
    for s in samples:
        if s.model not in fits:
            fits[s.model] = fit_error_model([o for o in samples if o.model != s.model], coverage)
        g = fits[s.model].group(s.runtime, s.precision)
        out.append(None if g is None else (g.lo, g.hi))
    return out


def covered(sample: ErrorSample, factors: tuple[float, float] | None) -> bool:
    return factors is not None and factors[0] <= sample.ratio <= factors[1]


def interval_for(
    model: ErrorModel | None,
    *,
    tier: str,
    on_host: bool,
    runtime: str,
    precision: str,
    calibrated: bool,
    compiled: bool = False,
) -> Interval | None:
    """The interval factors of one estimate, and what they rest on (None: nothing measured)."""
    if compiled:
        return Interval(
            *COMPILED_FACTORS,
            COVERAGE,
            "compiled and counted for this core: instructions exact, cycles per instruction "
            f"assumed (x{COMPILED_FACTORS[0]:g}-{COMPILED_FACTORS[1]:g})",
        )
    group = model.group(runtime, precision) if model is not None else None
    if model is None or group is None:
        return None
    what = (
        f"{group.runtime} {group.precision}"
        if group.key != POOLED
        else f"all runtimes and precisions (none measured for {runtime} {precision})"
    )
    measured = (
        f"error of {group.n} corpus cases ({group.models} models) on "
        f"{model.run.get('host', 'the host')}, {what}"
    )
    widen, why = 1.0, []
    if not on_host:
        widen *= WIDEN.get(tier, max(WIDEN.values()))
        why.append(f"x{WIDEN.get(tier, max(WIDEN.values())):g} wider: a target of tier {tier}, "
                   "not timed here (coverage not measured)")  # fmt: skip
    if not calibrated:
        widen *= UNCALIBRATED_WIDEN
        why.append(f"x{UNCALIBRATED_WIDEN:g} wider: no host calibration, default efficiencies")
    basis = measured + ("; " + "; ".join(why) if why else "")
    return Interval(group.lo / widen, group.hi * widen, model.coverage, basis)


def error_model_to_yaml(model: ErrorModel) -> str:
    doc = {
        "format": FORMAT,
        "coverage": model.coverage,
        "run": model.run,
        "groups": [
            {
                "runtime": g.runtime,
                "precision": g.precision,
                "n": g.n,
                "models": g.models,
                "lo": round(g.lo, 4),
                "hi": round(g.hi, 4),
                "median": round(g.median, 4),
            }
            for g in model.groups.values()
        ],
    }
    header = (
        "# measured / estimated latency on the host: conformal 80% bounds per runtime and\n"
        "# precision. Written by `python benchmarks/estimate_accuracy.py --write-error-model`;\n"
        "# do not edit by hand (see edgeshift/targets/interval.py).\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, width=100)


def parse_error_model(text: str, source: str = "estimate_error.yaml") -> ErrorModel:
    from edgeshift.errors import ConfigError

    try:
        doc = yaml.safe_load(text)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        groups = {}
        for g in doc["groups"]:
            group = ErrorGroup(str(g["runtime"]), str(g["precision"]), int(g["n"]),
                               int(g["models"]), float(g["lo"]), float(g["hi"]),
                               float(g["median"]))  # fmt: skip
            if not 0 < group.lo <= group.hi:
                raise ValueError(f"group {group.key}: needs 0 < lo <= hi")
            groups[group.key] = group
        return ErrorModel(float(doc["coverage"]), groups, dict(doc.get("run") or {}))
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{source}: not an estimate error model ({exc}) — regenerate it with "
            "`python benchmarks/estimate_accuracy.py --write-error-model`"
        ) from exc


@lru_cache(maxsize=1)
def load_error_model(path: Path = ERROR_MODEL_PATH) -> ErrorModel | None:
    """The shipped error model (None when the file is absent: estimates carry no interval)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return parse_error_model(text, path.name)
