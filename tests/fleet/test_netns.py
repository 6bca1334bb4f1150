"""The network-namespace harness itself: nodes talk over veth, a link taken down or an
iptables DROP partitions them, the proxy adds delay and cuts inside a namespace, and a lab
leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest

from edgeshift.fleet.bundle import pack
from edgeshift.fleet.client import OperatorClient
from edgeshift.fleet.schema import (
    DeviceInfo,
    EnrolmentTokenSpec,
    Gates,
    Phase,
    RolloutInfo,
    RolloutSpec,
    RolloutState,
)
from tests.fleet.agent_helpers import classifier_weights, make_artifact
from tests.fleet.netns import PREFIX, NetLab, sweep_stale, unavailable_reason

_T = TypeVar("_T")

_REASON = unavailable_reason()
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

PY = sys.executable
ECHO_PORT = 9000
# An echo server: the peer every reachability check talks to.
ECHO = """
import socket, sys, threading
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
def echo(c):
    with c:
        while d := c.recv(65536):
            c.sendall(d)
while True:
    threading.Thread(target=echo, args=(srv.accept()[0],), daemon=True).start()
"""
# A client: one round trip, then (with "hold") wait for the connection to end.
CLIENT = """
import socket, sys, time
host, port, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "hold"
try:
    s = socket.create_connection((host, port), timeout=1.0)
    t = time.monotonic(); s.sendall(b"ping"); got = s.recv(4)
    print("ok" if got == b"ping" else "bad", time.monotonic() - t, flush=True)
except OSError as err:
    print("fail", type(err).__name__, flush=True); sys.exit(1)
if hold:
    s.settimeout(20)
    try:
        print("closed" if s.recv(1) == b"" else "data", flush=True)
    except OSError as err:
        print("reset", type(err).__name__, flush=True)
"""


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[NetLab]:
    sweep_stale()
    net = NetLab()
    request.addfinalizer(net.close)  # runs even when the test (or the setup below) fails
    for name in ("cp", "d1", "d2"):
        net.add(name)
    server = net.spawn("cp", [PY, "-c", ECHO, str(ECHO_PORT)], stdout=subprocess.PIPE)
    assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
    yield net


def _reaches(lab: NetLab, node: str, peer: str, port: int = ECHO_PORT) -> bool:
    out = lab.run(node, [PY, "-c", CLIENT, lab.nodes[peer].ip, str(port), "once"])
    return out.stdout.startswith("ok")


def test_nodes_talk_over_veth_with_their_own_addresses(lab: NetLab) -> None:
    assert [n.ip for n in lab.nodes.values()] == ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
    assert _reaches(lab, "d1", "cp")
    assert _reaches(lab, "d2", "cp")
    addr = lab.run("d1", ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert "10.77.0.2/24" in addr


def _round_trip(host: str, port: int, timeout_s: float = 2.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(b"hello")
        return sock.recv(5)


def test_the_test_process_can_talk_from_inside_a_node(lab: NetLab) -> None:
    assert lab.call("d1", _round_trip, lab.nodes["cp"].ip, ECHO_PORT) == b"hello"
    # Only that thread moved: from the root namespace the lab's addresses do not exist.
    with pytest.raises(OSError):
        _round_trip(lab.nodes["cp"].ip, ECHO_PORT, timeout_s=0.3)


def test_link_down_partitions_one_node_and_link_up_heals_it(lab: NetLab) -> None:
    lab.link_down("d1")
    assert not _reaches(lab, "d1", "cp")
    assert _reaches(lab, "d2", "cp")
    lab.link_up("d1")
    assert _reaches(lab, "d1", "cp")


def test_iptables_drop_between_two_nodes_only(lab: NetLab) -> None:
    lab.drop("cp", "d1")
    assert not _reaches(lab, "d1", "cp")
    assert _reaches(lab, "d2", "cp")
    lab.accept("cp", "d1")
    assert _reaches(lab, "d1", "cp")


def test_proxy_in_a_namespace_delays_and_cuts(lab: NetLab) -> None:
    proxy = lab.spawn(
        "cp",
        [
            PY,
            "-m",
            "edgeshift.fleet.netproxy",
            "--listen",
            "0.0.0.0:9001",
            "--upstream",
            f"127.0.0.1:{ECHO_PORT}",
            "--delay-s",
            "0.3",
        ],
        stdout=subprocess.PIPE,
    )
    assert proxy.stdout is not None and proxy.stdout.readline().split() == [b"listening", b"9001"]
    client = lab.spawn(
        "d1",
        [PY, "-c", CLIENT, lab.nodes["cp"].ip, "9001", "hold"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    status, elapsed_s = client.stdout.readline().split()
    assert status == "ok"
    assert float(elapsed_s) >= 0.6  # 0.3 s each way: a lower bound, never flaky
    proxy.send_signal(signal.SIGUSR1)  # cut every open connection
    assert client.stdout.readline().split()[0] in ("reset", "closed")
    assert client.wait(10) == 0


def test_close_leaves_nothing_behind() -> None:
    net = NetLab()
    try:
        net.add("cp")
        sleeper = net.spawn("cp", ["sleep", "60"])
        assert len(net.namespaces()) == 2  # the lan and cp
    finally:
        net.close()
    assert net.namespaces() == []
    assert sleeper.poll() is not None
    net.close()  # twice is fine


def test_sweep_removes_labs_of_dead_processes() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    stale = f"{PREFIX}{pid_max + 1}x1-lan"  # no live process can have that pid
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in sweep_stale()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, check=False)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert stale not in listed


# --- the real control plane and agents, each in its own namespace ------------------------------

EDGESHIFT = str(Path(PY).parent / "edgeshift")
CP_PORT = 8600
PROXY_PORT = 8601  # d4 reaches the control plane only through a netproxy (delay, cuts)
PROXY_DELAY_S = 0.05
MODEL = "clf"
# The agent process as `edgeshift agent` runs it, with the loop's intervals shortened so a
# partition plays out in seconds (the CLI has no flags for them).
AGENT = """
import asyncio, json, logging, sys
from pathlib import Path
from edgeshift.fleet.agent.agent import AgentOptions
from edgeshift.fleet.agent.process import AgentSettings, run
server, data_dir, token, root, name, label = sys.argv[1:7]
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
key, value = label.split("=")
options = AgentOptions(poll_wait_s=5.0, backoff_min_s=0.2, backoff_max_s=1.0,
                       report_interval_s=1.0, retry_failed_s=2.0)
