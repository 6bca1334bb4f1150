"""The rollout engine end to end over the real Store (SQLite and PostgreSQL) with a fake
clock and simulated agents that answer their desired state with a chosen behaviour."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgeshift.errors import FleetError
from edgeshift.fleet import policy
from edgeshift.fleet.rollouts import RolloutEngine
from edgeshift.fleet.schema import (
    ArtifactInfo,
    ArtifactRef,
    DeviceReport,
    EnrolmentTokenSpec,
    EnrolRequest,
    Gates,
    GroupSpec,
    Phase,
    RolloutInfo,
    RolloutSpec,
    RolloutState,
    ServingStats,
)
from edgeshift.fleet.store import Store

# --- seeding and simulated agents (work on the fake and on the real Store) ----------------


def artifact(name: str, version: int) -> ArtifactInfo:
    digest = hashlib.sha256(f"{name}{version}".encode()).hexdigest()
    ref = ArtifactRef(
        artifact_id=f"{name}-v{version}",
        name=name,
        version=version,
        target_path=f"{name}/{version}.tar",
        length=5,
        sha256=digest,
    )
    return ArtifactInfo(ref=ref, created_at=0.0, files={"model.onnx": digest})


def enrol_devices(
    store: object,
    n: int,
    group: str | None = "gw",
    labels: Mapping[str, str] | None = None,
    prefix: str = "dev",
) -> list[str]:
    ids = []
    for i in range(n):
        token = store.create_enrolment_token(  # type: ignore[attr-defined]
            EnrolmentTokenSpec(group=group, labels=dict(labels or {})), 0.0
        )
        raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        answer = store.enrol(  # type: ignore[attr-defined]
            EnrolRequest(
                token=token.token,
                name=f"{prefix}-{i:04d}",
                public_key=base64.b64encode(raw).decode(),
            ),
            0.0,
        )
        ids.append(answer.device_id)
    return ids


# What a simulated agent reports about an installed artifact.
GOOD = ServingStats(
    requests=1000, errors=0, p95_ms=10.0, baseline_p95_ms=10.0, shadow_samples=50,
    shadow_agreement=1.0, shadow_drift=0.001,
)  # fmt: skip
BEHAVIOURS: dict[str, tuple[Phase, ServingStats]] = {
    "good": (Phase.COMMITTED, GOOD),
    "slow": (Phase.COMMITTED, GOOD.model_copy(update={"p95_ms": 21.0})),
    "errors": (Phase.COMMITTED, GOOD.model_copy(update={"errors": 50})),
    "disagrees": (Phase.COMMITTED, GOOD.model_copy(update={"shadow_agreement": 0.9})),
    "fails": (Phase.FAILED, GOOD),
}


def agents_report(
    store: object, device_ids: Sequence[str], behaviour: Mapping[str, str] | str, now: float
) -> int:
    """Every device whose desired state is newer than its report installs and reports it;
    BEHAVIOUR (per artifact id, or one for all) says how the new artifact behaves."""
    reports = store.reports(device_ids)  # type: ignore[attr-defined]
    answered = 0
    for device_id in device_ids:
        desired = store.desired(device_id)  # type: ignore[attr-defined]
        kept = reports.get(device_id)
        if kept is not None and kept.generation >= desired.generation:
            continue
        target = desired.artifact.artifact_id if desired.artifact else None
        kind = behaviour if isinstance(behaviour, str) else behaviour.get(target or "", "good")
        phase, stats = BEHAVIOURS[kind]
        previous = kept.active if kept is not None else None
        active = target if phase == Phase.COMMITTED else previous
        report = DeviceReport(
            generation=desired.generation,
            phase=phase if target else Phase.IDLE,
            active=active,
            last_good=active,
            target=target,
            error="install failed" if phase == Phase.FAILED else "",
            stats=stats,
            sent_at=now,
        )
        store.record_report(device_id, report, now)  # type: ignore[attr-defined]
        answered += 1
    return answered


# --- tests ---------------------------------------------------------------------------------


SOAK_S = 30.0
TIMEOUT_S = 600.0


def _fleet(store: object, n: int = 100) -> list[str]:
    store.put_group(GroupSpec(name="gw"))  # type: ignore[attr-defined]
    store.add_artifact(artifact("det", 1))  # type: ignore[attr-defined]
    store.add_artifact(artifact("det", 2))  # type: ignore[attr-defined]
    devices = enrol_devices(store, n)
    store.set_desired(  # type: ignore[attr-defined]
        devices,
        artifact("det", 1).ref,
        None,
        shadow_s=0,
        shadow_min_requests=0,
        trial_s=0,
        now=0.0,
    )
    agents_report(store, devices, "good", 0.0)
    return devices


def _spec(**kw: object) -> RolloutSpec:
    base: dict[str, object] = dict(
        artifact_id="det-v2", group="gw", soak_s=SOAK_S, install_timeout_s=TIMEOUT_S
    )
    return RolloutSpec.model_validate({**base, **kw})


def _drive(
    engine: RolloutEngine,
    store: object,
    devices: list[str],
    behaviour: str,
    rid: str,
    start: float = 1.0,
    steps: int = 40,
    step_s: float = 10.0,
) -> tuple[RolloutInfo, float]:
    now = start
    for _ in range(steps):
        engine.tick(now)
        info = store.get_rollout(rid)  # type: ignore[attr-defined]
        if info.state not in (RolloutState.PENDING, RolloutState.RUNNING):
            return info, now
        now += step_s
        agents_report(store, devices, {"det-v2": behaviour}, now)
    return store.get_rollout(rid), now  # type: ignore[attr-defined]


def test_good_release_walks_four_waves_to_completed(store: Store) -> None:
    devices = _fleet(store, 40)
    engine = RolloutEngine(store)
    info = engine.create(_spec(), 0.0)
    assert info.state == RolloutState.PENDING and info.rollout_id.startswith("r-")
    assert [w.devices for w in info.waves] == [1, 3, 16, 20]
    final, _ = _drive(engine, store, devices, "good", info.rollout_id)
    assert final.state == RolloutState.COMPLETED, final.reason
    assert [g.passed for g in final.gates] == [True] * 4
    assert [w.devices for w in final.waves] == [1, 3, 16, 20]
    assert all(w.finished_at is not None for w in final.waves)
    assert {store.desired(d).artifact.artifact_id for d in devices} == {"det-v2"}  # type: ignore[union-attr]
    assert sorted(store.rollout_devices(info.rollout_id).values()).count(3) == 20


@pytest.mark.parametrize("behaviour", ["slow", "errors", "disagrees", "fails"])
def test_bad_release_aborts_in_first_wave_and_sets_touched_devices_back(
    store: Store, behaviour: str
) -> None:
    devices = _fleet(store, 10)
    engine = RolloutEngine(store)
    info = engine.create(_spec(), 0.0)
    final, _ = _drive(engine, store, devices, behaviour, info.rollout_id)
    assert final.state == RolloutState.ABORTED
    assert final.wave == 0 and len(final.gates) == 1 and not final.gates[0].passed
    expected = {
        "slow": "p95 ratio 2.10 > 1.50 (max_p95_ratio)",
        "errors": "error rate 0.0500 > 0.0100 (max_error_rate)",
        "disagrees": "shadow agreement 0.900 < 0.990 (min_shadow_agreement)",
        "fails": "install success",
    }[behaviour]
    assert any(f.startswith(expected) for f in final.gates[0].failures), final.gates
    touched = store.rollout_devices(info.rollout_id)
    assert len(touched) == 1
    for device_id in devices:
        ref = store.desired(device_id).artifact
        assert ref is not None and ref.artifact_id == "det-v1"


def test_create_refuses_unknown_artifact_no_devices_and_a_busy_device(sqlite_store: Store) -> None:
    store = sqlite_store
    _fleet(store, 5)
    engine = RolloutEngine(store)
    with pytest.raises(FleetError) as err:
        engine.create(_spec(artifact_id="det-v9"), 0.0)
    assert err.value.status == 404
    with pytest.raises(FleetError, match="no device in group 'gw' with labels") as err:
        engine.create(_spec(selector={"site": "mars"}), 0.0)
    assert err.value.status == 400
    first = engine.create(_spec(), 0.0)
    with pytest.raises(
        FleetError, match=f"dev-0000 is already in active rollout {first.rollout_id}"
    ) as err:
        engine.create(_spec(), 0.0)
    assert err.value.status == 409
    engine.cancel(first.rollout_id, 1.0)
    assert engine.create(_spec(), 2.0).rollout_id != first.rollout_id


def _reach(store: Store, where: str) -> tuple[RolloutEngine, str, list[str]]:
    """A rollout (waves 50/100) brought to WHERE with a good release."""
    devices = _fleet(store, 10)
    engine = RolloutEngine(store)
    behaviour = "slow" if where == "aborted" else "good"
    rid = engine.create(_spec(waves=[50, 100]), 0.0).rollout_id
    if where == "pending":
        return engine, rid, devices
    engine.tick(1.0)  # wave 0 assigned: deploying
    if where == "deploying":
        return engine, rid, devices
    agents_report(store, devices, {"det-v2": behaviour}, 2.0)
    engine.tick(2.0)  # soaking (or aborted)
    if where in ("soaking", "aborted"):
        return engine, rid, devices
    if where == "paused":
        engine.pause(rid, 3.0)
        return engine, rid, devices
    if where == "cancelled":
        engine.cancel(rid, 3.0)
        return engine, rid, devices
    if where == "rolled_back":
        engine.rollback(rid, 3.0)
        return engine, rid, devices
    final, _ = _drive(engine, store, devices, "good", rid, start=3.0)
    assert final.state == RolloutState.COMPLETED
    return engine, rid, devices


STAGES = ["pending", "deploying", "soaking", "paused", "completed", "aborted", "cancelled",
          "rolled_back"]  # fmt: skip


@pytest.mark.parametrize("where", STAGES)
@pytest.mark.parametrize("action", policy.OPERATOR_ACTIONS)
def test_operator_actions_at_every_stage(sqlite_store: Store, where: str, action: str) -> None:
    store = sqlite_store  # the subject is the engine, not the database
    engine, rid, devices = _reach(store, where)
    before = store.get_rollout(rid)
    target = policy.action_target(before.state, action)
    if target is None:
        with pytest.raises(FleetError, match=f"cannot {action}") as err:
            getattr(engine, action)(rid, 100.0)
        assert err.value.status == 409
        assert store.get_rollout(rid) == before
        return
    result = getattr(engine, action)(rid, 100.0)
    after = store.get_rollout(rid)
    assert result.state == after.state
    if action == "resume" and before.wave < 0:
        assert after.state == RolloutState.PENDING
    else:
        assert after.state == target
    if action == "rollback":
        for device_id in devices:
            ref = store.desired(device_id).artifact
            assert ref is not None and ref.artifact_id == "det-v1", (where, device_id)
    # Whatever happened, later ticks leave stopped rollouts alone and finish resumed ones.
    final, _ = _drive(engine, store, devices, "good", rid, start=200.0)
    if after.state in (RolloutState.PENDING, RolloutState.RUNNING):
        assert final.state == RolloutState.COMPLETED
    else:
        assert final.state == after.state


def test_paused_rollout_assigns_nothing_and_gives_no_verdict(sqlite_store: Store) -> None:
    store = sqlite_store
    engine, rid, _ = _reach(store, "soaking")
    engine.pause(rid, 3.0)
    before = store.get_rollout(rid)
    assigned = store.rollout_devices(rid)
    assert engine.tick(10_000.0) == []
    assert store.get_rollout(rid) == before and store.rollout_devices(rid) == assigned
    engine.resume(rid, 10_001.0)
    engine.tick(10_002.0)
    after = store.get_rollout(rid)
    assert after.gates[-1].passed and after.wave == 1


def test_a_new_engine_over_the_same_store_continues(store: Store) -> None:
    devices = _fleet(store, 20)
    rid = RolloutEngine(store).create(_spec(), 0.0).rollout_id
    now = 1.0
    for now in (1.0, 11.0, 21.0, 31.0, 41.0):  # first engine: into wave 1
        RolloutEngine(store).tick(now)
        agents_report(store, devices, "good", now + 5)
    assert store.get_rollout(rid).wave >= 1
    final, _ = _drive(RolloutEngine(store), store, devices, "good", rid, start=now + 10)
    assert final.state == RolloutState.COMPLETED and len(final.gates) == 4


class _CrashOnSave:
    """The real Store, dying (once) between assigning a wave and saving the rollout."""

    crash = False

    def __init__(self, store: Store) -> None:
        self.store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def save_rollout(self, info: RolloutInfo) -> None:
        if self.crash and info.wave == 1:
            self.crash = False
            raise RuntimeError("power cut")
        self.store.save_rollout(info)


def test_crash_between_assigning_and_saving_repeats_the_step_harmlessly(store: Store) -> None:
    store = _CrashOnSave(store)  # type: ignore[assignment]
    devices = _fleet(store, 20)
    engine = RolloutEngine(store)
    rid = engine.create(_spec(soak_s=0), 0.0).rollout_id
    engine.tick(1.0)
    agents_report(store, devices, "good", 2.0)
    store.crash = True
    with pytest.raises(RuntimeError):
        engine.tick(3.0)
    assigned = {d for d, w in store.rollout_devices(rid).items() if w == 1}
    generations = {d: store.desired(d).generation for d in assigned}
    assert store.get_rollout(rid).wave == 0 and assigned
    RolloutEngine(store).tick(4.0)
    info = store.get_rollout(rid)
    assert info.wave == 1 and info.waves[1].devices == len(assigned)
    assert {d: store.desired(d).generation for d in assigned} == generations
    final, _ = _drive(engine, store, devices, "good", rid, start=5.0)
    assert final.state == RolloutState.COMPLETED


def test_tick_is_idempotent(sqlite_store: Store) -> None:
    store = sqlite_store
    devices = _fleet(store, 10)
    engine = RolloutEngine(store)
    rid = engine.create(_spec(), 0.0).rollout_id
    assert engine.tick(1.0) == [f"{rid}: started", f"{rid}: wave 0 started"]

    def snapshot() -> object:
        generations = {d: store.desired(d).generation for d in devices}
        return store.get_rollout(rid), store.rollout_devices(rid), generations

    before = snapshot()
    assert engine.tick(1.0) == [] and engine.tick(2.0) == []
    assert snapshot() == before


def test_rollback_after_completed_leaves_devices_a_later_rollout_moved(sqlite_store: Store) -> None:
    store = sqlite_store
    engine, rid, devices = _reach(store, "completed")
    store.add_artifact(artifact("det", 3))
    later = engine.create(_spec(artifact_id="det-v3", selector={}), 500.0)
    _drive(engine, store, devices, "good", later.rollout_id, start=501.0)
    result = engine.rollback(rid, 2000.0)
    assert "rolled back 0 device(s)" in result.message and "10 left alone" in result.message
    assert {store.desired(d).artifact.artifact_id for d in devices} == {"det-v3"}  # type: ignore[union-attr]
    result = engine.rollback(later.rollout_id, 2001.0)
    assert {store.desired(d).artifact.artifact_id for d in devices} == {"det-v2"}  # type: ignore[union-attr]


def test_silent_devices_fail_the_wave_at_the_install_timeout(sqlite_store: Store) -> None:
    store = sqlite_store
    devices = _fleet(store, 10)
    engine = RolloutEngine(store)
    rid = engine.create(_spec(gates=Gates(min_install_success=None)), 0.0).rollout_id
    engine.tick(1.0)  # wave 0 assigned; its device never answers
    engine.tick(1.0 + TIMEOUT_S - 1)
    assert store.get_rollout(rid).state == RolloutState.RUNNING
    engine.tick(1.0 + TIMEOUT_S)  # timed out: the wave soaks, then its gates fail
    engine.tick(1.0 + TIMEOUT_S + SOAK_S)
    info = store.get_rollout(rid)
    assert info.state == RolloutState.ABORTED
    assert info.gates[-1].failures == ["only 0 of 1 devices reported (min_reporting 0.90)"]
    assert all(store.desired(d).artifact.artifact_id == "det-v1" for d in devices)  # type: ignore[union-attr]
