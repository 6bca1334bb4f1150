"""The fleet dashboard in a real headless Chromium, driven over the DevTools protocol.

The page is served by a small Starlette app in the test (the dashboard directory plus canned
operator answers built from fleet/schema.py's types), so what the page parses is exactly the
wire shape; the control plane's own mounting is tested where the control plane is.
"""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import edgeshift.fleet
from edgeshift.fleet.api import summarize
from edgeshift.fleet.client import OperatorClient
from edgeshift.fleet.schema import (
    ArtifactRef,
    DesiredState,
    DeviceInfo,
    DeviceReport,
    GateResult,
    Phase,
    RolloutInfo,
    RolloutSpec,
    RolloutState,
    ServingStats,
    WaveInfo,
)
from edgeshift.fleet.server import FleetServerThread, FleetSettings
from tests.fleet.test_api import enrol_device, publish, signed

DASHBOARD = Path(edgeshift.fleet.__file__).parent / "dashboard"
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
GOOD_TOKEN = "operator-token-0123456789"
EVIL = '<img src=x onerror="window.__pwned=1">'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install -y chromium)"),
]


# --- canned fleet, in the schema's own types ------------------------------------------------

NOW = time.time()
REF = ArtifactRef(
    artifact_id="minilm-v2",
    name="minilm",
    version=2,
    target_path="minilm/2.tar",
    length=5_000_000,
    sha256="0" * 64,
)


def _device(
    name: str,
    *,
    online: bool,
    phase: Phase,
    active: str,
    p95_ms: float,
    requests: int,
    errors: int,
    labels: dict[str, str],
) -> DeviceInfo:
    stats = ServingStats(requests=requests, errors=errors, p95_ms=p95_ms)
    report = DeviceReport(generation=3, phase=phase, active=active, stats=stats, sent_at=NOW - 5)
    return DeviceInfo(
        device_id=name,
        labels=labels,
        groups=["factory"],
        hardware="rpi5",
        enrolled_at=NOW - 900,
        last_seen=NOW - (5 if online else 600),
        online=online,
        revoked=False,
        desired=DesiredState(generation=3, artifact=REF, rollout_id="r-minilm-2"),
        reported=report,
    )


def _gate(wave: int, at: float, passed: bool, **metrics: float) -> GateResult:
    failures = [] if passed else ["p95 ratio 2.10 > 1.50"]
    return GateResult(
        wave=wave,
        at=at,
        passed=passed,
        failures=failures,
        metrics=dict(metrics),
        devices=4,
        reporting=4,
    )


def _fleet() -> dict[str, Any]:
    devices = [
        _device(
            "gw-01",
            online=True,
            phase=Phase.COMMITTED,
            active="minilm-v2",
            p95_ms=12.5,
            requests=1000,
            errors=2,
            labels={"site": "plant-a"},
        ),
        _device(
            "gw-02",
            online=True,
            phase=Phase.SHADOW,
            active="minilm-v1",
            p95_ms=14.0,
            requests=500,
            errors=0,
            labels={"site": EVIL},
        ),
        _device(
            "gw-03",
            online=False,
            phase=Phase.DOWNLOADING,
            active="minilm-v1",
            p95_ms=30.0,
            requests=10,
            errors=1,
            labels={},
        ),
    ]
    spec = RolloutSpec(artifact_id="minilm-v2", waves=[10, 50, 100], soak_s=60)
    gates = [
        _gate(
            0,
            NOW - 300,
            True,
            install_success=1.0,
            p95_ratio=1.1,
            error_rate=0.001,
            shadow_agreement=0.999,
        ),
        _gate(
            1,
            NOW - 200,
            True,
            install_success=0.96,
            p95_ratio=1.2,
            error_rate=0.002,
            shadow_agreement=0.995,
        ),
        _gate(
            1,
            NOW - 100,
            True,
            install_success=0.98,
            p95_ratio=1.25,
            error_rate=0.003,
            shadow_agreement=0.996,
        ),
    ]
    running = RolloutInfo(
        rollout_id="r-minilm-2",
        spec=spec,
        state=RolloutState.RUNNING,
        wave=2,
        waves=[
            WaveInfo(
                index=0,
                percent=10,
                devices=1,
                started_at=NOW - 400,
                soak_until=NOW - 340,
                finished_at=NOW - 300,
            ),
            WaveInfo(
                index=1,
                percent=50,
                devices=1,
                started_at=NOW - 300,
                soak_until=NOW - 240,
                finished_at=NOW - 100,
            ),
            WaveInfo(index=2, percent=100, devices=1, started_at=NOW - 600, soak_until=NOW + 3000),
        ],
        gates=gates,
        created_at=NOW - 400,
        updated_at=NOW - 30,
    )
    aborted = RolloutInfo(
        rollout_id="r-minilm-bad",
        spec=spec,
        state=RolloutState.ABORTED,
        wave=0,
        waves=[
            WaveInfo(index=0, percent=10, devices=1, started_at=NOW - 5000, finished_at=NOW - 4900)
        ],
        gates=[
            _gate(
                0,
                NOW - 4900,
                False,
                install_success=1.0,
                p95_ratio=2.1,
                error_rate=0.0,
                shadow_agreement=1.0,
            )
        ],
        reason=f"gate failed: p95 ratio 2.10 > 1.50 {EVIL}",
        created_at=NOW - 5000,
        updated_at=NOW - 4900,
    )
    return {"devices": devices, "rollouts": [running, aborted]}


