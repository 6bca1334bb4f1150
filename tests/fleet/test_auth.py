"""Who may call the control plane: fleet/guard.py's checks as functions, then every route's
auth over a real socket (operator bearer tokens; signed, fresh, unreplayed device requests)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeshift.errors import ConfigError, FleetError
from edgeshift.fleet.auth import new_private_key, public_key_b64, sign_headers
from edgeshift.fleet.guard import OperatorAuth, check_device, parse_token_file
from edgeshift.fleet.schema import MAX_CLOCK_SKEW_S, TIMESTAMP_HEADER
from edgeshift.fleet.server import FleetServerThread, FleetSettings

from .test_api import Device, enrol_device, signed

NOW = 1_900_000_000.0


class _Keys:
    """The two Store methods check_device needs, in memory."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}
        self.nonces: set[tuple[str, str]] = set()

    def device_public_key(self, device_id: str) -> str | None:
        return self.keys.get(device_id)

    def remember_nonce(self, device_id: str, nonce: str, now: float) -> bool:
        if (device_id, nonce) in self.nonces:
            return False
        self.nonces.add((device_id, nonce))
        return True


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def test_check_device_accepts_a_good_request_once_and_refuses_the_replay() -> None:
    keys, key = _Keys(), new_private_key()
    keys.keys["dev-1"] = public_key_b64(key)
    headers = _lower(sign_headers(key, "dev-1", "POST", "/v1/device/report", b"{}", now=NOW))
    assert check_device(keys, headers, "POST", "/v1/device/report", b"{}", NOW + 1) == "dev-1"
    with pytest.raises(FleetError, match="nonce was used before") as err:
        check_device(keys, headers, "POST", "/v1/device/report", b"{}", NOW + 2)
    assert err.value.status == 401


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"path": "/v1/device/telemetry"}, "signature that does not verify"),
        ({"body": b'{"x": 1}'}, "signature that does not verify"),
        ({"method": "GET"}, "signature that does not verify"),
        ({"now": NOW + MAX_CLOCK_SKEW_S + 5}, "timestamp is more than"),
        ({"now": NOW - MAX_CLOCK_SKEW_S - 5}, "timestamp is more than"),
    ],
)
def test_check_device_refuses_a_changed_or_stale_request(
    change: dict[str, object], message: str
) -> None:
    keys, key = _Keys(), new_private_key()
    keys.keys["dev-1"] = public_key_b64(key)
    headers = _lower(sign_headers(key, "dev-1", "POST", "/v1/device/report", b"{}", now=NOW))
    args: dict[str, object] = {"method": "POST", "path": "/v1/device/report", "body": b"{}"}
    args["now"] = NOW
    args.update(change)
    with pytest.raises(FleetError, match=message) as err:
        check_device(keys, headers, args["method"], args["path"], args["body"], args["now"])  # type: ignore[arg-type]
    assert err.value.status == 401
    assert not keys.nonces  # a refused request burns no nonce


def test_unknown_revoked_and_forged_devices_read_the_same() -> None:
    keys, key, other = _Keys(), new_private_key(), new_private_key()
    keys.keys["dev-1"] = public_key_b64(key)
    forged = _lower(sign_headers(other, "dev-1", "GET", "/v1/device/desired", now=NOW))
    unknown = _lower(sign_headers(key, "dev-2", "GET", "/v1/device/desired", now=NOW))
    messages = set()
    for headers in (forged, unknown):
        with pytest.raises(FleetError) as err:
            check_device(keys, headers, "GET", "/v1/device/desired", b"", NOW)
        messages.add(str(err.value))
    assert len(messages) == 1


def test_check_device_refuses_missing_or_garbage_headers() -> None:
    keys, key = _Keys(), new_private_key()
    keys.keys["dev-1"] = public_key_b64(key)
    headers = _lower(sign_headers(key, "dev-1", "GET", "/x", now=NOW))
    for drop in list(headers):
        partial = {k: v for k, v in headers.items() if k != drop}
        with pytest.raises(FleetError, match="missing"):
            check_device(keys, partial, "GET", "/x", b"", NOW)
    for bad in ("nan", "inf", "soon", "1e400"):
        with pytest.raises(FleetError, match="timestamp"):
            check_device(keys, {**headers, TIMESTAMP_HEADER.lower(): bad}, "GET", "/x", b"", NOW)