settings = AgentSettings(server_url=server, data_dir=Path(data_dir), enrol_token=token,
                         root=Path(root), name=name, labels={key: value}, port=8000,
                         options=options)
asyncio.run(run(settings, lambda info: print(json.dumps(info), flush=True)))
"""
FAST = Gates(max_p95_ratio=None, max_error_rate=None, min_shadow_agreement=None)


def _until(what: str, check: Callable[[], _T | None], timeout_s: float = 25.0) -> _T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


@dataclass
class Fleet:
    lab: NetLab
    root: Path
    token: str
    agents: dict[str, Path]  # device -> its data dir
    v1: str = ""
    v2: str = ""
    proxy: subprocess.Popen[bytes] | None = None
    logs: Path = Path()

    @property
    def url(self) -> str:
        return f"http://{self.lab.nodes['cp'].ip}:{CP_PORT}"

    def operator(self, fn: Callable[[OperatorClient], _T]) -> _T:
        def call() -> _T:
            with OperatorClient(self.url, self.token) as client:
                return fn(client)

        return self.lab.call("cp", call)

    def device(self, name: str) -> DeviceInfo:
        return self.operator(lambda c: c.get_device(name))

    def serving(self, name: str, artifact_id: str, phase: Phase = Phase.COMMITTED) -> bool:
        report = self.device(name).reported
        return report is not None and report.active == artifact_id and report.phase == phase

    def infer(self, name: str, x: list[float]) -> list[float]:
        """One local request to NAME's model, from inside NAME (what a local app does)."""

        def call() -> list[float]:
            body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x}]}
            answer = httpx.post(
                f"http://127.0.0.1:8000/v2/models/{MODEL}/infer", json=body, timeout=5
            )
            assert answer.status_code == 200, answer.text
            return [float(v) for v in answer.json()["outputs"][0]["data"]]

        return self.lab.call(name, call)

    def publish(self, version: int, seed: int, padding_bytes: int = 0) -> str:
        src = make_artifact(self.root / f"src-{version}", seed=seed, name=MODEL)
        if padding_bytes:
            (src / "padding.bin").write_bytes(os.urandom(padding_bytes))
        tar = self.root / f"{MODEL}-{version}.tar"
        pack(src, tar)
        return self.operator(lambda c: c.publish_artifact(tar, MODEL, version)).ref.artifact_id

    def roll_out(self, artifact_id: str, **spec: Any) -> str:
        full = RolloutSpec(
            artifact_id=artifact_id,
            **{
                "waves": [100],
                "soak_s": 0,
                "shadow_s": 0,
                "shadow_min_requests": 0,
                "trial_s": 0,
                "install_timeout_s": 20,
                "gates": FAST,
                **spec,
            },
        )
        return self.operator(lambda c: c.create_rollout(full)).rollout_id

    def rollout(self, rollout_id: str) -> RolloutInfo:
        return self.operator(lambda c: c.get_rollout(rollout_id))


