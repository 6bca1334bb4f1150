"""500 mutated scenarios through ``plan_scenario``: each ends in a plan or an EdgeshiftError.

Numbers become 0, negative, huge, inf or nan; values become strings, empty lists or None;
fields go missing, names grow to thousands of characters, list entries are duplicated. The
estimate is stubbed (the queueing, solver, simulation and report are what is fuzzed), and
every case runs under an alarm so that a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import yaml

from edgeshift.errors import EdgeshiftError
from edgeshift.plan import pipeline
from edgeshift.plan.inputs import Estimator
from edgeshift.plan.pipeline import plan_problem, plan_scenario, plan_summary
from edgeshift.plan.problem import Perf, Problem
from edgeshift.plan.report import render_report

EXAMPLE = Path(__file__).parents[2] / "examples" / "factory-hospital.yaml"
CASES = 500
# A hang detector, not a speed check: a case takes ~0.05 s; one stuck in a per-server loop
# at 1e15 req/s never ends.
CASE_LIMIT_S = 30
REPORT_EVERY = 25  # charts cost ~0.3 s each: render every 25th plan, and every extreme one

_VALUES: list[Any] = [
    0,
    -1,
    -1e300,
    1e300,
    1e15,
    1e-300,
    math.inf,
    -math.inf,
    math.nan,
    10**30,
    "abc",
    "",
    "x" * 5000,
    [],
    {},
    None,
    True,
]


class _Hang(Exception):
    pass


def _stub_estimate(
    self: Estimator, model_key: str, target: Any, precision: str, *args: Any, **kwargs: Any
) -> Perf | None:
    # Cheap and deterministic, but of the real shape: the tier sets the speed, as a real
    # estimate would, so that plans differ between targets.
    if precision not in target.precisions:
        return None
    self.calls += 1
    service_ms = {"mcu": 8.0, "edge": 1.5, "server": 0.4, "gpu": 0.2}.get(target.tier, 1.0)
    return Perf(service_ms, 1000.0 / service_ms, 1 << 20, True)


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value (mappings and lists included) inside NODE."""
    if path:
        yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, (*path, i))


def _mutate(data: dict[str, Any], rng: random.Random) -> str:
    """Apply one mutation in place; a short label of what it did."""
    paths = list(_leaves(data))
    numbers = [p for p in paths if _is_number(_at(data, p))]
    path = rng.choice(numbers if numbers and rng.random() < 0.5 else paths)
    parent: Any = data
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    old = parent[key]
    kind = rng.random()
    if kind < 0.12 and isinstance(parent, dict):
        del parent[key]
        return f"drop {key}"
    if kind < 0.22 and isinstance(parent, list):
        parent.append(copy.deepcopy(old))  # a duplicated site, link, workload or node group
        return "duplicate entry"
    if kind < 0.6 and _is_number(old):
        # Mostly within range but extreme, so that many mutants still reach the planner.
        factor = rng.choice([-1.0, 0.0, 1e-9, 1e-3, 0.5, 2.0, 1e3, 1e6, 1e12])
        parent[key] = int(old * factor) if isinstance(old, int) else old * factor
        return f"{key} x {factor:g}"
    parent[key] = rng.choice(_VALUES)
    return f"{key} = {str(parent[key])[:12]}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _at(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def _bases(tiny_text: str) -> list[dict[str, Any]]:
    out = []
    for text in (EXAMPLE.read_text(), tiny_text):
        data = yaml.safe_load(text)
        data["simulation"] = {"requests": 400, "seed": 0}
        out.append(data)
    return out


@pytest.fixture
def stubbed_estimates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Estimator, "_estimate", _stub_estimate)
    # The simulation's cost is not under test; its code is, with every mutation.
    monkeypatch.setattr(pipeline, "SIMULATION_BUDGET", 4_000)
    monkeypatch.setattr(pipeline, "MIN_SIMULATED_REQUESTS", 200)


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Hang


