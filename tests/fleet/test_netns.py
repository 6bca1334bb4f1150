"""The network-namespace harness itself: nodes talk over veth, a link taken down or an
iptables DROP partitions them, the proxy adds delay and cuts inside a namespace, and a lab
leaves nothing behind."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.netns import PREFIX, NetLab, sweep_stale, unavailable_reason

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


def _round_trip(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=2.0) as sock:
        sock.sendall(b"hello")
        return sock.recv(5)


def test_the_test_process_can_talk_from_inside_a_node(lab: NetLab) -> None:
    assert lab.call("d1", _round_trip, lab.nodes["cp"].ip, ECHO_PORT) == b"hello"
    # Only that thread moved: from the root namespace the lab's addresses do not exist.
    with pytest.raises(OSError):
        _round_trip(lab.nodes["cp"].ip, ECHO_PORT)


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