class Fleet:
    """What the fixture server answers; tests change it to watch the page follow."""

    def __init__(self) -> None:
        self.data = _fleet()

    def app(self) -> Starlette:
        def authorised(request: Request) -> bool:
            return request.headers.get("authorization") == f"Bearer {GOOD_TOKEN}"

        def refuse() -> JSONResponse:
            return JSONResponse({"error": "unknown operator token; pass a valid one"}, 401)

        async def summary(request: Request) -> JSONResponse:
            if not authorised(request):
                return refuse()
            return JSONResponse(summarize(self.data["devices"], self.data["rollouts"]))

        async def devices(request: Request) -> JSONResponse:
            if not authorised(request):
                return refuse()
            return JSONResponse([d.model_dump(mode="json") for d in self.data["devices"]])

        async def rollouts(request: Request) -> JSONResponse:
            if not authorised(request):
                return refuse()
            return JSONResponse([r.model_dump(mode="json") for r in self.data["rollouts"]])

        async def rollout(request: Request) -> JSONResponse:
            if not authorised(request):
                return refuse()
            for r in self.data["rollouts"]:
                if r.rollout_id == request.path_params["rollout_id"]:
                    return JSONResponse(r.model_dump(mode="json"))
            return JSONResponse({"error": "no such rollout"}, 404)

        return Starlette(
            routes=[
                Route("/v1/summary", summary),
                Route("/v1/devices", devices),
                Route("/v1/rollouts", rollouts),
                Route("/v1/rollouts/{rollout_id}", rollout),
                Mount("/dashboard", StaticFiles(directory=DASHBOARD, html=True)),
                Mount("/", StaticFiles(directory=DASHBOARD, html=True)),
            ]
        )


class ServerThread:
    def __init__(self, app: Starlette) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "fixture server did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- a minimal DevTools-protocol client -----------------------------------------------------