@pytest.mark.slow
def test_mutated_scenarios_end_in_a_plan_or_one_error(
    tmp_path: Path,
    tiny_scenario_text: Callable[..., str],
    stubbed_estimates: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = random.Random(13)
    bases = _bases(tiny_scenario_text())
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    path = tmp_path / "scenario.yaml"
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for case in range(CASES):
            data = copy.deepcopy(rng.choice(bases))
            labels = [_mutate(data, rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
            path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
            signal.alarm(CASE_LIMIT_S)
            try:
                result = plan_scenario(path)
                summary = plan_summary(result)
                json.dumps(summary, allow_nan=True)
                extreme = any(("e+" in label or "inf" in label) for label in labels)
                if extreme or case % REPORT_EVERY == 0:
                    assert render_report(result, summary).startswith("<!DOCTYPE html>")
                outcomes["plan" if result.feasible else "plan (infeasible)"] += 1
            except EdgeshiftError as exc:
                message = str(exc)
                if "\n" in message or not message:
                    failures.append(f"case {case} {labels}: multi-line error {message!r}")
                outcomes[type(exc).__name__] += 1
            except _Hang:
                failures.append(f"case {case} {labels}: no answer within {CASE_LIMIT_S} s")
                outcomes["hang"] += 1
            except Exception as exc:
                failures.append(f"case {case} {labels}: {type(exc).__name__}: {exc}"[:300])
                outcomes["other exception"] += 1
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    with capsys.disabled():
        print(f"\nfuzz: {CASES} cases: {dict(sorted(outcomes.items()))}")
    assert not failures, "\n".join(failures[:20])
    # The mutations must exercise both ends: real plans and refused scenarios.
    assert outcomes["plan"] + outcomes["plan (infeasible)"] >= CASES // 10
    assert outcomes["ConfigError"] >= CASES // 10


def test_the_report_survives_extreme_but_valid_values(
    tmp_path: Path, tiny_scenario_text: Callable[..., str], stubbed_estimates: None
) -> None:
    # Every number at (or near) the top of its range: a billion requests a second, nodes at
    # a billion dollars written off in four days, a 1 TiB payload, a 0.001 Mbit/s link.
    text = tiny_scenario_text(
        ("mean_rps: 5", "mean_rps: 1e9"),
        ("peak_rps: 10", "peak_rps: 1e9"),
        (
            "count: 1",
            "count: 1000000\n        max_add: 1000000\n        purchase_usd: 1e9\n"
            "        lifetime_years: 0.01",
        ),
        (
            "target: aws-c7g-2xlarge",
            "target: aws-c7g-2xlarge\n        usd_per_hour: 1e9\n        max_add: 1000000",
        ),
        ("bandwidth_mbps: 100", "bandwidth_mbps: 0.001\n    usd_per_gb: 1e9"),
        ("payload_bytes: 1000", "payload_bytes: 1099511627776"),
        ("data_policy: site", "data_policy: anywhere"),
        ("name: tiny", "name: " + "n" * 128 + "\nhours_per_month: 744"),
    )
    path = tmp_path / "extreme.yaml"
    path.write_text(text)
    result = plan_scenario(path)
    summary = plan_summary(result)
    json.dumps(summary)  # finite numbers only where JSON needs them
    page = render_report(result, summary)
    assert page.count("<svg") == 3
    assert "$inf" not in page and "$nan" not in page
    # Monthly costs past a trillion dollars are written in scientific notation, not 20 digits.
    assert re.search(r"\$\d\.\d*e\+1\d", page), "no large cost in scientific notation"


def test_the_report_names_the_calibration_when_there_is_one(
    make_hand_problem: Callable[..., Problem],
) -> None:
    result = plan_problem(make_hand_problem(), simulate=False)
    summary = plan_summary(result)
    assert "id='calibration'" not in render_report(result, summary)
    # The shape pipeline.py records: ``created`` as the date, nested per-precision tables.
    result.calibration = {  # type: ignore[attr-defined]
        "source": "pinned",
        "host": "zen5-2core <b>",
        "threads": 2,
        "created": "2026-11-29T07:18:53+00:00",
        "figures": {"conv_gflops": 256.2999, "dram_copy_gbs": 14.14, "achieved_gops": {"fp32": 3}},
    }
    page = render_report(result, summary)
    paragraph = page[page.index("id='calibration'") :].split("</p>")[0]
    assert (
        "Estimates rest on the host calibration of zen5-2core &lt;b&gt; from 2026-11-29 07:18 "
        "(pinned, 2 threads; conv_gflops 256.3, dram_copy_gbs 14.14, 1 more in plan.json)."
    ) in paragraph
