"""The control plane's store, on SQLite and on PostgreSQL (every test runs on both)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from edgeshift.errors import FleetError
from edgeshift.fleet import auth
from edgeshift.fleet import store as store_module
from edgeshift.fleet.guard import check_device
from edgeshift.fleet.schema import (
    ArtifactInfo,
    ArtifactRef,
    DeviceReport,
    EnrolmentTokenSpec,
    EnrolRequest,
    GroupSpec,
    Phase,
    RolloutInfo,
    RolloutSpec,
    RolloutState,
    TelemetryBatch,
    TelemetryRecord,
)
from edgeshift.fleet.store import Store

NOW = 1_700_000_000.0


def enrol(store: Store, name: str, *, group: str | None = None, **labels: str) -> str:
    token = store.create_enrolment_token(EnrolmentTokenSpec(group=group, labels=labels), NOW)
    key = auth.public_key_b64(auth.new_private_key())
    return store.enrol(EnrolRequest(token=token.token, name=name, public_key=key), NOW).device_id


def ref(version: int) -> ArtifactRef:
    return ArtifactRef(
        artifact_id=f"m-v{version}",
        name="m",
        version=version,
        target_path=f"m/{version}.tar",
        length=10,
        sha256=f"{version:064x}",
    )


def report(generation: int, phase: Phase = Phase.COMMITTED) -> DeviceReport:
    return DeviceReport(generation=generation, phase=phase, active="m-v1", sent_at=NOW)


def rollout(rollout_id: str, state: RolloutState = RolloutState.RUNNING) -> RolloutInfo:
    return RolloutInfo(
        rollout_id=rollout_id,
        spec=RolloutSpec(artifact_id="m-v1"),
        state=state,
        wave=-1,
        waves=[],
        gates=[],
        created_at=NOW,
        updated_at=NOW,
    )


def status_of(call: Callable[[], Any]) -> int:
    with pytest.raises(FleetError) as caught:
        call()
    return caught.value.status


def race(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run WORK(i) on COUNT threads released together; each result or the error raised."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except FleetError as err:
            results[index] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# --- operators -------------------------------------------------------------------------------


def test_operator_tokens_are_kept_hashed_and_replaced(store: Store) -> None:
    store.add_operator_token("alice", "a" * 32, NOW)
    store.add_operator_token("bob", "b" * 32, NOW)
    assert store.operator_for_token("a" * 32) == "alice"
    assert store.operator_for_token("b" * 32) == "bob"
    assert store.operator_for_token("c" * 32) is None
    store.add_operator_token("alice", "d" * 32, NOW)
    assert store.operator_for_token("a" * 32) is None
    assert store.operator_for_token("d" * 32) == "alice"
    assert status_of(lambda: store.add_operator_token("eve", "short", NOW)) == 400
    assert status_of(lambda: store.add_operator_token("eve", "b" * 32, NOW)) == 409


# --- enrolment -------------------------------------------------------------------------------


def test_enrol_consumes_the_token_and_merges_labels(store: Store) -> None:
    token = store.create_enrolment_token(
        EnrolmentTokenSpec(group="plant", labels={"site": "lyon"}), NOW
    )
    assert token.expires_at == NOW + 24 * 3600
    key = auth.public_key_b64(auth.new_private_key())
    request = EnrolRequest(
        token=token.token,
        name="gw-1",
        public_key=key,
        labels={"site": "claimed", "cam": "2"},
        hardware="rpi5",
    )
    assert store.enrol(request, NOW).device_id == "gw-1"
    device = store.get_device("gw-1", NOW)
    # The operator's labels (on the token) win over the device's claim.
    assert device.labels == {"site": "lyon", "cam": "2"}
    assert device.groups == ["plant"]
    assert device.hardware == "rpi5"
    assert device.desired.generation == 0 and device.desired.artifact is None
    assert device.reported is None
    assert store.device_public_key("gw-1") == key
    again = request.model_copy(update={"name": "gw-2"})
    assert status_of(lambda: store.enrol(again, NOW)) == 401


def test_enrol_refuses_expired_tokens_taken_names_and_bad_keys(store: Store) -> None:
    enrol(store, "gw-1")
    key = auth.public_key_b64(auth.new_private_key())
    token = store.create_enrolment_token(EnrolmentTokenSpec(ttl_s=60), NOW).token
    late = EnrolRequest(token=token, name="gw-2", public_key=key)
    assert status_of(lambda: store.enrol(late, NOW + 61)) == 401
    taken = EnrolRequest(token=token, name="gw-1", public_key=key)
    assert status_of(lambda: store.enrol(taken, NOW)) == 409
    # A refused name leaves the token usable.
    assert store.enrol(late, NOW).device_id == "gw-2"
    token = store.create_enrolment_token(EnrolmentTokenSpec(), NOW).token
    bad_key = EnrolRequest(token=token, name="gw-3", public_key="A" * 40)
    assert status_of(lambda: store.enrol(bad_key, NOW)) == 400
    unknown = EnrolRequest(token="x" * 43, name="gw-3", public_key=key)
    assert status_of(lambda: store.enrol(unknown, NOW)) == 401


def test_two_racing_enrolments_with_one_token_one_wins(store_url: str) -> None:
    stores = [Store.open(store_url) for _ in range(2)]  # two pools: as two processes would be
    try:
        token = stores[0].create_enrolment_token(EnrolmentTokenSpec(), NOW).token
        key = auth.public_key_b64(auth.new_private_key())
        results = race(
            6,
            lambda i: stores[i % 2].enrol(
                EnrolRequest(token=token, name=f"gw-{i}", public_key=key), NOW
            ),
        )
        winners = [r for r in results if not isinstance(r, FleetError)]
        assert len(winners) == 1
        assert all(r.status == 401 for r in results if isinstance(r, FleetError))
        assert [d.device_id for d in stores[0].list_devices(NOW)] == [winners[0].device_id]
    finally:
        for opened in stores:
            opened.close()


# --- device auth -----------------------------------------------------------------------------


def test_a_nonce_is_refused_the_second_time_even_from_another_store(store_url: str) -> None:
    first, second = Store.open(store_url), Store.open(store_url)
    try:
        enrol(first, "gw-1")
        enrol(first, "gw-2")
        assert first.remember_nonce("gw-1", "n1", NOW + 1) is True
        assert first.get_device("gw-1", NOW).last_seen == NOW + 1  # a fresh nonce: a sighting
        assert second.remember_nonce("gw-1", "n1", NOW + 5) is False
        assert first.get_device("gw-1", NOW).last_seen == NOW + 1  # a replay is not
        assert second.remember_nonce("gw-2", "n1", NOW) is True  # per device
        assert status_of(lambda: first.remember_nonce("nobody", "n2", NOW)) == 404
        assert status_of(lambda: first.remember_nonce("gw-1", "n" * 129, NOW)) == 400
        results = race(6, lambda i: first.remember_nonce("gw-1", "raced", NOW))
        assert sorted(results) == [False] * 5 + [True]
    finally:
        first.close()
        second.close()


def test_a_cached_key_does_not_outlive_a_revocation_made_by_another_store(store_url: str) -> None:
    first, second = Store.open(store_url), Store.open(store_url)
    try:
        token = first.create_enrolment_token(EnrolmentTokenSpec(), NOW)
        key = auth.new_private_key()
        request = EnrolRequest(token=token.token, name="gw-1", public_key=auth.public_key_b64(key))
        first.enrol(request, NOW)

        def check() -> str:
            path = "/v1/device/desired"
            headers = auth.sign_headers(key, "gw-1", "GET", path, now=NOW)
            return check_device(first, headers, "GET", path, b"", NOW)

        assert check() == "gw-1"  # FIRST now holds gw-1's key in memory
        second.revoke_device("gw-1")
        assert first.device_public_key("gw-1") == auth.public_key_b64(key)  # still cached
        assert status_of(check) == 401  # refused all the same, in the nonce's write
        assert status_of(lambda: first.remember_nonce("gw-1", "n9", NOW)) == 404
        second.revoke_device("gw-1")
        assert second.device_public_key("gw-1") is None
    finally:
        first.close()
        second.close()


def test_a_replay_loses_across_two_processes(store_url: str) -> None:
    first = Store.open(store_url)
    try:
        enrol(first, "gw-1")
        assert first.remember_nonce("gw-1", "seen", NOW) is True
    finally:
        first.close()
    other_process = (
        "import sys; from edgeshift.fleet.store import Store; s = Store.open(sys.argv[1]); "
        "print(s.remember_nonce('gw-1', 'seen', 1.0), s.remember_nonce('gw-1', 'new', 1.0))"
    )
    done = subprocess.run(
        [sys.executable, "-c", other_process, store_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_old_nonces_are_pruned_at_most_once_a_minute(store: Store) -> None:
    enrol(store, "gw-1")
    keep_s = store_module.NONCE_KEEP_S
    assert store.remember_nonce("gw-1", "old", NOW) is True  # prunes (first call)
    assert store.remember_nonce("gw-1", "later", NOW + 10) is True
    assert store.remember_nonce("gw-1", "x1", NOW + keep_s + 1) is True  # prunes "old"
    assert store.remember_nonce("gw-1", "old", NOW + keep_s + 1) is True
    # 30 s after the last prune: "later" is past keeping but not forgotten yet.
    assert store.remember_nonce("gw-1", "later", NOW + keep_s + 31) is False
    assert store.remember_nonce("gw-1", "x2", NOW + keep_s + 62) is True  # prunes "later"
    assert store.remember_nonce("gw-1", "later", NOW + keep_s + 62) is True


def test_touch_marks_a_device_online_and_revoke_removes_its_key(store: Store) -> None:
    enrol(store, "gw-1")
    window = store_module.ONLINE_WINDOW_S
    assert store.get_device("gw-1", NOW + window + 1).online is False
    store.touch("gw-1", NOW + 500)
    device = store.get_device("gw-1", NOW + 500 + window)
    assert device.last_seen == NOW + 500 and device.online is True
    assert status_of(lambda: store.touch("nobody", NOW)) == 404
    store.revoke_device("gw-1")
    assert store.device_public_key("gw-1") is None
    assert store.get_device("gw-1", NOW).revoked is True
    assert store.matching_devices(None, None) == []
    assert status_of(lambda: store.revoke_device("nobody")) == 404
    assert store.device_public_key("nobody") is None


# --- devices and groups ----------------------------------------------------------------------


def test_groups_gather_by_token_and_by_selector(store: Store) -> None:
    enrol(store, "a1", group="plant", site="lyon", tier="edge")
    enrol(store, "a2", site="lyon", tier="core")
    enrol(store, "b1", site="oslo", tier="edge")
    info = store.put_group(GroupSpec(name="lyon", selector={"site": "lyon"}))
    assert (info.name, info.selector, info.devices) == ("lyon", {"site": "lyon"}, 2)
    assert [(g.name, g.devices) for g in store.list_groups()] == [("lyon", 2), ("plant", 1)]
    assert store.matching_devices("lyon", None) == ["a1", "a2"]
    assert store.matching_devices("lyon", {"tier": "edge"}) == ["a1"]
    assert store.matching_devices(None, {"tier": "edge"}) == ["a1", "b1"]
    assert store.matching_devices("plant", None) == ["a1"]
    assert [d.device_id for d in store.list_devices(NOW, group="lyon")] == ["a1", "a2"]
    assert [d.device_id for d in store.list_devices(NOW, selector={"site": "oslo"})] == ["b1"]
    assert store.get_device("a1", NOW).groups == ["lyon", "plant"]
    assert status_of(lambda: store.matching_devices("nowhere", None)) == 404
    assert status_of(lambda: store.list_devices(NOW, group="nowhere")) == 404
    # A group's selector can change; membership follows.
    store.put_group(GroupSpec(name="lyon", selector={"tier": "core"}))
    assert store.matching_devices("lyon", None) == ["a2"]
    store.set_labels("b1", {"tier": "core"})
    assert store.matching_devices("lyon", None) == ["a2", "b1"]
    assert store.get_device("b1", NOW).labels == {"tier": "core"}
    assert status_of(lambda: store.set_labels("nobody", {})) == 404
    assert status_of(lambda: store.set_labels("b1", {"bad key": "x"})) == 400
    assert status_of(lambda: store.get_device("nobody", NOW)) == 404


# --- desired and reported state --------------------------------------------------------------


def test_set_desired_bumps_generations_and_remembers_the_rollback_point(store: Store) -> None:
    for name in ("d1", "d2"):
        enrol(store, name)
    kw: dict[str, Any] = {"shadow_s": 5.0, "shadow_min_requests": 3, "trial_s": 7.0}
    assert store.set_desired(["d1"], ref(1), None, now=NOW, **kw) == {"d1": 1}
    assert store.set_desired(["d1", "d2"], ref(2), "r2", now=NOW, **kw) == {"d1": 2, "d2": 1}
    desired = store.desired("d1")
    assert (desired.generation, desired.artifact, desired.rollout_id) == (2, ref(2), "r2")
    assert (desired.shadow_s, desired.shadow_min_requests, desired.trial_s) == (5.0, 3, 7.0)
    # A second move by the same rollout (its own rollback) keeps the first rollback point.
    assert store.set_desired(["d1", "d2"], ref(1), "r2", now=NOW, **kw) == {"d1": 3, "d2": 2}
    assert store.previous_artifact("d1", "r2") == ref(1)
    assert store.previous_artifact("d2", "r2") is None
    assert store.previous_artifact("d1", "other") is None
    assert store.set_desired(["d2"], None, None, now=NOW, **kw) == {"d2": 3}
    assert store.desired("d2").artifact is None
    assert store.set_desired([], ref(1), None, now=NOW, **kw) == {}
    # An unknown id among known ones: nothing changes.
    assert status_of(lambda: store.set_desired(["d1", "zz"], ref(9), "r9", now=NOW, **kw)) == 404
    assert store.desired("d1").generation == 3
    assert store.previous_artifact("d1", "r9") is None
    assert status_of(lambda: store.desired("zz")) == 404


def test_desired_and_generations_for_many_devices_at_once(store: Store) -> None:
    for name in ("d1", "d2", "d3"):
        enrol(store, name)
    kw: dict[str, Any] = {"shadow_s": 0.0, "shadow_min_requests": 0, "trial_s": 0.0, "now": NOW}
    store.set_desired(["d1", "d2"], ref(1), "r1", **kw)
    store.set_desired(["d2"], ref(2), "r2", **kw)
    assert store.generations() == {"d1": 1, "d2": 2, "d3": 0}
    assert store.generations(["d2", "d3", "ghost"]) == {"d2": 2, "d3": 0}
    assert store.generations([]) == {}
    many = store.desired_many(["d1", "d2", "ghost"])
    assert many == {"d1": store.desired("d1"), "d2": store.desired("d2")}
    assert many["d2"].artifact == ref(2) and many["d2"].rollout_id == "r2"
    assert set(store.desired_many()) == {"d1", "d2", "d3"}


def test_concurrent_set_desired_never_loses_a_generation(store: Store) -> None:
    enrol(store, "d1")
    kw: dict[str, Any] = {"shadow_s": 0.0, "shadow_min_requests": 0, "trial_s": 0.0, "now": NOW}
    enrol(store, "d2")
    # Overlapping moves, ids given in different orders.
    results = race(
        6, lambda i: store.set_desired(["d1", "d2"][:: (-1) ** i], ref(i + 1), f"r{i}", **kw)
    )
    assert sorted(r["d1"] for r in results) == [1, 2, 3, 4, 5, 6]
    assert sorted(r["d2"] for r in results) == [1, 2, 3, 4, 5, 6]
    assert store.desired("d1").generation == 6


def test_the_latest_report_wins_unless_it_is_for_an_older_generation(store: Store) -> None:
    enrol(store, "d1")
    enrol(store, "d2")
    store.record_report("d1", report(2, Phase.SHADOW), NOW + 1)
    store.record_report("d1", report(1, Phase.FAILED), NOW + 2)  # late, older generation
    kept = store.reports(["d1", "d2", "unknown"])
    assert kept["d1"] is not None and kept["d1"].phase == Phase.SHADOW
    assert kept["d2"] is None and kept["unknown"] is None
    store.record_report("d1", report(2, Phase.COMMITTED), NOW + 3)
    device = store.get_device("d1", NOW + 3)
    assert device.reported is not None and device.reported.phase == Phase.COMMITTED
    assert device.last_seen == NOW + 3
    assert [r.phase for r in store.report_history("d1")] == [
        Phase.SHADOW,
        Phase.FAILED,
        Phase.COMMITTED,
    ]
    assert status_of(lambda: store.record_report("nobody", report(1), NOW)) == 404


def test_report_history_is_bounded_per_device(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "REPORT_HISTORY_PER_DEVICE", 3)
    enrol(store, "d1")
    enrol(store, "d2")
    store.record_report("d2", report(0), NOW)
    for generation in range(6):
        store.record_report("d1", report(generation), NOW + generation)
    assert [r.generation for r in store.report_history("d1")] == [3, 4, 5]
    assert [r.generation for r in store.report_history("d2")] == [0]
    assert [r.generation for r in store.report_history("d1", limit=2)] == [4, 5]


def test_telemetry_keeps_the_newest_records_per_device(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "TELEMETRY_PER_DEVICE", 5)
    enrol(store, "d1")
    enrol(store, "d2")

    def batch(start: int, count: int) -> TelemetryBatch:
        return TelemetryBatch(
            records=[
                TelemetryRecord(at=NOW + i, kind="event", event=f"e{i}")
                for i in range(start, start + count)
            ]
        )

    assert store.record_telemetry("d1", batch(0, 4), NOW) == 4
    assert store.record_telemetry("d2", batch(0, 2), NOW) == 2
    assert store.record_telemetry("d1", batch(4, 3), NOW + 10) == 3
    assert [r.event for r in store.telemetry("d1")] == ["e2", "e3", "e4", "e5", "e6"]
    assert [r.event for r in store.telemetry("d2")] == ["e0", "e1"]
    assert store.get_device("d1", NOW + 10).last_seen == NOW + 10
    assert status_of(lambda: store.record_telemetry("nobody", batch(0, 1), NOW)) == 404


def test_a_report_carrying_telemetry_stores_it_apart_and_trims_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "TELEMETRY_PER_DEVICE", 3)
    enrol(store, "d1")
    records = [TelemetryRecord(at=NOW + i, kind="event", event=f"e{i}") for i in range(4)]
    store.record_telemetry("d1", TelemetryBatch(records=records[:1]), NOW)
    store.record_report("d1", report(2).model_copy(update={"telemetry": records[1:]}), NOW + 5)
    assert [r.event for r in store.telemetry("d1")] == ["e1", "e2", "e3"]
    kept = store.reports(["d1"])["d1"]
    assert kept is not None and kept.generation == 2 and kept.telemetry == []
    assert [r.telemetry for r in store.report_history("d1")] == [[]]


# --- artifacts and rollouts ------------------------------------------------------------------


def test_artifacts_round_trip(store: Store) -> None:
    first = ArtifactInfo(ref=ref(1), created_at=NOW, files={"model.onnx": "0" * 64})
    second = ArtifactInfo(ref=ref(2), created_at=NOW + 1, files={}, manifest={"k": [1, 2]})
    store.add_artifact(second)
    store.add_artifact(first)
    assert store.get_artifact("m-v2") == second
    assert store.list_artifacts() == [first, second]
    assert status_of(lambda: store.add_artifact(first)) == 409
    assert status_of(lambda: store.get_artifact("m-v9")) == 404


def test_rollouts_round_trip_with_their_waves(store: Store) -> None:
    enrol(store, "d1")
    enrol(store, "d2")
    store.add_rollout(rollout("r1"))
    store.add_rollout(rollout("r2", RolloutState.COMPLETED))
    assert status_of(lambda: store.add_rollout(rollout("r1"))) == 409
    stopped = rollout("r1").model_copy(
        update={"state": RolloutState.ABORTED, "reason": "p95", "updated_at": NOW + 5}
    )
    store.save_rollout(stopped)
    assert store.get_rollout("r1") == stopped
    assert [r.rollout_id for r in store.list_rollouts()] == ["r1", "r2"]
    assert store.list_rollouts(active_only=True) == []
    store.save_rollout(rollout("r1", RolloutState.PAUSED))
    assert [r.rollout_id for r in store.list_rollouts(active_only=True)] == ["r1"]
    assert status_of(lambda: store.save_rollout(rollout("nope"))) == 404
    assert status_of(lambda: store.get_rollout("nope")) == 404
    assert store.rollout_devices("r1") == {}
    store.assign_wave("r1", ["d2"], 0)
    store.assign_wave("r1", ["d1"], 1)
    assert store.rollout_devices("r1") == {"d1": 1, "d2": 0}
    assert store.rollout_devices("r2") == {}
    assert status_of(lambda: store.assign_wave("nope", ["d1"], 0)) == 404
    assert status_of(lambda: store.assign_wave("r1", ["ghost"], 0)) == 404
    assert status_of(lambda: store.rollout_devices("nope")) == 404


# --- scale -----------------------------------------------------------------------------------


def test_a_thousand_devices_in_one_call(sqlite_store: Store) -> None:
    token_spec = EnrolmentTokenSpec()
    key = auth.public_key_b64(auth.new_private_key())
    ids = [f"d{i:04d}" for i in range(1000)]
    for device_id in ids:
        token = sqlite_store.create_enrolment_token(token_spec, NOW).token
        sqlite_store.enrol(EnrolRequest(token=token, name=device_id, public_key=key), NOW)
    kw: dict[str, Any] = {"shadow_s": 0.0, "shadow_min_requests": 0, "trial_s": 0.0, "now": NOW}
    assert set(sqlite_store.set_desired(ids, ref(1), "r1", **kw).values()) == {1}
    for device_id in ids[::2]:
        sqlite_store.record_report(device_id, report(1), NOW)
    kept = sqlite_store.reports(ids)
    assert sum(r is not None for r in kept.values()) == 500
    assert len(sqlite_store.list_devices(NOW)) == 1000


# --- nonces, group-committed -------------------------------------------------------------------


def test_a_batch_of_nonces_answers_each_request_as_if_alone(store: Store) -> None:
    """One transaction for many requests (fleet.nonces): fresh, replayed (before, or twice in
    the batch), unknown and revoked devices each get their own answer; only devices with a
    fresh nonce are marked seen."""
    from edgeshift.fleet.nonces import NonceAsk

    enrol(store, "d1")
    enrol(store, "d2")
    enrol(store, "gone")
    store.revoke_device("gone")
    assert store.remember_nonce("d1", "old", NOW) is True
    asks = [
        NonceAsk("d1", "new", NOW + 2),
        NonceAsk("d1", "old", NOW + 2),  # used before
        NonceAsk("d2", "x", NOW + 2),
        NonceAsk("d2", "x", NOW + 2),  # twice in the batch
        NonceAsk("nobody", "y", NOW + 2),
        NonceAsk("gone", "z", NOW + 2),
    ]
    store._remember_nonces(asks)
    results = [a.result if isinstance(a.result, bool) else a.result.status for a in asks]  # type: ignore[union-attr]
    assert results == [True, False, True, False, 404, 404]
    assert store.get_device("d1", NOW).last_seen == NOW + 2
    assert store.get_device("d2", NOW).last_seen == NOW + 2
    assert store.remember_nonce("d2", "x", NOW + 3) is False  # committed


def test_batches_of_any_size_reuse_one_compiled_nonce_insert(store: Store) -> None:
    """The nonce INSERT runs as an executemany over a cached statement: a multi-VALUES
    statement built per batch had no cache key, and was compiled again for every batch."""
    from sqlalchemy import event

    from edgeshift.fleet.nonces import NonceAsk

    enrol(store, "d1")
    compiled: list[object] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO NONCES"):
            compiled.append(context.compiled)

    event.listen(store._engine, "before_cursor_execute", seen)
    try:
        for batch, size in enumerate((1, 3, 2, 5, 3, 1)):
            asks = [NonceAsk("d1", f"n{batch}-{i}", NOW + 1) for i in range(size)]
            store._remember_nonces(asks)
            assert [a.result for a in asks] == [True] * size
    finally:
        event.remove(store._engine, "before_cursor_execute", seen)
    # One form for a single row, one for many (built per batch: a new one each of the 6)
    assert len(compiled) == 6 and len({id(c) for c in compiled}) <= 2


def test_waiting_nonces_share_one_transaction() -> None:
    """While one batch is being written, the nonces that arrive wait and go together in the
    next: 32 requests at once are 2 transactions, not 32."""
    import time as time_module

    from edgeshift.fleet.nonces import NonceAsk, NonceBatcher

    batches: list[int] = []
    batcher: NonceBatcher

    def write(asks: list[NonceAsk]) -> None:
        if not batches:  # hold the first batch until every other request is queued
            deadline = time_module.monotonic() + 10
            while batcher._queue.qsize() < 31 and time_module.monotonic() < deadline:
                time_module.sleep(0.001)
        batches.append(len(asks))
        for ask in asks:
            ask.result = ask.nonce != "used"

    batcher = NonceBatcher(write)
    try:
        first = threading.Thread(target=batcher.remember, args=("d", "n-first", NOW))
        first.start()
        while not batcher._thread or batcher._queue.qsize():
            time_module.sleep(0.001)  # the writer took the first one
        results = race(31, lambda i: batcher.remember("d", "used" if i == 0 else f"n{i}", NOW))
        first.join()
        assert batches == [1, 31]
        assert results == [False] + [True] * 30
    finally:
        batcher.close()


def test_a_failed_batch_fails_each_of_its_requests_and_the_next_one_works() -> None:
    from edgeshift.fleet.nonces import NonceAsk, NonceBatcher

    calls: list[int] = []

    def write(asks: list[NonceAsk]) -> None:
        calls.append(len(asks))
        if len(calls) == 1:
            raise FleetError("the fleet database failed", 503)
        for ask in asks:
            ask.result = True

    batcher = NonceBatcher(write)
    try:
        assert status_of(lambda: batcher.remember("d", "n1", NOW)) == 503
        assert batcher.remember("d", "n2", NOW) is True
    finally:
        batcher.close()


def test_sqlite_connections_are_reused_across_bursts_of_requests(sqlite_store_url: str) -> None:
    """32 threads writing at once: each waits its turn in the process (no connection held
    while waiting), and a second burst opens no new connection (the pool keeps them)."""
    from sqlalchemy import event

    store = Store.open(sqlite_store_url)
    try:
        enrol(store, "d1")
        opened: list[object] = []
        event.listen(store._engine, "connect", lambda *_: opened.append(1))

        def burst(tag: str) -> list[Any]:
            return race(32, lambda i: store.remember_nonce("d1", f"{tag}{i}", NOW + 1))

        assert burst("a") == [True] * 32
        first = len(opened)
        assert first <= 2  # writers queue for the lock before taking a connection
        assert burst("b") == [True] * 32
        assert len(opened) == first
    finally:
        store.close()
