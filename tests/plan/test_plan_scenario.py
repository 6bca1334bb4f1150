"""Scenario validation: every bad file gets one line naming the field, the line and the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edgeshift.errors import ConfigError
from edgeshift.plan.scenario import load_scenario, parse_scenario

EXAMPLE = Path(__file__).parents[2] / "examples" / "factory-hospital.yaml"


def test_the_example_is_valid() -> None:
    scenario = load_scenario(EXAMPLE)
    assert {s.kind for s in scenario.sites} == {"device", "edge", "on-prem", "cloud"}
    assert {w.data_policy for w in scenario.workloads} == {"anywhere", "region", "site"}
    notes = next(w for w in scenario.workloads if w.name == "patient-notes")
    assert notes.slo.quantile == 0.99 and notes.slo.ms == 50


def test_tiny_defaults(tiny_scenario_text: Callable[..., str]) -> None:
    scenario = parse_scenario(tiny_scenario_text())
    assert scenario.headroom == 0.8 and scenario.hours_per_month == 730
    assert scenario.sites[0].usd_per_kwh == 0.15 and scenario.sites[0].lan_rtt_ms == 0.5
    assert scenario.simulation.requests == 20_000


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_scenario(text, "s.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_malformed_yaml_names_the_line(tiny_scenario_text: Callable[..., str]) -> None:
    text = tiny_scenario_text(("slo: {p99_ms: 50}", "slo: {p99_ms: 50"))
    message = _error(text)
    assert message.startswith("s.yaml: malformed YAML at line")
    assert "fix the syntax" in message


def test_link_to_unknown_site(tiny_scenario_text: Callable[..., str]) -> None:
    message = _error(tiny_scenario_text(("between: [plant, cloud]", "between: [plant, clod]")))
    assert "(line 17)" in message
    assert "links[0].between: unknown site 'clod'" in message
    assert "did you mean 'cloud'?" in message


def test_unknown_field_is_named(tiny_scenario_text: Callable[..., str]) -> None:
    message = _error(tiny_scenario_text(("rtt_ms: 20", "rtt: 20")))
    assert "links[0].rtt: unknown field" in message
    assert "(line 18)" in message


def test_missing_field(tiny_scenario_text: Callable[..., str]) -> None:
    message = _error(tiny_scenario_text(("    payload_bytes: 1000\n", "")))
    assert "workloads[0].payload_bytes: missing" in message


def test_slo_needs_exactly_one_percentile(tiny_scenario_text: Callable[..., str]) -> None:
    message = _error(tiny_scenario_text(("{p99_ms: 50}", "{p99_ms: 50, p95_ms: 20}")))
    assert "workloads[0].slo: give exactly one of p95_ms or p99_ms" in message


def test_peak_below_mean(tiny_scenario_text: Callable[..., str]) -> None:
    message = _error(tiny_scenario_text(("peak_rps: 10", "peak_rps: 1")))
    assert "peak_rps 1 < mean_rps 5" in message


def test_workload_at_unknown_site(tiny_scenario_text: Callable[..., str]) -> None:
    message = _error(tiny_scenario_text(("site: plant", "site: plnt")))
    assert "workloads[0].site: unknown site 'plnt'" in message


def test_contradictory_data_policy(tiny_scenario_text: Callable[..., str]) -> None:
    message = _error(
        tiny_scenario_text(("data_policy: site", "data_policy: site\n    allow_sites: [cloud]"))
    )
    assert "data_policy 'site' keeps data in plant but allow_sites names cloud" in message
    assert "drop them or relax the policy" in message
    message = _error(
        tiny_scenario_text(("data_policy: site", "data_policy: site\n    deny_sites: [plant]"))
    )
    assert "nothing could run it" in message


def test_duplicate_names(tiny_scenario_text: Callable[..., str]) -> None:
    message = _error(tiny_scenario_text(("- name: cloud\n", "- name: plant\n")))
    assert "site name 'plant' is used twice" in message


def test_not_a_mapping() -> None:
    assert "a scenario is a mapping" in _error("- just\n- a list\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scenario not found"):
        load_scenario(tmp_path / "nope.yaml")


# Each of these once reached the planner: a hang (1e15 req/s), tracebacks (.inf, a negative
# seed, a 5,000-character model name, costs of 1e300 in the plots).
@pytest.mark.parametrize(
    ("old", "new", "field", "fix"),
    [
        ("peak_rps: 10", "peak_rps: 1.0e+15", "workloads[0].peak_rps", "<= 1e+09"),
        ("peak_rps: 10", "peak_rps: .inf", "workloads[0].peak_rps", "no .inf or .nan"),
        ("mean_rps: 5", "mean_rps: .nan", "workloads[0].mean_rps", "no .inf or .nan"),
        ("rtt_ms: 20", "rtt_ms: -1", "links[0].rtt_ms", ">= 0"),
        ("bandwidth_mbps: 100", "bandwidth_mbps: 1e-300", "links[0].bandwidth_mbps", ">= 0.001"),
        ("count: 1", "count: 1000000000", "sites[0].nodes[0].count", "<= 1000000"),
        ("count: 1", "count: 1\n        purchase_usd: 1.0e+300", "purchase_usd", "<= 1e+09"),
        ("slo: {p99_ms: 50}", "slo: {p99_ms: .inf}", "workloads[0].slo.p99_ms", "no .inf"),
        ("payload_bytes: 1000", "payload_bytes: -5", "workloads[0].payload_bytes", ">= 0"),
        ("model: digits-mlp", "model: " + "m" * 5000, "workloads[0].model", "at most 1024"),
        ("model: digits-mlp", "model: dir/" + "m" * 300, "workloads[0].model", "255"),
        ("name: audio", "name: " + "w" * 129, "workloads[0].name", "at most 128"),
        (
            "region: eu\n    nodes:\n      - name: gateway",
            "region: eu\n    usd_per_kwh: 1e400\n    nodes:\n      - name: gateway",
            "sites[0].usd_per_kwh",
            "no .inf",
        ),
        ("name: tiny", "name: tiny\nheadroom: 1e-300", "headroom", ">= 0.01"),
        ("name: tiny", "name: tiny\nsimulation: {seed: -1}", "simulation.seed", ">= 0"),
        ("name: tiny", "name: tiny\nhours_per_month: 1e9", "hours_per_month", "<= 744"),
    ],
)
def test_out_of_range_numbers_are_named_with_the_fix(
    tiny_scenario_text: Callable[..., str], old: str, new: str, field: str, fix: str
) -> None:
    message = _error(tiny_scenario_text((old, new)))
    assert f": {field}: " in message or f".{field}: " in message, message
    assert fix in message, message
    assert message.startswith("s.yaml (line "), message


def test_a_huge_but_valid_scenario_is_accepted(tiny_scenario_text: Callable[..., str]) -> None:
    text = tiny_scenario_text(
        ("peak_rps: 10", "peak_rps: 1e9"),
        ("count: 1", "count: 1000000\n        purchase_usd: 1e9\n        lifetime_years: 0.01"),
        ("name: tiny", "name: " + "t" * 128 + "\nsimulation: {seed: 9223372036854775807}"),
    )
    scenario = parse_scenario(text)
    assert scenario.workloads[0].peak_rps == 1e9
    assert scenario.simulation.seed == 2**63 - 1
