"""The rollout policy: cohorts, wave sizes, wave stats, gates and the state table."""

from __future__ import annotations

from collections import deque

import pytest
from pydantic import ValidationError

from edgeshift.fleet import policy
from edgeshift.fleet.schema import (
    DeviceReport,
    ExponentialWaves,
    Gates,
    Phase,
    RolloutInfo,
    RolloutSpec,
    RolloutState,
    ServingStats,
)

T0 = 1000.0


def test_cohort_rank_is_stable_in_range_and_salted_by_rollout() -> None:
    ranks = [policy.cohort_rank(f"d{i}", "r-1") for i in range(2000)]
    assert all(0.0 <= r < 1.0 for r in ranks)
    assert ranks == [policy.cohort_rank(f"d{i}", "r-1") for i in range(2000)]
    # Uniform enough that a 10% wave is about 10% of the fleet.
    assert 150 <= sum(r < 0.1 for r in ranks) <= 250
    assert ranks != [policy.cohort_rank(f"d{i}", "r-2") for i in range(2000)]


@pytest.mark.parametrize(
    ("waves", "n", "sizes"),
    [
        ([1, 10, 50, 100], 1000, [10, 100, 500, 1000]),
        ([1, 10, 50, 100], 100, [1, 10, 50, 100]),
        ([1, 10, 50, 100], 10, [1, 2, 5, 10]),
        ([1, 10, 50, 100], 4, [1, 2, 3, 4]),
        ([1, 10, 50, 100], 2, [1, 2, 2, 2]),
        ([1, 10, 50, 100], 0, [0, 0, 0, 0]),
        ([100], 7, [7]),
        ([33.3, 66.6, 100], 3, [1, 2, 3]),
        (ExponentialWaves(), 1000, [10, 100, 1000]),
        (ExponentialWaves(start_percent=5, factor=2), 100, [5, 10, 20, 40, 80, 100]),
    ],
)
def test_wave_sizes(waves: list[float] | ExponentialWaves, n: int, sizes: list[int]) -> None:
    assert policy.wave_sizes(waves, n) == sizes


def test_exponential_waves_expand_capped_at_100() -> None:
    assert policy.wave_percents(ExponentialWaves(start_percent=2, factor=3)) == [
        2,
        6,
        18,
        54,
        100,
    ]


def test_adding_devices_keeps_earlier_waves_members_mostly() -> None:
    waves = [1, 10, 50, 100]
    before = [f"dev-{i}" for i in range(1000)]
    after = before + [f"new-{i}" for i in range(50)]
    first = policy.wave_members("r-1", waves, 1, before, [])
    second = policy.wave_members("r-1", waves, 1, after, [])
    kept = len(set(first) & set(second)) / len(first)
    assert kept >= 0.85, kept
    # Members of wave 1 exclude wave 0's, and the last wave takes every remaining device.
    w0 = policy.wave_members("r-1", waves, 0, before, [])
    w1 = policy.wave_members("r-1", waves, 1, before, w0)
    assert len(w0) == 10 and len(w1) == 90 and not set(w0) & set(w1)
    last = policy.wave_members("r-1", waves, 3, before, before[:500])
    assert sorted(last) == sorted(before[500:])


def _report(
    phase: Phase, generation: int = 5, active: str | None = "m-v2", **stats: float
) -> DeviceReport:
    return DeviceReport(
        generation=generation,
        phase=phase,
        active=active,
        stats=ServingStats.model_validate(stats),
        sent_at=T0,
    )


def _stats(reports: dict[str, DeviceReport | None], now: float = T0 + 10, timeout_s: float = 600):
    ids = sorted(reports)
    return policy.wave_stats(reports, ids, "m-v2", {d: 5 for d in ids}, now, T0, timeout_s)


GOOD = dict(
    requests=100,
    errors=0,
    p95_ms=10.0,
    baseline_p95_ms=10.0,
    shadow_samples=10,
    shadow_agreement=1.0,
    shadow_drift=0.0,
)


