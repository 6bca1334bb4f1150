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