def _expected(seed: int, x: list[float]) -> list[float]:
    out: list[float] = (np.asarray([x], np.float32) @ classifier_weights(seed))[0].tolist()
    return out


def _journal_phase(data_dir: Path) -> str:
    return str(json.loads((data_dir / "journal.json").read_text())["phase"])


def _part_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "downloads").glob("*.part"))


def _spooled(data_dir: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (data_dir / "spool").glob("*.jsonl"))


def _telemetry_rows(fleet: Fleet, device: str) -> int:
    db = fleet.root / "cp" / "fleet.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry WHERE device_id = ?", (device,))
        return int(row.fetchone()[0])


def _close(a: list[float], b: list[float]) -> bool:
    return bool(np.allclose(a, b, rtol=1e-5, atol=1e-5))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    sweep_stale()
    root = tmp_path_factory.mktemp("netns-fleet")
    lab = NetLab()
    try:
        for name in ("cp", "d1", "d2", "d3", "d4"):
            lab.add(name)
        logs = root / "logs"
        logs.mkdir()
        cp = lab.spawn(
            "cp",
            [
                EDGESHIFT,
                "fleet",
                "serve",
                "--host",
                "0.0.0.0",
                "--port",
                str(CP_PORT),
                "--data-dir",
                str(root / "cp"),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=(logs / "cp.log").open("wb"),
        )
        assert cp.stdout is not None
        ready = json.loads(cp.stdout.readline() or b"{}")
        assert "url" in ready, (logs / "cp.log").read_text()[-2000:]
        token = (root / "cp" / "operator.token").read_text().strip().partition(":")[2]
        fleet = Fleet(lab, root, token, {}, logs=logs)
        (root / "root.json").write_bytes(fleet.operator(lambda c: c.root_json()))
        fleet.proxy = lab.spawn(
            "cp",
            [
                PY,
                "-m",
                "edgeshift.fleet.netproxy",
                "--listen",
                f"0.0.0.0:{PROXY_PORT}",
                "--upstream",
                f"127.0.0.1:{CP_PORT}",
                "--delay-s",
                str(PROXY_DELAY_S),
            ],
            stdout=subprocess.PIPE,
        )
        assert fleet.proxy.stdout is not None and fleet.proxy.stdout.readline().startswith(
            b"listening"
        )
        proxied = f"http://{lab.nodes['cp'].ip}:{PROXY_PORT}"
        agents = []
        for name, pool in (("d1", "a"), ("d2", "b"), ("d3", "b"), ("d4", "c")):
            enrol = fleet.operator(lambda c: c.create_enrolment_token(EnrolmentTokenSpec()))
            data_dir = root / name
            fleet.agents[name] = data_dir
            agents.append(
                lab.spawn(
                    name,
                    [
                        PY,
                        "-c",
                        AGENT,
                        proxied if name == "d4" else fleet.url,
                        str(data_dir),
                        enrol.token,
                        str(root / "root.json"),
                        name,
                        f"pool={pool}",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=(logs / f"{name}.log").open("wb"),
                )
            )
        for name, agent in zip(("d1", "d2", "d3", "d4"), agents, strict=True):
            assert agent.stdout is not None
            line = agent.stdout.readline()
            assert line, (logs / f"{name}.log").read_text()[-2000:]
            assert json.loads(line)["device_id"] == name
        v1 = fleet.v1 = fleet.publish(1, seed=0)
        # v2 answers differently (other weights) and is big enough to cut mid-download.
        fleet.v2 = fleet.publish(2, seed=1, padding_bytes=3_000_000)
        done = fleet.roll_out(v1)
        _until("v1 everywhere", lambda: all(fleet.serving(d, v1) for d in fleet.agents))
        _until(
            "the v1 rollout completed", lambda: fleet.rollout(done).state == RolloutState.COMPLETED
        )
        yield fleet
    finally:
        lab.close()


X = [0.5, -1.0, 2.0, 0.25]


@pytest.mark.slow
def test_a_device_cut_off_mid_download_serves_last_good_then_finishes(fleet: Fleet) -> None:
    lab, d1 = fleet.lab, fleet.agents["d1"]
    assert _close(fleet.infer("d1", X), _expected(0, X))
    lab.rate_limit("d1", "4mbit")  # 3 MB takes ~6 s: time to cut it mid-way
    try:
        rollout_id = fleet.roll_out(fleet.v2, selector={"pool": "a"})
        _until("d1 part-way", lambda: _part_bytes(d1) > 200_000, 15)
        lab.link_down("d1")
        cut_at = time.monotonic()
        answers = 0
        while time.monotonic() - cut_at < 4.0:  # the partition lasts a while
            assert _close(fleet.infer("d1", X), _expected(0, X))  # last-good answers locally
            answers += 1
            time.sleep(0.1)
        assert _journal_phase(d1) == "downloading"  # still cut off mid-way
        assert 200_000 < _part_bytes(d1) < 3_000_000
        lab.link_up("d1")
        _until("d1 on v2", lambda: fleet.serving("d1", fleet.v2))
    finally:
        lab.link_up("d1")
        lab.rate_limit("d1", None)
    assert answers >= 10
    assert _close(fleet.infer("d1", X), _expected(1, X))
    _until(
        "the rollout completed", lambda: fleet.rollout(rollout_id).state == RolloutState.COMPLETED
    )
    assert fleet.serving("d2", fleet.v1) and fleet.serving("d3", fleet.v1)  # not selected


@pytest.mark.slow
def test_a_device_partitioned_through_its_wave_counts_as_not_reporting(fleet: Fleet) -> None:
    lab = fleet.lab
    lab.link_down("d3")
    try:
        # pool b is d2 and d3; d3 is unplugged for the whole wave.
        rollout_id = fleet.roll_out(fleet.v2, selector={"pool": "b"}, install_timeout_s=4)
        info = _until(
            "the wave's gate",
            lambda: (
                (r := fleet.rollout(rollout_id)).state
                in (RolloutState.ABORTED, RolloutState.COMPLETED)
                and r
            ),
        )
        assert info.state == RolloutState.ABORTED, info
        gate = info.gates[-1]
        assert not gate.passed and gate.devices == 2 and gate.reporting < 2, gate
        assert any("install" in f for f in gate.failures), gate.failures
        # Rolled back automatically: d2 (which installed v2) serves v1 again.
        _until("d2 back on v1", lambda: fleet.serving("d2", fleet.v1))
        assert _close(fleet.infer("d2", X), _expected(0, X))
        # d3 served v1 locally all along.
        assert _close(fleet.infer("d3", X), _expected(0, X))
    finally:
        lab.link_up("d3")
    # Back on the link, d3 reports in and is where the fleet wants it: v1, nothing stuck.
    _until(
        "d3 reporting v1 again", lambda: fleet.device("d3").online and fleet.serving("d3", fleet.v1)
    )


@pytest.mark.slow
def test_telemetry_spooled_while_the_control_plane_is_dropped_is_sent_after(
    fleet: Fleet,
) -> None:
    lab, d2 = fleet.lab, fleet.agents["d2"]
    lab.drop("cp", "d2")
    try:
        for _ in range(20):
            fleet.infer("d2", X)
        spooled = _until("records in d2's spool", lambda: _spooled(d2), 10)
        rows = _telemetry_rows(fleet, "d2")
        time.sleep(2.0)  # two report intervals: nothing gets through a DROP
        assert _telemetry_rows(fleet, "d2") == rows
        assert _spooled(d2) >= spooled
    finally:
        lab.accept("cp", "d2")
    _until("d2's spool sent", lambda: _telemetry_rows(fleet, "d2") >= rows + spooled, 25)
    _until("d2's spool empty", lambda: _spooled(d2) == 0 or None, 10)


@pytest.mark.slow
def test_a_connection_cut_mid_download_resumes_with_a_range_request(fleet: Fleet) -> None:
    # d4 talks to the control plane through the proxy (PROXY_DELAY_S each way); the proxy
    # resets every connection mid-download, as a flaky uplink does.
    lab, d4, log = fleet.lab, fleet.agents["d4"], fleet.logs / "d4.log"
    assert fleet.proxy is not None
    lab.rate_limit("d4", "4mbit")
    try:
        rollout_id = fleet.roll_out(fleet.v2, selector={"pool": "c"})
        part = _until(
            "d4 part-way",
            lambda: next(
                (p for p in (d4 / "downloads").glob("*.part") if p.stat().st_size > 500_000), None
            ),
            15,
        )
        assert _journal_phase(d4) == "downloading"
        fleet.proxy.send_signal(signal.SIGUSR1)  # cut
        assert _close(fleet.infer("d4", X), _expected(0, X))  # last-good, meanwhile
        _until("d4 on v2", lambda: fleet.serving("d4", fleet.v2))
    finally:
        lab.rate_limit("d4", None)
    assert not part.exists()  # verified and unpacked: the partial file is gone
    # The retry asked for the rest only, and got it.
    assert "206 Partial Content" in log.read_text()
    assert _close(fleet.infer("d4", X), _expected(1, X))
    _until(
        "the rollout completed", lambda: fleet.rollout(rollout_id).state == RolloutState.COMPLETED
    )