def test_wave_stats_counts_phases_and_ignores_old_generations() -> None:
    stats = _stats(
        {
            "a": _report(Phase.COMMITTED, **GOOD),
            "b": _report(Phase.IDLE, **GOOD),  # serving the target: committed
            "c": _report(Phase.FAILED, active="m-v1"),
            "d": _report(Phase.ROLLED_BACK, active="m-v1"),
            "e": _report(Phase.SHADOW),
            "f": _report(Phase.COMMITTED, generation=4, active="m-v1"),  # old desired state
            "g": None,
        }
    )
    assert (stats.devices, stats.reporting, stats.committed, stats.failed) == (7, 5, 2, 2)
    assert not stats.settled and not stats.timed_out
    assert stats.install_success == pytest.approx(5 / 7)  # upper bound until settled
    assert stats.failed_devices == ("c", "d")


def test_silent_and_unfinished_devices_fail_once_the_install_timeout_passed() -> None:
    reports: dict[str, DeviceReport | None] = {
        "a": _report(Phase.COMMITTED, **GOOD),
        "b": _report(Phase.DOWNLOADING),
        "c": None,
    }
    early = _stats(reports, now=T0 + 599)
    late = _stats(reports, now=T0 + 600)
    assert not early.timed_out and early.failed == 0
    assert late.timed_out and late.settled and late.failed == 2
    assert late.install_success == pytest.approx(1 / 3)


def test_metrics_median_ratio_weighted_agreement_mean_drift() -> None:
    stats = _stats(
        {
            "a": _report(Phase.COMMITTED, **{**GOOD, "p95_ms": 30.0}),  # one outlier box
            "b": _report(Phase.COMMITTED, **{**GOOD, "p95_ms": 12.0}),
            "c": _report(Phase.COMMITTED, **{**GOOD, "p95_ms": 11.0, "errors": 3}),
            "d": _report(
                Phase.COMMITTED, **{**GOOD, "shadow_samples": 30, "shadow_agreement": 0.8}
            ),
            "e": _report(Phase.COMMITTED, **{**GOOD, "shadow_drift": 0.5}),
        }
    )
    assert stats.p95_ratio == pytest.approx(1.1)
    assert stats.error_rate == pytest.approx(3 / 500)
    assert stats.shadow_agreement == pytest.approx((4 * 10 * 1.0 + 30 * 0.8) / 70)
    assert stats.output_drift == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("change", "gates", "failure"),
    [
        ({}, Gates(), None),
        ({"p95_ms": 21.0}, Gates(), "p95 ratio 2.10 > 1.50 (max_p95_ratio)"),
        ({"p95_ms": 15.0}, Gates(), None),  # exactly at the limit passes
        ({"p95_ms": 21.0}, Gates(max_p95_ratio=None), None),  # gate switched off
        ({"errors": 2}, Gates(), "error rate 0.0200 > 0.0100 (max_error_rate)"),
        ({"errors": 1}, Gates(), None),
        ({"shadow_agreement": 0.95}, Gates(), "shadow agreement 0.950 < 0.990"),
        ({"shadow_drift": 0.3}, Gates(), None),  # drift is off by default
        ({"shadow_drift": 0.3}, Gates(max_output_drift=0.1), "output drift 0.3 > 0.1"),
        ({"p95_ms": None, "shadow_agreement": None}, Gates(), None),  # no data: no verdict
    ],
)
def test_gate_table(change: dict[str, float | None], gates: Gates, failure: str | None) -> None:
    stats = _stats({f"d{i}": _report(Phase.COMMITTED, **{**GOOD, **change}) for i in range(4)})
    result = policy.evaluate_gates(gates, stats)
    assert result.passed == (failure is None), result.failures
    if failure is not None:
        assert len(result.failures) == 1 and result.failures[0].startswith(failure)
    assert result.devices == 4 and result.reporting == 4