def test_token_file_formats(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# ops\nalice:" + "a" * 20 + "\n\nbob:" + "b" * 20 + "\n")
    assert parse_token_file(path) == {"alice": "a" * 20, "bob": "b" * 20}
    path.write_text("c" * 24 + "\n")
    assert parse_token_file(path) == {"operator": "c" * 24}
    for text, message in [("", "holds no token"), ("alice:short\n", "at least 16")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            parse_token_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        parse_token_file(tmp_path / "missing")


class _NoTokens:
    def __init__(self, known: dict[str, str] | None = None) -> None:
        self.known = known or {}

    def operator_for_token(self, token: str) -> str | None:
        return self.known.get(token)


def test_operator_auth_file_tokens_then_store() -> None:
    auth = OperatorAuth.from_tokens({"alice": "a" * 20})
    store = _NoTokens({"s" * 20: "svc"})
    assert auth.operator("Bearer " + "a" * 20, store) == "alice"
    assert auth.operator("bearer " + "s" * 20, store) == "svc"
    for header in (None, "", "Basic abc", "Bearer ", "Bearer " + "x" * 20):
        with pytest.raises(FleetError) as err:
            auth.operator(header, store)
        assert err.value.status == 401


# --- over a real socket ------------------------------------------------------------------

OPERATOR_ROUTES = [
    ("GET", "/v1/root.json"),
    ("POST", "/v1/enrolment-tokens"),
    ("GET", "/v1/devices"),
    ("GET", "/v1/devices/dev-1"),
    ("PUT", "/v1/devices/dev-1/labels"),
    ("DELETE", "/v1/devices/dev-1"),
    ("GET", "/v1/groups"),
    ("PUT", "/v1/groups/g1"),
    ("POST", "/v1/artifacts?name=m&version=1"),
    ("GET", "/v1/artifacts"),
    ("GET", "/v1/artifacts/m-v1"),
    ("POST", "/v1/rollouts"),
    ("GET", "/v1/rollouts"),
    ("GET", "/v1/rollouts/r1"),
    ("POST", "/v1/rollouts/r1/pause"),
    ("POST", "/v1/rollouts/r1/resume"),
    ("POST", "/v1/rollouts/r1/cancel"),
    ("POST", "/v1/rollouts/r1/rollback"),
    ("GET", "/v1/summary"),
]
DEVICE_ROUTES = [
    ("GET", "/v1/device/desired?generation=0&wait=0"),
    ("POST", "/v1/device/report"),
    ("POST", "/v1/device/telemetry"),
    ("GET", "/v1/device/tuf/metadata/root.json"),
    ("GET", "/v1/device/tuf/targets/m/1.tar"),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServerThread]:
    data_dir = tmp_path_factory.mktemp("fleet-auth")
    with FleetServerThread(FleetSettings(data_dir=data_dir, port=0)) as server:
        yield server


@pytest.fixture(scope="module")
def http(fleet: FleetServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fleet.url, timeout=10) as client:
        yield client


def test_first_start_writes_a_private_operator_token(fleet: FleetServerThread) -> None:
    path = fleet.server.settings.data_dir / "operator.token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert fleet.server.token_path == path
    assert len(fleet.operator_token) >= 32


def test_every_operator_route_refuses_no_token_and_a_bad_one(http: httpx.Client) -> None:
    for method, path in OPERATOR_ROUTES:
        for headers in ({}, {"Authorization": "Bearer " + "x" * 40}, {"Authorization": "x"}):
            answer = http.request(method, path, headers=headers, content=b"{}")
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert set(answer.json()) == {"error"}


def test_only_health_and_the_dashboard_are_open(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    page = http.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert http.get("/dashboard/").status_code == 200


def test_device_routes_refuse_unsigned_forged_replayed_stale_and_revoked(
    fleet: FleetServerThread, http: httpx.Client
) -> None:
    device = enrol_device(fleet, "auth-dev")
    other_key = new_private_key()
    for method, path in DEVICE_ROUTES:
        body = b"{}" if method == "POST" else b""
        unsigned = http.request(method, path, content=body)
        assert unsigned.status_code == 401, (path, unsigned.text)
        forged = sign_headers(other_key, device.device_id, method, path, body)
        assert http.request(method, path, headers=forged, content=body).status_code == 401
        stale = sign_headers(
            device.key, device.device_id, method, path, body, now=time.time() - 2 * MAX_CLOCK_SKEW_S
        )
        assert http.request(method, path, headers=stale, content=body).status_code == 401
    # A replay of a request that was accepted once.
    path = "/v1/device/desired?generation=-1&wait=0"
    headers = sign_headers(device.key, device.device_id, "GET", path)
    assert http.get(path, headers=headers).status_code == 200
    replay = http.get(path, headers=headers)
    assert replay.status_code == 401 and "nonce" in replay.json()["error"]
    # Revoked: refused with the same line as an unknown device.
    with httpx.Client(base_url=fleet.url, timeout=10) as operator:
        auth = {"Authorization": f"Bearer {fleet.operator_token}"}
        assert operator.delete(f"/v1/devices/{device.device_id}", headers=auth).json()["revoked"]
    revoked = signed(http, device, "GET", "/v1/device/desired?generation=-1&wait=0")
    unknown = signed(
        http, Device("nobody-here", device.key), "GET", "/v1/device/desired?generation=-1&wait=0"
    )
    assert revoked.status_code == unknown.status_code == 401
    assert revoked.json() == unknown.json()


def test_enrolment_token_is_one_time(fleet: FleetServerThread, http: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {fleet.operator_token}"}
    token = http.post("/v1/enrolment-tokens", json={}, headers=auth).json()["token"]
    first = {"token": token, "name": "once-1", "public_key": public_key_b64(new_private_key())}
    assert http.post("/v1/enrol", json=first).status_code == 200
    second = {**first, "name": "once-2", "public_key": public_key_b64(new_private_key())}
    again = http.post("/v1/enrol", json=second)
    assert again.status_code == 401 and set(again.json()) == {"error"}
    made_up = {**second, "token": "z" * 32}
    assert http.post("/v1/enrol", json=made_up).status_code == 401
    bad_key = {**second, "public_key": "A" * 44}
    refused = http.post("/v1/enrol", json=bad_key)
    assert refused.status_code in (400, 401)


def test_a_device_sees_and_writes_only_its_own_state(
    fleet: FleetServerThread, http: httpx.Client
) -> None:
    a, b = enrol_device(fleet, "own-a"), enrol_device(fleet, "own-b")
    # A signing as B with its own key: refused, never B's state.
    assert signed(http, Device(b.device_id, a.key), "GET", "/v1/device/desired").status_code == 401
    report = {"generation": 0, "phase": "idle", "active": "m-v9", "sent_at": time.time()}
    assert signed(http, a, "POST", "/v1/device/report", json=report).json() == {"ok": True}
    auth = {"Authorization": f"Bearer {fleet.operator_token}"}
    seen_a = http.get(f"/v1/devices/{a.device_id}", headers=auth).json()
    seen_b = http.get(f"/v1/devices/{b.device_id}", headers=auth).json()
    assert seen_a["reported"]["active"] == "m-v9"
    assert seen_b["reported"] is None


def test_token_file_replaces_the_generated_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("ops:" + "t" * 32 + "\n")
    settings = FleetSettings(data_dir=tmp_path / "data", port=0, token_file=tokens)
    with FleetServerThread(settings) as server, httpx.Client(base_url=server.url) as http:
        assert not (tmp_path / "data" / "operator.token").exists()
        ok = http.get("/v1/devices", headers={"Authorization": "Bearer " + "t" * 32})
        assert ok.status_code == 200 and ok.json() == []


def test_tls_serves_operators_over_https(tmp_path: Path, sqlite_store_url: str) -> None:
    from edgeshift.fleet.client import OperatorClient
    from edgeshift.serve.security import TlsSettings
    from tests.serve.certs import make_certs

    certs = make_certs(tmp_path / "certs")
    settings = FleetSettings(
        data_dir=tmp_path / "data",
        db_url=sqlite_store_url,
        port=0,
        tls=TlsSettings(certs.server_cert, certs.server_key),
    )
    with FleetServerThread(settings) as server:
        assert server.url.startswith("https://")
        with OperatorClient(server.url, server.operator_token, verify=str(certs.ca)) as client:
            assert client.list_devices() == []
        with pytest.raises(FleetError, match="cannot reach"):  # an unknown CA: refused
            OperatorClient(server.url, server.operator_token).list_devices()


def test_binding_beyond_loopback_without_tls_warns(
    tmp_path: Path, sqlite_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = FleetSettings(
        data_dir=tmp_path / "data", db_url=sqlite_store_url, host="0.0.0.0", port=0
    )
    with caplog.at_level("WARNING", logger="edgeshift.fleet"), FleetServerThread(settings):
        pass
    assert any("without TLS" in r.getMessage() for r in caplog.records)
