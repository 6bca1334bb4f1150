"""Rollout policy: pure functions from a rollout and its devices' reports to a decision.

The policy is the validated ``RolloutSpec`` (waves, soak, install timeout, gates); the
controller (``fleet/rollouts.py``) is a loop that calls ``decide`` and carries out what it
returns. Nothing here reads a clock or a database: data in, data out (hawkBit's rollout
groups and Greengrass' abort criteria, written as data).

States and transitions are the tables ``TRANSITIONS`` and ``WAVE_STAGES``; every state that
is not terminal has a deadline or an operator action that leads out of it.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from edgeshift.fleet.schema import (
    DeviceReport,
    ExponentialWaves,
    GateResult,
    Gates,
    Phase,
    RolloutInfo,
    RolloutState,
    WaveInfo,
)

ACTIVE_STATES = frozenset({RolloutState.PENDING, RolloutState.RUNNING, RolloutState.PAUSED})
TERMINAL_STATES = frozenset(
    {
        RolloutState.COMPLETED,
        RolloutState.ABORTED,
        RolloutState.CANCELLED,
        RolloutState.ROLLED_BACK,
    }
)

# Operator actions and the engine's own verdicts: (state, trigger) -> next state. A pair not
# in the table is refused (409). Rollback stays possible after a rollout ended, so a release
# found bad after COMPLETED can still be taken back.
TRANSITIONS: Mapping[tuple[RolloutState, str], RolloutState] = {
    (RolloutState.PENDING, "start"): RolloutState.RUNNING,
    (RolloutState.PENDING, "pause"): RolloutState.PAUSED,
    (RolloutState.PENDING, "cancel"): RolloutState.CANCELLED,
    (RolloutState.PENDING, "rollback"): RolloutState.ROLLED_BACK,
    (RolloutState.RUNNING, "last wave passed"): RolloutState.COMPLETED,
    (RolloutState.RUNNING, "gate failed"): RolloutState.ABORTED,
    (RolloutState.RUNNING, "pause"): RolloutState.PAUSED,
    (RolloutState.RUNNING, "cancel"): RolloutState.CANCELLED,
    (RolloutState.RUNNING, "rollback"): RolloutState.ROLLED_BACK,
    (RolloutState.PAUSED, "resume"): RolloutState.RUNNING,
    (RolloutState.PAUSED, "cancel"): RolloutState.CANCELLED,
    (RolloutState.PAUSED, "rollback"): RolloutState.ROLLED_BACK,
    (RolloutState.COMPLETED, "rollback"): RolloutState.ROLLED_BACK,
    (RolloutState.ABORTED, "rollback"): RolloutState.ROLLED_BACK,
    (RolloutState.CANCELLED, "rollback"): RolloutState.ROLLED_BACK,
}
OPERATOR_ACTIONS = ("pause", "resume", "cancel", "rollback")


class EdgeKind(str, Enum):
    """How sure a transition is to happen: ``tick`` on the next engine pass, ``deadline``
    once a timeout passes, ``verdict`` one of a pair always happens (a gate passes or fails),
    ``condition`` may happen sooner, ``operator`` on an operator's request."""

    TICK = "tick"
    DEADLINE = "deadline"
    VERDICT = "verdict"
    CONDITION = "condition"
    OPERATOR = "operator"