def test_install_gate_names_failed_devices_and_reporting_gate_counts_silence() -> None:
    reports: dict[str, DeviceReport | None] = {
        f"d{i}": _report(Phase.COMMITTED, **GOOD) for i in range(8)
    }
    reports["x"] = _report(Phase.FAILED, active="m-v1")
    reports["y"] = None
    stats = _stats(reports, now=T0 + 700)
    result = policy.evaluate_gates(Gates(), stats)
    assert result.failures == ["install success 0.80 < 0.95 (min_install_success): failed on x, y"]
    early = _stats(reports)
    assert policy.evaluable(Gates(), early)  # 9 of 10 reported: min_reporting 0.9
    assert not policy.evaluable(Gates(min_reporting=1.0), early)
    assert policy.install_out_of_reach(Gates(), early)  # one failure of 10 already > 5%
    assert not policy.install_out_of_reach(Gates(min_install_success=0.9), early)
    assert not policy.install_out_of_reach(Gates(min_install_success=None), early)


def test_too_few_reporting_fails_once_timed_out() -> None:
    reports: dict[str, DeviceReport | None] = {f"d{i}": None for i in range(9)}
    reports["a"] = _report(Phase.COMMITTED, **GOOD)
    stats = _stats(reports, now=T0 + 600)
    result = policy.evaluate_gates(Gates(min_install_success=None), stats)
    assert result.failures == ["only 1 of 10 devices reported (min_reporting 0.90)"]


# --- decide ------------------------------------------------------------------------------


def _info(**spec: object) -> RolloutInfo:
    rollout_spec = RolloutSpec.model_validate(
        {"artifact_id": "m-v2", "soak_s": 30, "install_timeout_s": 600, **spec}
    )
    return RolloutInfo(
        rollout_id="r-1",
        spec=rollout_spec,
        state=RolloutState.PENDING,
        wave=-1,
        waves=policy.planned_waves(rollout_spec.waves, 100),
        gates=[],
        created_at=T0,
        updated_at=T0,
    )


def _wave_stats(wave: int, now: float, phase: Phase = Phase.COMMITTED, **change: float):
    reports: dict[str, DeviceReport | None] = {
        f"d{i}": _report(phase, **{**GOOD, **change}) for i in range(3)
    }
    ids = sorted(reports)
    return policy.wave_stats(reports, ids, "m-v2", {d: 5 for d in ids}, now, T0, 600, wave=wave)


def test_decide_walks_deploy_soak_gate_next_wave_and_completes() -> None:
    info = _info(waves=[50, 100])
    d = policy.decide(info, None, T0)
    assert d.start_wave == 0 and d.info.state == RolloutState.RUNNING
    info = d.info
    assert policy.needs_stats(info, T0)
    installing = _wave_stats(0, T0 + 5, Phase.DOWNLOADING)
    assert policy.decide(info, installing, T0 + 5).info == info  # still deploying
    d = policy.decide(info, _wave_stats(0, T0 + 10), T0 + 10)
    info = d.info
    assert info.waves[0].soak_until == T0 + 40 and d.start_wave is None
    assert not policy.needs_stats(info, T0 + 39)
    assert policy.decide(info, None, T0 + 39).info == info  # soaking
    d = policy.decide(info, _wave_stats(0, T0 + 40), T0 + 40)
    assert d.start_wave == 1 and d.info.wave == 1 and d.info.gates[-1].passed
    info = d.info
    d = policy.decide(info, _wave_stats(1, T0 + 50), T0 + 50)
    d = policy.decide(d.info, _wave_stats(1, T0 + 80), T0 + 80)
    assert d.info.state == RolloutState.COMPLETED and len(d.info.gates) == 2
    assert policy.decide(d.info, None, T0 + 90).info == d.info  # terminal holds


