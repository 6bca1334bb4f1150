"""The control plane's routes over a real socket, with the real Store, TUF repository and
rollout engine: enrolment, artifacts (upload, TUF metadata and Range on targets), the long
poll, limits and malformed input (4xx with one line), and a restart mid-rollout."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeshift.fleet.auth import new_private_key, public_key_b64, sign_headers
from edgeshift.fleet.bundle import pack
from edgeshift.fleet.client import OperatorClient
from edgeshift.fleet.schema import EnrolmentTokenSpec, RolloutSpec
from edgeshift.fleet.server import FleetServerThread, FleetSettings
from edgeshift.fleet.store import Store


@dataclass(frozen=True)
class Device:
    device_id: str
    key: Ed25519PrivateKey


def enrol_device(
    fleet: FleetServerThread, name: str, labels: dict[str, str] | None = None
) -> Device:
    key = new_private_key()
    with OperatorClient(fleet.url, fleet.operator_token) as client:
        token = client.create_enrolment_token(EnrolmentTokenSpec(labels=labels or {})).token
    answer = httpx.post(
        f"{fleet.url}/v1/enrol",
        json={"token": token, "name": name, "public_key": public_key_b64(key)},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return Device(answer.json()["device_id"], key)


def signed(
    http: httpx.Client,
    device: Device,
    method: str,
    path: str,
    *,
    json: Any = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    body = b"" if json is None else _json_bytes(json)
    auth = sign_headers(device.key, device.device_id, method, path, body)
    return http.request(method, path, content=body, headers={**auth, **(headers or {})}, timeout=30)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def make_model_dir(root: Path, payload: bytes = b"weights" * 100) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(payload)
    (root / "manifest.json").write_text(json.dumps({"model": "m", "precision": "int8"}))
    return root


def publish(client: OperatorClient, tmp_path: Path, name: str, version: int) -> Any:
    model = make_model_dir(
        tmp_path / f"{name}-{version}", payload=f"{name}{version}".encode() * 999
    )
    bundle = tmp_path / f"{name}-{version}.tar"
    pack(model, bundle)
    return client.publish_artifact(bundle, name, version)


@pytest.fixture
def fleet(tmp_path: Path, sqlite_store_url: str) -> Iterator[FleetServerThread]:
    # sqlite_store_url: a copy of a migrated database, so each server skips the migration.
    settings = FleetSettings(
        data_dir=tmp_path / "data", db_url=sqlite_store_url, port=0, tick_s=0.05, recheck_s=0.2
    )
    with FleetServerThread(settings) as server:
        yield server


@pytest.fixture(scope="module")
def shared_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServerThread]:
    """One control plane for the tests that only send it bad input."""
    settings = FleetSettings(data_dir=tmp_path_factory.mktemp("shared") / "data", port=0)
    with FleetServerThread(settings) as server:
        yield server


@pytest.fixture
def operator(fleet: FleetServerThread) -> Iterator[OperatorClient]:
    with OperatorClient(fleet.url, fleet.operator_token) as client:
        yield client


@pytest.fixture
def http(fleet: FleetServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fleet.url, timeout=30) as client:
        yield client


def test_publish_then_a_device_fetches_metadata_and_resumes_a_target(
    fleet: FleetServerThread, operator: OperatorClient, http: httpx.Client, tmp_path: Path
) -> None:
    info = publish(operator, tmp_path, "tiny", 1)
    assert info.ref.artifact_id == "tiny-v1"
    assert info.manifest == {"model": "m", "precision": "int8"}
    assert set(info.files) == {"model.onnx", "manifest.json"}
    assert [a.ref.artifact_id for a in operator.list_artifacts()] == ["tiny-v1"]
    assert operator.get_artifact("tiny-v1") == info
    assert json.loads(operator.root_json())["signed"]["_type"] == "root"

    device = enrol_device(fleet, "fetcher")
    timestamp = signed(http, device, "GET", "/v1/device/tuf/metadata/timestamp.json")
    assert timestamp.status_code == 200 and timestamp.json()["signed"]["_type"] == "timestamp"
    assert signed(http, device, "GET", "/v1/device/tuf/metadata/1.root.json").status_code == 200
    whole = signed(http, device, "GET", f"/v1/device/tuf/targets/{info.ref.target_path}")
    assert whole.status_code == 200 and len(whole.content) == info.ref.length
    tail = signed(
        http,
        device,
        "GET",
        f"/v1/device/tuf/targets/{info.ref.target_path}",
        headers={"Range": "bytes=100-"},
    )
    assert tail.status_code == 206 and tail.content == whole.content[100:]
    beyond = signed(
        http,
        device,
        "GET",
        f"/v1/device/tuf/targets/{info.ref.target_path}",
        headers={"Range": f"bytes={info.ref.length + 10}-"},
    )
    assert beyond.status_code == 416
    for bad in ("../../keys/root.pem", "tiny/..%2F..%2Fkeys", "tiny/9.tar", "%2e%2e/x"):
        answer = signed(http, device, "GET", f"/v1/device/tuf/targets/{bad}")
        assert answer.status_code == 404, (bad, answer.text)
    for bad in ("keys.json", "..%2Fkeys%2Froot.pem", "7.root.json"):
        answer = signed(http, device, "GET", f"/v1/device/tuf/metadata/{bad}")
        assert answer.status_code == 404, (bad, answer.text)


def test_upload_refuses_what_is_not_a_bundle(fleet: FleetServerThread, http: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {fleet.operator_token}"}
    garbage = http.post(
        "/v1/artifacts?name=bad&version=1", content=b"not a tar" * 100, headers=auth
    )
    assert garbage.status_code == 400 and set(garbage.json()) == {"error"}
    for query in ("name=../x&version=1", "name=ok&version=0", "name=ok&version=x", "version=1"):
        answer = http.post(f"/v1/artifacts?{query}", content=b"x", headers=auth)
        assert answer.status_code == 400, (query, answer.text)
    assert not list((fleet.server.settings.data_dir / "uploads").iterdir())


def _poll_in_thread(fleet: FleetServerThread, device: Device, generation: int) -> Any:
    answers: list[dict[str, Any]] = []

    def poll() -> None:
        with httpx.Client(base_url=fleet.url, timeout=90) as http:
            path = f"/v1/device/desired?generation={generation}&wait=60"
            answers.append(signed(http, device, "GET", path).json())

    waiter = threading.Thread(target=poll, daemon=True)
    waiter.start()
    return waiter, answers


def test_long_poll_wakes_on_the_engines_change_not_its_recheck(tmp_path: Path) -> None:
    # recheck_s 60: within the 30 s joined below only the in-process event can answer.
    settings = FleetSettings(data_dir=tmp_path / "data", port=0, tick_s=0.05, recheck_s=60)
    with (
        FleetServerThread(settings) as fleet,
        OperatorClient(fleet.url, fleet.operator_token) as operator,
    ):
        info = publish(operator, tmp_path, "lp", 1)
        device = enrol_device(fleet, "poller")
        with httpx.Client(base_url=fleet.url, timeout=30) as http:
            first = signed(http, device, "GET", "/v1/device/desired?generation=-1&wait=30")
        assert first.json()["artifact"] is None
        generation = first.json()["generation"]
        waiter, answers = _poll_in_thread(fleet, device, generation)
        operator.create_rollout(
            RolloutSpec(artifact_id=info.ref.artifact_id, waves=[100], soak_s=0)
        )
        waiter.join(30)
        assert answers and answers[0]["generation"] > generation
        assert answers[0]["artifact"]["artifact_id"] == "lp-v1"
        # Nothing new: the poll answers with the same generation once its wait is over.
        with httpx.Client(base_url=fleet.url, timeout=30) as http:
            path = f"/v1/device/desired?generation={answers[0]['generation']}&wait=0.3"
            again = signed(http, device, "GET", path)
        assert again.json()["generation"] == answers[0]["generation"]


def test_long_poll_sees_a_change_made_by_another_process(
    fleet: FleetServerThread, operator: OperatorClient, tmp_path: Path
) -> None:
    info = publish(operator, tmp_path, "other", 1)
    device = enrol_device(fleet, "poller-2")
    waiter, answers = _poll_in_thread(fleet, device, 0)
    # Another control plane process writes the database directly: no event, only the recheck.
    other = Store.open(fleet.server.settings.database_url())
    try:
        other.set_desired(
            [device.device_id], info.ref, None, shadow_s=0, shadow_min_requests=0, trial_s=0,
            now=time.time(),
        )  # fmt: skip
    finally:
        other.close()
    waiter.join(30)
    assert answers and answers[0]["artifact"]["artifact_id"] == "other-v1"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"artifact_id": "a-v1", "waves": [10, 5, 100]}, "waves"),
        ({"artifact_id": "a-v1", "waves": [10, 50]}, "waves"),
        ({"artifact_id": "a-v1", "soak_s": -1}, "soak_s"),
        ({"artifact_id": "a-v1", "gates": {"max_error_rate": 2}}, "gates.max_error_rate"),
        ({"artifact_id": "../etc", "waves": [100]}, "artifact_id"),
        ({"artifact_id": "a-v1", "surprise": 1}, "surprise"),
        ([1, 2, 3], "body"),
    ],
)
def test_malformed_rollout_spec_is_400_naming_the_field(
    shared_fleet: FleetServerThread, body: Any, field: str
) -> None:
    headers = {"Authorization": f"Bearer {shared_fleet.operator_token}"}
    answer = httpx.post(
        f"{shared_fleet.url}/v1/rollouts", content=_json_bytes(body), headers=headers
    )
    assert answer.status_code == 400
    line = answer.json()["error"]
    assert "\n" not in line and field in line


def test_bad_input_is_4xx_json_and_the_server_keeps_serving(
    fleet: FleetServerThread, http: httpx.Client
) -> None:
    headers = {"Authorization": f"Bearer {fleet.operator_token}"}
    cases = [
        ("POST", "/v1/rollouts", b"{not json"),
        ("POST", "/v1/rollouts", b"\xff\xfe"),
        ("POST", "/v1/enrolment-tokens", b'{"ttl_s": -5}'),
        ("PUT", "/v1/groups/g1", b'{"selector": {"bad key!": "x"}}'),
        ("PUT", "/v1/groups/g1", b'{"name": "g2"}'),
        ("PUT", "/v1/devices/nobody/labels", b'{"k": "v"}'),
        ("GET", "/v1/devices?label=nokv", b""),
        ("GET", "/v1/devices/nobody", b""),
        ("GET", "/v1/rollouts/nobody", b""),
        ("POST", "/v1/rollouts/nobody/explode", b""),
        ("POST", "/v1/rollouts/nobody/pause", b""),
        ("GET", "/v1/nothing-here", b""),
        ("DELETE", "/v1/summary", b""),
    ]
    for method, path, body in cases:
        answer = http.request(method, path, content=body, headers=headers)
        assert 400 <= answer.status_code < 500, (method, path, answer.status_code, answer.text)
        assert set(answer.json()) == {"error"} and "\n" not in answer.json()["error"]
    big = http.post("/v1/rollouts", content=b" " * ((1 << 20) + 1), headers=headers)
    assert big.status_code == 413
    enrol_big = http.post("/v1/enrol", content=b"{" + b" " * (1 << 20))
    assert enrol_big.status_code == 413
    device = enrol_device(fleet, "limits")
    too_many = {"records": [{"at": 1.0, "kind": "event"}] * 1001}
    answer = signed(http, device, "POST", "/v1/device/telemetry", json=too_many)
    assert answer.status_code == 400 and "records" in answer.json()["error"]
    kept = signed(
        http, device, "POST", "/v1/device/telemetry", json={"records": too_many["records"][:3]}
    )
    assert kept.json() == {"kept": 3}
    assert http.get("/healthz").json() == {"status": "ok"}


def test_a_refused_device_request_cannot_be_replayed(
    fleet: FleetServerThread, http: httpx.Client
) -> None:
    """A device request's nonce and its work share one transaction; a request its work refuses
    (here a report that is not a DeviceReport) still uses up its nonce, and the device is
    seen, while nothing of the refused work is kept."""
    device = enrol_device(fleet, "replayed")
    body = _json_bytes({"generation": "not a number"})
    auth = sign_headers(device.key, device.device_id, "POST", "/v1/device/report", body)
    first = http.post("/v1/device/report", content=body, headers=auth)
    assert first.status_code == 400 and "generation" in first.json()["error"]
    again = http.post("/v1/device/report", content=body, headers=auth)
    assert again.status_code == 401 and "replay" in again.json()["error"]
    with OperatorClient(fleet.url, fleet.operator_token) as client:
        shown = client.get_device(device.device_id)
    assert shown.last_seen is not None and shown.reported is None
    good = {"generation": 0, "phase": "idle", "sent_at": time.time()}
    assert signed(http, device, "POST", "/v1/device/report", json=good).status_code == 200


def test_devices_groups_labels_and_summary(
    fleet: FleetServerThread, operator: OperatorClient
) -> None:
    enrol_device(fleet, "cam-1", {"site": "a"})
    enrol_device(fleet, "cam-2", {"site": "b"})
    from edgeshift.fleet.schema import GroupSpec

    group = operator.put_group(GroupSpec(name="site-a", selector={"site": "a"}))
    assert group.devices == 1
    assert [d.device_id for d in operator.list_devices(selector={"site": "b"})] == ["cam-2"]
    assert [d.device_id for d in operator.list_devices(group="site-a")] == ["cam-1"]
    relabelled = operator.set_labels("cam-2", {"site": "a"})
    assert relabelled.labels["site"] == "a"
    assert {d.device_id for d in operator.list_devices(group="site-a")} == {"cam-1", "cam-2"}
    summary = operator.summary()
    assert summary["devices"]["total"] == 2 and summary["active_rollouts"] == []


def test_restart_mid_rollout_continues_it(tmp_path: Path, store_url: str) -> None:
    # On SQLite and PostgreSQL (store_url): the rollout lives in the database, not the process.
    settings = FleetSettings(
        data_dir=tmp_path / "data", db_url=store_url, port=0, tick_s=0.05, recheck_s=0.2
    )
    with (
        FleetServerThread(settings) as fleet,
        OperatorClient(fleet.url, fleet.operator_token) as operator,
    ):
        info = publish(operator, tmp_path, "rs", 1)
        devices = [enrol_device(fleet, f"rs-{i}") for i in range(4)]
        spec = RolloutSpec(
            artifact_id=info.ref.artifact_id,
            waves=[25, 100],
            soak_s=0,
            shadow_s=0,
            trial_s=0,
        )
        rollout = operator.create_rollout(spec)
        first_wave = _wait_for_desired(fleet, devices, "rs-v1", at_least=1)
        assert len(first_wave) == 1
    # Stopped mid-rollout: the first wave's device commits while the control plane is down
    # and reports once it is back.
    with (
        FleetServerThread(settings) as fleet,
        OperatorClient(fleet.url, fleet.operator_token) as operator,
    ):
        assert operator.get_rollout(rollout.rollout_id).state.value == "running"
        _report_committed(fleet, first_wave)
        everyone = _wait_for_desired(fleet, devices, "rs-v1", at_least=4)
        assert len(everyone) == 4
        _report_committed(fleet, everyone)
        deadline = time.monotonic() + 20
        while operator.get_rollout(rollout.rollout_id).state.value != "completed":
            assert time.monotonic() < deadline, operator.get_rollout(rollout.rollout_id)
            time.sleep(0.05)


def test_the_engine_ticks_when_a_rollout_starts_its_wave_settles_and_its_soak_ends(
    tmp_path: Path,
) -> None:
    # A 10-minute tick: within this test only the wake-ups can move the rollout on.
    settings = FleetSettings(data_dir=tmp_path / "data", port=0, tick_s=600, recheck_s=0.2)
    with (
        FleetServerThread(settings) as fleet,
        OperatorClient(fleet.url, fleet.operator_token) as operator,
    ):
        info = publish(operator, tmp_path, "rs", 1)
        devices = [enrol_device(fleet, f"wk-{i}") for i in range(2)]
        spec = RolloutSpec(
            artifact_id=info.ref.artifact_id,
            waves=[50, 100],
            soak_s=0.5,
            shadow_s=0,
            trial_s=0,
        )
        rollout = operator.create_rollout(spec)
        first = _wait_for_desired(fleet, devices, "rs-v1", at_least=1)  # created: a tick
        assert len(first) == 1
        _report_committed(fleet, first)  # the wave's last device: a tick; its soak's end: one
        everyone = _wait_for_desired(fleet, devices, "rs-v1", at_least=2)
        _report_committed(fleet, everyone)
        deadline = time.monotonic() + 20
        while operator.get_rollout(rollout.rollout_id).state.value != "completed":
            assert time.monotonic() < deadline, operator.get_rollout(rollout.rollout_id)
            time.sleep(0.05)
        waves = operator.get_rollout(rollout.rollout_id).waves
        assert all(w.soak_until is not None and w.finished_at is not None for w in waves)
        assert all(w.finished_at >= w.soak_until for w in waves)  # type: ignore[operator]


def _wait_for_desired(
    fleet: FleetServerThread, devices: list[Device], artifact_id: str, at_least: int
) -> list[tuple[Device, int]]:
    deadline = time.monotonic() + 20
    with httpx.Client(base_url=fleet.url, timeout=30) as http:
        while True:
            moved = []
            for device in devices:
                state = signed(http, device, "GET", "/v1/device/desired?wait=0").json()
                artifact = state["artifact"]
                if artifact and artifact["artifact_id"] == artifact_id:
                    moved.append((device, state["generation"]))
            if len(moved) >= at_least:
                return moved
            assert time.monotonic() < deadline, f"only {len(moved)} devices moved"
            time.sleep(0.05)


def _report_committed(fleet: FleetServerThread, devices: list[tuple[Device, int]]) -> None:
    with httpx.Client(base_url=fleet.url, timeout=30) as http:
        for device, generation in devices:
            report = {
                "generation": generation,
                "phase": "committed",
                "active": "rs-v1",
                "last_good": "rs-v1",
                "stats": {
                    "requests": 100,
                    "errors": 0,
                    "p95_ms": 5.0,
                    "baseline_p95_ms": 5.0,
                    "shadow_samples": 50,
                    "shadow_agreement": 1.0,
                },
                "sent_at": time.time(),
            }
            answer = signed(http, device, "POST", "/v1/device/report", json=report)
            assert answer.json() == {"ok": True}, answer.text


def test_stopping_answers_waiting_long_polls(tmp_path: Path, sqlite_store_url: str) -> None:
    settings = FleetSettings(
        data_dir=tmp_path / "data", db_url=sqlite_store_url, port=0, recheck_s=60
    )
    fleet = FleetServerThread(settings).start()
    answers: list[httpx.Response] = []
    try:
        device = enrol_device(fleet, "stopper")
        with httpx.Client(base_url=fleet.url, timeout=30) as http:
            generation = signed(http, device, "GET", "/v1/device/desired?wait=0").json()

        def poll() -> None:
            with httpx.Client(base_url=fleet.url, timeout=90) as http:
                path = f"/v1/device/desired?generation={generation['generation']}&wait=60"
                answers.append(signed(http, device, "GET", path))

        waiter = threading.Thread(target=poll, daemon=True)
        waiter.start()
        while not fleet.server.context or not fleet.server.context.waiters.waiting():
            time.sleep(0.01)
    finally:
        fleet.stop()
    waiter.join(30)
    # Answered at once (not cut off, not held for its minute) with a 503 that closes the
    # connection: the agent backs off and polls the restarted control plane.
    [answer] = answers
    assert answer.status_code == 503 and answer.headers["connection"] == "close"
    assert "restarting" in answer.json()["error"]


def test_recheck_reads_the_generations_of_the_waiting_devices(sqlite_store: Store) -> None:
    from edgeshift.fleet.api import _generations
    from edgeshift.fleet.schema import EnrolRequest

    now = time.time()
    ids = []
    for i in range(6):
        token = sqlite_store.create_enrolment_token(EnrolmentTokenSpec(), now).token
        request = EnrolRequest(
            token=token, name=f"g-{i}", public_key=public_key_b64(new_private_key())
        )
        ids.append(sqlite_store.enrol(request, now).device_id)
    moved = sqlite_store.set_desired(
        ids[::2], None, None, shadow_s=0, shadow_min_requests=0, trial_s=0, now=now
    )
    asked = ids[:4]
    generations = _generations(sqlite_store, asked, now)
    assert set(generations) == set(asked)  # only the devices asked about
    assert generations == {i: sqlite_store.desired(i).generation for i in asked}
    assert {i: generations[i] for i in asked if i in moved} == {
        i: g for i, g in moved.items() if i in asked
    }


def test_route_work_runs_on_the_servers_own_thread_pool(
    fleet: FleetServerThread, operator: OperatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The routes' blocking calls go to asyncio's executor, which FleetServer sizes to
    # WORKER_THREADS threads (fleet/api.py: _run), not to anyio's worker threads.
    store = fleet.server.context.store  # type: ignore[union-attr]
    threads: list[str] = []
    list_groups = store.list_groups

    def recorded() -> Any:
        threads.append(threading.current_thread().name)
        return list_groups()

    monkeypatch.setattr(store, "list_groups", recorded)
    operator.list_groups()
    assert len(threads) == 1 and threads[0].startswith("edgeshift-fleet")