# The whole machine, wave stages included: (node, trigger, kind, next node). RUNNING is split
# into the stages of its current wave. Tests walk it to prove nothing can get stuck.
WAVE_STAGES: tuple[tuple[str, str, EdgeKind, str], ...] = (
    ("pending", "start: assign wave 0", EdgeKind.TICK, "running/deploying"),
    (
        "running/deploying",
        "every device committed or failed",
        EdgeKind.CONDITION,
        "running/soaking",
    ),
    ("running/deploying", "install_timeout_s passed", EdgeKind.DEADLINE, "running/soaking"),
    ("running/deploying", "install success out of reach", EdgeKind.CONDITION, "running/gate"),
    ("running/deploying", "the wave has no devices", EdgeKind.CONDITION, "running/passed"),
    ("running/soaking", "soak_s passed", EdgeKind.DEADLINE, "running/gate"),
    ("running/gate", "too few reporting, install_timeout_s passed", EdgeKind.DEADLINE, "aborted"),
    ("running/gate", "gates hold", EdgeKind.VERDICT, "running/passed"),
    ("running/gate", "a gate fails", EdgeKind.VERDICT, "aborted"),
    ("running/passed", "more waves: assign the next", EdgeKind.TICK, "running/deploying"),
    ("running/passed", "it was the last wave", EdgeKind.TICK, "completed"),
    *(
        (node, action, EdgeKind.OPERATOR, target)
        for node in (
            "pending",
            "running/deploying",
            "running/soaking",
            "running/gate",
            "running/passed",
        )
        for action, target in (
            ("pause", "paused"),
            ("cancel", "cancelled"),
            ("rollback", "rolled_back"),
        )
    ),
    ("paused", "resume", EdgeKind.OPERATOR, "running/deploying"),
    ("paused", "cancel", EdgeKind.OPERATOR, "cancelled"),
    ("paused", "rollback", EdgeKind.OPERATOR, "rolled_back"),
    ("completed", "rollback", EdgeKind.OPERATOR, "rolled_back"),
    ("aborted", "rollback", EdgeKind.OPERATOR, "rolled_back"),
    ("cancelled", "rollback", EdgeKind.OPERATOR, "rolled_back"),
)
TERMINAL_NODES = frozenset(s.value for s in TERMINAL_STATES)


def action_target(state: RolloutState, action: str) -> RolloutState | None:
    """The state operator ACTION leads to from STATE, or None when it is refused."""
    return TRANSITIONS.get((state, action))


def refusal(state: RolloutState, action: str) -> str:
    """Why ACTION is refused in STATE (one line, with what is possible instead)."""
    allowed = [a for a in OPERATOR_ACTIONS if (state, a) in TRANSITIONS]
    hint = f"; possible now: {', '.join(allowed)}" if allowed else "; nothing more can be done"
    if action == "resume" and state in ACTIVE_STATES:
        return f"cannot resume: the rollout is {state.value}, not paused{hint}"
    if action == "pause" and state == RolloutState.PAUSED:
        return f"cannot pause: the rollout is already paused{hint}"
    return f"cannot {action}: the rollout is {state.value}{hint}"


# --- cohorts and waves ---------------------------------------------------------------------