class Page:
    """One browser tab over its DevTools websocket."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=2**24, open_timeout=10)
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=15))
            if msg.get("id") == msg_id:
                assert "error" not in msg, msg["error"]
                return msg["result"]

    def eval(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"page never satisfied: {expression}")
            time.sleep(0.1)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('devices')")

    def enter_token(self, token: str) -> None:
        self.eval(
            f"document.getElementById('token-input').value = {json.dumps(token)};"
            "document.getElementById('token-form').requestSubmit(); true"
        )

    def close(self) -> None:
        self.ws.close()


class Browser:
    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.is_file() and active.read_text().strip()):
            assert self.proc.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium never opened its DevTools port"
            time.sleep(0.05)
        self.port = int(active.read_text().split()[0])

    def new_page(self) -> Page:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            target = json.load(resp)
        return Page(target["webSocketDebuggerUrl"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[Fleet, str]]:
    f = Fleet()
    with ServerThread(f.app()) as server:
        yield f, f"http://127.0.0.1:{server.port}"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    p = browser.new_page()  # a new tab: its own sessionStorage, so no token carries over
    yield p
    p.close()


def _rows(page: Page) -> list[list[str]]:
    return page.eval(
        "[...document.querySelectorAll('#devices tbody tr')]"
        ".map(tr => [...tr.cells].map(td => td.textContent))"
    )


# --- tests ----------------------------------------------------------------------------------


def test_devices_render_with_status_version_phase_and_health(
    page: Page, fleet: tuple[Fleet, str]
) -> None:
    _, url = fleet
    page.open(url + "/")
    assert page.eval("document.getElementById('devices').tBodies[0].rows.length") == 0
    page.enter_token(GOOD_TOKEN)
    page.wait_for("document.querySelectorAll('#devices tbody tr').length === 3")
    rows = {r[0]: r for r in _rows(page)}
    assert rows["gw-01"][1:6] == ["online", "minilm-v2", "committed", "12.5", "0.20 %"]
    assert rows["gw-02"][1:4] == ["online", "minilm-v1", "shadow"]
    assert rows["gw-03"][1:6] == ["offline", "minilm-v1", "downloading", "30.0", "10.00 %"]
    assert page.eval("document.getElementById('error-line').hidden") is True
    summary = page.eval(
        "Object.fromEntries([...document.querySelectorAll('#summary div')]"
        ".map(d => [d.dataset.key, d.querySelector('dd').textContent]))"
    )
    assert summary["devices.online"] == "2" and summary["devices.offline"] == "1"
    assert summary["version.minilm-v1"] == "1 online, 1 offline"
    assert summary["phase.shadow"] == "1" and summary["rollouts.active"] == "1"
    # The token lives in this tab's sessionStorage, not in localStorage.
    assert page.eval("sessionStorage.getItem('edgeshift.fleet.token')") == GOOD_TOKEN
    assert page.eval("localStorage.length") == 0


def test_html_from_the_server_stays_text(page: Page, fleet: tuple[Fleet, str]) -> None:
    _, url = fleet
    page.open(url + "/dashboard/")
    page.enter_token(GOOD_TOKEN)
    page.wait_for("document.querySelectorAll('#devices tbody tr').length === 3")
    labels = page.eval("document.querySelector('tr[data-device=\"gw-02\"] .labels').textContent")
    assert labels == f"site={EVIL}"
    assert page.eval("document.querySelectorAll('main img').length") == 0
    reason = page.eval(
        "document.querySelector('tr[data-rollout=\"r-minilm-bad\"]').cells[5].textContent"
    )
    assert EVIL in reason
    assert page.eval("window.__pwned === undefined") is True


def test_rollout_waves_and_one_plot_point_per_gate_evaluation(
    page: Page, fleet: tuple[Fleet, str]
) -> None:
    _, url = fleet
    page.open(url + "/")
    page.enter_token(GOOD_TOKEN)
    # The active rollout is shown by default (its last wave soaks for an hour from import).
    page.wait_for("document.getElementById('rollout-detail').dataset.rollout === 'r-minilm-2'")
    waves = page.eval(
        "[...document.querySelectorAll('#waves li')].map(li => [li.dataset.state,"
        " li.querySelector('.bar').dataset.percent])"
    )
    assert [w[0] for w in waves] == ["done", "done", "soaking"]
    assert waves[0][1] == waves[1][1] == "100"
    assert 0 < int(waves[2][1]) < 100
    states = page.eval(
        "[...document.querySelectorAll('#rollouts tbody tr')].map(tr => tr.cells[2].textContent)"
    )
    assert states == ["running", "aborted"]
    points = page.eval(
        "Object.fromEntries([...document.querySelectorAll('#plots figure')].map(f =>"
        " [f.dataset.metric, [f.querySelectorAll('circle.point').length,"
        "  f.querySelectorAll('line.threshold').length]]))"
    )
    assert points == {
        "install_success": [3, 1],
        "p95_ratio": [3, 1],
        "error_rate": [3, 1],
        "shadow_agreement": [3, 1],
    }
    # The threshold is dashed.
    dash = page.eval(
        "getComputedStyle(document.querySelector('#plots line.threshold')).strokeDasharray"
    )
    assert dash not in ("", "none")
    # Clicking the aborted rollout shows its failed gate.
    page.eval("document.querySelector('tr[data-rollout=\"r-minilm-bad\"]').click(); true")
    page.wait_for("document.getElementById('rollout-detail').dataset.rollout === 'r-minilm-bad'")
    page.wait_for("document.querySelectorAll('#waves li').length === 1")
    assert page.eval("document.querySelector('#waves li').dataset.state") == "gate failed"
    assert "p95 ratio 2.10 > 1.50" in page.eval(
        "document.querySelector('#waves .wave-gate.failed').textContent"
    )
    assert page.eval("document.querySelectorAll('#plots circle.point.failed').length") == 4


def test_page_refreshes_itself_when_a_gate_is_evaluated(
    page: Page, fleet: tuple[Fleet, str]
) -> None:
    f, url = fleet
    page.open(url + "/")
    page.enter_token(GOOD_TOKEN)
    count = "document.querySelectorAll('#plots figure[data-metric=\"p95_ratio\"] circle').length"
    page.wait_for(f"{count} === 3")
    running = f.data["rollouts"][0]
    extra = _gate(
        2,
        time.time(),
        True,
        install_success=1.0,
        p95_ratio=1.3,
        error_rate=0.0,
        shadow_agreement=1.0,
    )
    f.data["rollouts"][0] = running.model_copy(update={"gates": [*running.gates, extra]})
    try:
        page.wait_for(f"{count} === 4", timeout_s=10)  # auto-refresh is every 3 s
    finally:
        f.data["rollouts"][0] = running


def test_a_refused_token_shows_the_error_line_and_no_data(
    page: Page, fleet: tuple[Fleet, str]
) -> None:
    _, url = fleet
    page.open(url + "/")
    page.enter_token("wrong-token")
    line = page.wait_for(
        "!document.getElementById('error-line').hidden &&"
        " document.getElementById('error-line').textContent"
    )
    assert "token refused (401" in line and "unknown operator token" in line
    assert page.eval("document.querySelectorAll('#devices tbody tr').length") == 0


def test_a_server_that_goes_away_shows_the_error_line(page: Page) -> None:
    f = Fleet()
    server = ServerThread(f.app()).__enter__()
    try:
        page.open(f"http://127.0.0.1:{server.port}/")
        page.enter_token(GOOD_TOKEN)
        page.wait_for("document.querySelectorAll('#devices tbody tr').length === 3")
    finally:
        server.stop()
    line = page.wait_for(
        "!document.getElementById('error-line').hidden &&"
        " document.getElementById('error-line').textContent"
    )
    assert "control plane unreachable" in line
    # What was last seen stays on screen under the error line.
    assert page.eval("document.querySelectorAll('#devices tbody tr').length") == 3


# --- against the real control plane ---------------------------------------------------------


@pytest.fixture(scope="module")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FleetServerThread, str]]:

    root = tmp_path_factory.mktemp("fleet")
    settings = FleetSettings(data_dir=root / "data", port=0, tick_s=0.2, recheck_s=0.2)
    with FleetServerThread(settings) as fleet:
        reporting = enrol_device(fleet, "edge-a", {"site": "plant-a"})
        enrol_device(fleet, "edge-b", {"site": EVIL})
        with OperatorClient(fleet.url, fleet.operator_token) as operator:
            info = publish(operator, root, "tiny", 1)
            rollout = operator.create_rollout(
                RolloutSpec(artifact_id=info.ref.artifact_id, waves=[50, 100], soak_s=600)
            )
        report = DeviceReport(
            generation=0,
            phase=Phase.IDLE,
            active="tiny-v0",
            stats=ServingStats(requests=200, errors=1, p95_ms=8.25),
            sent_at=time.time(),
        )

        with httpx.Client(base_url=fleet.url) as http:
            answer = signed(
                http, reporting, "POST", "/v1/device/report", json=report.model_dump(mode="json")
            )
            assert answer.status_code == 200, answer.text
        yield fleet, rollout.rollout_id


def test_served_by_the_control_plane_with_its_real_answers(
    page: Page, control_plane: tuple[FleetServerThread, str]
) -> None:
    fleet, rollout_id = control_plane
    page.open(fleet.url + "/dashboard/")
    page.enter_token(fleet.operator_token)
    page.wait_for("document.querySelectorAll('#devices tbody tr').length === 2")
    rows = {r[0]: r for r in _rows(page)}
    assert rows["edge-a"][1:6] == ["online", "tiny-v0", "idle", "8.3", "0.50 %"]
    assert rows["edge-b"][6] == f"site={EVIL}"
    assert page.eval("window.__pwned === undefined") is True
    page.wait_for(f"document.getElementById('rollout-detail').dataset.rollout === '{rollout_id}'")
    assert page.eval("document.querySelectorAll('#plots figure').length") == 4
    assert page.eval("document.getElementById('error-line').hidden") is True


def test_the_control_plane_refuses_a_wrong_token_and_the_page_says_so(
    page: Page, control_plane: tuple[FleetServerThread, str]
) -> None:
    fleet, _ = control_plane
    page.open(fleet.url + "/")
    page.enter_token("not-the-operator-token")
    line = page.wait_for(
        "!document.getElementById('error-line').hidden &&"
        " document.getElementById('error-line').textContent"
    )
    assert line.startswith("token refused (401")
    assert page.eval("document.querySelectorAll('#devices tbody tr').length") == 0