def test_decide_aborts_on_a_failed_gate_and_rolls_back_only_with_auto_rollback() -> None:
    for auto in (True, False):
        info = policy.decide(_info(soak_s=0, auto_rollback=auto), None, T0).info
        d = policy.decide(info, _wave_stats(0, T0 + 10, p95_ms=30.0), T0 + 10)
        assert d.info.state == RolloutState.ABORTED and d.rollback is auto
        assert d.info.reason == "wave 0 failed its gates: p95 ratio 3.00 > 1.50 (max_p95_ratio)"


def test_decide_fails_fast_when_install_success_is_out_of_reach() -> None:
    info = policy.decide(_info(), None, T0).info
    reports: dict[str, DeviceReport | None] = {"a": _report(Phase.FAILED), "b": None}
    stats = policy.wave_stats(reports, ["a", "b"], "m-v2", {"a": 5, "b": 5}, T0 + 1, T0, 600)
    d = policy.decide(info, stats, T0 + 1)
    assert d.info.state == RolloutState.ABORTED and d.rollback


def test_decide_holds_paused_rollouts() -> None:
    info = policy.decide(_info(), None, T0).info.model_copy(update={"state": RolloutState.PAUSED})
    assert not policy.needs_stats(info, T0 + 10)
    assert policy.decide(info, _wave_stats(0, T0 + 10), T0 + 10).info == info


def test_no_state_without_a_way_out() -> None:
    """Every non-terminal node reaches a terminal one by deadlines, ticks and verdicts alone
    (nothing waits on a device forever) and by operator actions alone (an operator can always
    stop it); terminal states allow only rollback."""
    edges = policy.WAVE_STAGES
    nodes = {e[0] for e in edges} | {e[3] for e in edges}
    automatic = {policy.EdgeKind.TICK, policy.EdgeKind.DEADLINE, policy.EdgeKind.VERDICT}

    def reaches_terminal(start: str, kinds: set[policy.EdgeKind]) -> bool:
        seen, todo = {start}, deque([start])
        while todo:
            node = todo.popleft()
            if node in policy.TERMINAL_NODES:
                return True
            for src, _, kind, dst in edges:
                if src == node and kind in kinds and dst not in seen:
                    seen.add(dst)
                    todo.append(dst)
        return False

    for node in nodes - policy.TERMINAL_NODES:
        assert reaches_terminal(node, {policy.EdgeKind.OPERATOR}), node
        if node != "paused":  # paused holds by design until an operator acts
            assert reaches_terminal(node, automatic), node
    for node in policy.TERMINAL_NODES:
        outs = {trigger for src, trigger, _, _ in edges if src == node}
        assert outs <= {"rollback"}, (node, outs)
    # The operator table agrees with the graph for every state and action.
    for state in RolloutState:
        for action in policy.OPERATOR_ACTIONS:
            target = policy.action_target(state, action)
            node_edges = {
                (trigger, dst)
                for src, trigger, kind, dst in edges
                if kind == policy.EdgeKind.OPERATOR
                and (src == state.value or src.startswith(f"{state.value}/"))
            }
            graph_targets = {dst.split("/")[0] for trigger, dst in node_edges if trigger == action}
            assert graph_targets == ({target.value} if target else set()), (state, action)
            if target is None:
                assert policy.refusal(state, action).startswith(f"cannot {action}")


def test_malformed_rollout_specs_are_refused_naming_the_field() -> None:
    for bad, field in [
        ({"waves": [10, 5, 100]}, "waves"),
        ({"waves": [10, 50]}, "waves"),
        ({"waves": []}, "waves"),
        ({"soak_s": -1}, "soak_s"),
        ({"gates": {"max_error_rate": 2}}, "max_error_rate"),
        ({"artifact_id": "../etc"}, "artifact_id"),
        ({"surprise": 1}, "surprise"),
    ]:
        with pytest.raises(ValidationError, match=field):
            RolloutSpec.model_validate({"artifact_id": "m-v2", **bad})