def cohort_rank(device_id: str, rollout_id: str) -> float:
    """A device's place in [0, 1) for a rollout, from sha256: stable however many devices join,
    and different per rollout so the same devices do not always go first."""
    digest = hashlib.sha256(f"{rollout_id}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def wave_percents(waves: Sequence[float] | ExponentialWaves) -> list[float]:
    """Cumulative percentages; ExponentialWaves expands to start * factor^k, capped at 100."""
    if not isinstance(waves, ExponentialWaves):
        return [float(p) for p in waves]
    percents: list[float] = []
    percent = waves.start_percent
    while percent < 100.0:
        percents.append(percent)
        percent *= waves.factor
    percents.append(100.0)
    return percents


def wave_sizes(waves: Sequence[float] | ExponentialWaves, n_devices: int) -> list[int]:
    """Cumulative device counts per wave: each wave gets at least one device more than the one
    before while devices last; the last is N_DEVICES."""
    sizes: list[int] = []
    previous = 0
    for percent in wave_percents(waves):
        # The epsilon keeps 10% of 1,000 at 100 where float rounding would give 101.
        count = math.ceil(percent * n_devices / 100.0 - 1e-9)
        count = min(n_devices, max(count, previous + 1))
        sizes.append(count)
        previous = count
    if sizes:
        sizes[-1] = n_devices
    return sizes


def wave_members(
    rollout_id: str,
    waves: Sequence[float] | ExponentialWaves,
    wave: int,
    eligible: Iterable[str],
    earlier: Iterable[str],
) -> list[str]:
    """The devices to add in WAVE: the lowest-ranked ELIGIBLE devices not in EARLIER waves,
    enough to reach the wave's cumulative count over ELIGIBLE ∪ EARLIER."""
    before = set(earlier)
    pool = sorted(set(eligible) | before, key=lambda d: (cohort_rank(d, rollout_id), d))
    target = wave_sizes(waves, len(pool))[wave]
    fresh = [d for d in pool if d not in before]
    return fresh[: max(0, target - len(before))]


# --- wave health ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WaveStats:
    """What one wave's devices reported about the rollout's artifact."""

    wave: int
    at: float
    devices: int
    reporting: int  # reported on the rollout's desired state (any phase)
    committed: int
    failed: int  # FAILED, ROLLED_BACK, or not committed once the install timeout passed
    timed_out: bool
    failed_devices: tuple[str, ...]
    install_success: float | None  # committed / devices; an upper bound until settled
    p95_ratio: float | None
    error_rate: float | None
    shadow_agreement: float | None
    output_drift: float | None

    @property
    def settled(self) -> bool:
        return self.committed + self.failed >= self.devices


# A device in one of these phases is done with its wave's install (committed or refused).
SETTLED_PHASES = frozenset({Phase.COMMITTED, Phase.IDLE, Phase.FAILED, Phase.ROLLED_BACK})


def wave_stats(
    reports: Mapping[str, DeviceReport | None],
    device_ids: Sequence[str],
    target_artifact_id: str,
    generation_by_device: Mapping[str, int],
    now: float,
    started_at: float,
    install_timeout_s: float,
    *,
    wave: int = 0,
) -> WaveStats:
    """Counts and gate metrics over DEVICE_IDS. A report counts only when it is about the
    generation the rollout gave the device (older reports describe the previous model)."""
    timed_out = now >= started_at + install_timeout_s
    committed = 0
    failed: list[str] = []
    current: list[DeviceReport] = []
    for device_id in device_ids:
        report = reports.get(device_id)
        generation = generation_by_device.get(device_id)
        if report is None or generation is None or report.generation < generation:
            if timed_out:
                failed.append(device_id)
            continue
        current.append(report)
        done = report.phase in (Phase.COMMITTED, Phase.IDLE)
        if done and report.active == target_artifact_id:
            committed += 1
        elif report.phase in (Phase.FAILED, Phase.ROLLED_BACK) or timed_out:
            failed.append(device_id)
    n = len(device_ids)
    settled = committed + len(failed) >= n
    install_success = None
    if n:
        install_success = committed / n if settled else (n - len(failed)) / n
    return WaveStats(
        wave=wave,
        at=now,
        devices=n,
        reporting=len(current),
        committed=committed,
        failed=len(failed),
        timed_out=timed_out,
        failed_devices=tuple(failed),
        install_success=install_success,
        **_serving_metrics(current),
    )


def _serving_metrics(reports: Sequence[DeviceReport]) -> dict[str, float | None]:
    ratios = [
        r.stats.p95_ms / r.stats.baseline_p95_ms
        for r in reports
        if r.stats.p95_ms is not None and r.stats.baseline_p95_ms
    ]
    requests = sum(r.stats.requests for r in reports)
    samples = [
        (r.stats.shadow_agreement, r.stats.shadow_samples)
        for r in reports
        if r.stats.shadow_agreement is not None and r.stats.shadow_samples > 0
    ]
    total_samples = sum(n for _, n in samples)
    drifts = [r.stats.shadow_drift for r in reports if r.stats.shadow_drift is not None]
    return {
        # The median device: one slow outlier box does not fail a wave, a slow release does.
        "p95_ratio": statistics.median(ratios) if ratios else None,
        "error_rate": sum(r.stats.errors for r in reports) / requests if requests else None,
        "shadow_agreement": (
            sum(a * n for a, n in samples) / total_samples if total_samples else None
        ),
        "output_drift": statistics.fmean(drifts) if drifts else None,
    }


def min_reporting_count(gates: Gates, devices: int) -> int:
    return math.ceil(gates.min_reporting * devices - 1e-9)


def evaluable(gates: Gates, stats: WaveStats) -> bool:
    """Enough of the wave reported to judge it, or the install timeout passed (then the silent
    devices count as failed installs and the verdict is final)."""
    return stats.timed_out or stats.reporting >= min_reporting_count(gates, stats.devices)


def install_out_of_reach(gates: Gates, stats: WaveStats) -> bool:
    """So many devices already failed that the install-success gate cannot pass."""
    floor = gates.min_install_success
    return (
        floor is not None
        and stats.devices > 0
        and (stats.devices - stats.failed) / stats.devices < floor - 1e-12
    )


def evaluate_gates(gates: Gates, stats: WaveStats) -> GateResult:
    """The verdict on one wave: every enabled gate over STATS; a metric nobody reported does
    not fail its gate (say so with min_reporting), a failed gate is one line."""
    failures: list[str] = []
    need = min_reporting_count(gates, stats.devices)
    if stats.reporting < need:
        failures.append(
            f"only {stats.reporting} of {stats.devices} devices reported "
            f"(min_reporting {gates.min_reporting:.2f})"
        )
    checks: tuple[tuple[str, str, float | None, float | None, bool, str], ...] = (
        ("install success", "min_install_success", stats.install_success,
         gates.min_install_success, True, ".2f"),
        ("p95 ratio", "max_p95_ratio", stats.p95_ratio, gates.max_p95_ratio, False, ".2f"),
        ("error rate", "max_error_rate", stats.error_rate, gates.max_error_rate, False, ".4f"),
        ("shadow agreement", "min_shadow_agreement", stats.shadow_agreement,
         gates.min_shadow_agreement, True, ".3f"),
        ("output drift", "max_output_drift", stats.output_drift, gates.max_output_drift,
         False, ".4g"),
    )  # fmt: skip
    for label, field, value, limit, is_floor, fmt in checks:
        if value is None or limit is None:
            continue
        if (value < limit - 1e-12) if is_floor else (value > limit + 1e-12):
            sign = "<" if is_floor else ">"
            failures.append(f"{label} {value:{fmt}} {sign} {limit:{fmt}} ({field})")
    if stats.failed and stats.failed_devices:
        shown = ", ".join(stats.failed_devices[:3])
        more = f" and {stats.failed - 3} more" if stats.failed > 3 else ""
        if any(f.startswith("install success") for f in failures):
            failures = [
                f"{f}: failed on {shown}{more}" if f.startswith("install success") else f
                for f in failures
            ]
    return GateResult(
        wave=stats.wave,
        at=stats.at,
        passed=not failures,
        failures=failures,
        metrics={
            "install_success": stats.install_success,
            "p95_ratio": stats.p95_ratio,
            "error_rate": stats.error_rate,
            "shadow_agreement": stats.shadow_agreement,
            "output_drift": stats.output_drift,
        },
        devices=stats.devices,
        reporting=stats.reporting,
    )


# --- the controller's step -----------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What the engine does next: save ``info`` (when it changed), assign ``start_wave``'s
    devices first (when set), and roll every device of the rollout back (when ``rollback``)."""

    info: RolloutInfo
    start_wave: int | None = None
    rollback: bool = False
    events: tuple[str, ...] = ()


def needs_stats(info: RolloutInfo, now: float) -> bool:
    """Whether ``decide`` needs the current wave's stats now (they cost a read of every
    device's report, so the engine skips them while a wave soaks)."""
    if info.state != RolloutState.RUNNING or not 0 <= info.wave < len(info.waves):
        return False
    wave = info.waves[info.wave]
    if wave.started_at is None or wave.finished_at is not None:
        return False
    return wave.soak_until is None or now >= wave.soak_until


def decide(info: RolloutInfo, stats: WaveStats | None, now: float) -> Decision:
    """One step of the rollout's state machine (see WAVE_STAGES). STATS is the current wave's
    (needed when ``needs_stats`` says so). PAUSED and terminal rollouts hold."""
    rid = info.rollout_id
    if info.state == RolloutState.PENDING:
        return _start_wave(info, 0, now, (f"{rid}: started",))
    if info.state != RolloutState.RUNNING:
        return Decision(info)
    k = info.wave
    if not 0 <= k < len(info.waves) or info.waves[k].started_at is None:
        return _start_wave(info, max(k, 0), now, ())
    wave = info.waves[k]
    if wave.finished_at is not None:
        return _after_pass(info, now, ())
    if stats is None:
        return Decision(info)
    spec = info.spec
    events: list[str] = []
    if wave.soak_until is None:
        if stats.devices == 0:
            return _after_pass(_finish_wave(info, now), now, (f"{rid}: wave {k} had no devices",))
        if install_out_of_reach(spec.gates, stats):
            return _verdict(info, evaluate_gates(spec.gates, stats), now)
        if not (stats.settled or stats.timed_out):
            return Decision(info)
        wave = wave.model_copy(update={"soak_until": now + spec.soak_s})
        info = _with_wave(info, wave, now)
        events.append(f"{rid}: wave {k} installed ({stats.committed}/{stats.devices}); soaking")
    if now < (wave.soak_until or 0.0) or not evaluable(spec.gates, stats):
        return Decision(info, events=tuple(events))
    decision = _verdict(info, evaluate_gates(spec.gates, stats), now)
    return Decision(
        decision.info,
        decision.start_wave,
        decision.rollback,
        tuple(events) + decision.events,
    )


def _verdict(info: RolloutInfo, result: GateResult, now: float) -> Decision:
    rid, k = info.rollout_id, info.wave
    gates = [*info.gates, result]
    if result.passed:
        info = _finish_wave(info.model_copy(update={"gates": gates}), now)
        return _after_pass(info, now, (f"{rid}: wave {k} passed its gates",))
    reason = f"wave {k} failed its gates: " + "; ".join(result.failures)
    aborted = info.model_copy(
        update={
            "state": TRANSITIONS[(RolloutState.RUNNING, "gate failed")],
            "gates": gates,
            "reason": reason,
            "updated_at": now,
        }
    )
    rolled = " (rolling back)" if info.spec.auto_rollback else ""
    return Decision(aborted, rollback=info.spec.auto_rollback, events=(f"{rid}: {reason}{rolled}",))


def _after_pass(info: RolloutInfo, now: float, events: tuple[str, ...]) -> Decision:
    if info.wave + 1 < len(info.waves):
        return _start_wave(info, info.wave + 1, now, events)
    done = info.model_copy(
        update={
            "state": TRANSITIONS[(RolloutState.RUNNING, "last wave passed")],
            "reason": "every wave passed its gates",
            "updated_at": now,
        }
    )
    return Decision(done, events=(*events, f"{info.rollout_id}: completed"))


def _start_wave(info: RolloutInfo, k: int, now: float, events: tuple[str, ...]) -> Decision:
    waves = list(info.waves)
    waves[k] = waves[k].model_copy(update={"started_at": now})
    started = info.model_copy(
        update={"state": RolloutState.RUNNING, "wave": k, "waves": waves, "updated_at": now}
    )
    return Decision(started, start_wave=k, events=(*events, f"{info.rollout_id}: wave {k} started"))


def _finish_wave(info: RolloutInfo, now: float) -> RolloutInfo:
    wave = info.waves[info.wave]
    update: dict[str, float] = {"finished_at": now}
    if wave.soak_until is None:
        update["soak_until"] = now
    return _with_wave(info, wave.model_copy(update=update), now)


def _with_wave(info: RolloutInfo, wave: WaveInfo, now: float) -> RolloutInfo:
    waves = list(info.waves)
    waves[wave.index] = wave
    return info.model_copy(update={"waves": waves, "updated_at": now})


def planned_waves(waves: Sequence[float] | ExponentialWaves, n_devices: int) -> list[WaveInfo]:
    """The waves of a new rollout over N_DEVICES matching devices (counts are per wave, not
    cumulative; the engine sets each to what it really assigned when the wave starts)."""
    sizes = wave_sizes(waves, n_devices)
    return [
        WaveInfo(index=i, percent=p, devices=size - (sizes[i - 1] if i else 0))
        for i, (p, size) in enumerate(zip(wave_percents(waves), sizes, strict=True))
    ]
