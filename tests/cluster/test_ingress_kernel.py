"""KernelIngress (the kernel's NAT, set by the real iptables) in front of real `edgeshift serve`
processes on 127.0.0.1: connections spread over the replicas, a killed replica out of rotation
with nothing hung, removal under load, the 503 when no replica is up, the rules it leaves
behind (none), and one clear error for each thing it cannot do. Needs root (CI runs as root)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
from tests.cluster.test_ingress import Load, Replica, X, _infer_body
from tests.serve.serve_models import exchange, mlp_reference, save_mlp, wait_until

from edgeshift.cluster.ingress_kernel import (
    IPTABLES,
    KernelIngress,
    KernelIngressError,
    chain_name,
    check_kernel_ingress,
    jump_rules,
    nat_rules,
)
from edgeshift.serve import InferenceServer, ServeOptions, ServerSettings

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(IPTABLES, os.X_OK),
    reason="changes the nat table: needs root and iptables (CI has both)",
)


def nat_table() -> str:
    return subprocess.run(
        [IPTABLES, "-w", "-t", "nat", "-S"], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def kernel(replicas: list[Replica]) -> Iterator[KernelIngress]:
    with KernelIngress() as front:
        front.start([r.endpoint for r in replicas])
        yield front


# -- pure: the rules ----------------------------------------------------------------------


def test_nat_rules_pick_each_replica_with_equal_chance() -> None:
    text = nat_rules("EDGESHIFT-8000", [("10.0.0.1", 9001), ("10.0.0.2", 9002), ("10.0.0.3", 9)])
    rules = [line for line in text.splitlines() if line.startswith("-A")]
    assert text.startswith("*nat\n:EDGESHIFT-8000 - [0:0]\n") and text.endswith("COMMIT\n")
    # kube-proxy's layout: 1/3, then 1/2 of the rest, then the rest: 1/3 each.
    assert "--probability 0.33333333" in rules[0] and "10.0.0.1:9001" in rules[0]
    assert "--probability 0.50000000" in rules[1] and "10.0.0.2:9002" in rules[1]
    assert "statistic" not in rules[2] and rules[2].endswith("--to-destination 10.0.0.3:9")
    assert nat_rules("C", []) == "*nat\n:C - [0:0]\nCOMMIT\n"  # nothing up: the 503 listener


def test_jump_rules_take_local_and_remote_clients() -> None:
    local = jump_rules("C", "127.0.0.1", 8000)
    assert [r[0] for r in local] == ["OUTPUT", "POSTROUTING"]  # loopback: no PREROUTING
    assert "127.0.0.1/32" in local[0] and local[0][-2:] == ["-j", "C"]
    every = jump_rules("C", "0.0.0.0", 8000)
    assert [r[0] for r in every] == ["OUTPUT", "PREROUTING", "POSTROUTING"]
    assert "LOCAL" in every[1] and "MASQUERADE" in every[2] and "8000" in every[2]


# -- errors ---------------------------------------------------------------------------------


def test_ipv6_and_names_are_refused_with_the_fix() -> None:
    with pytest.raises(KernelIngressError, match="IPv4 only.*--ingress-mode http"):
        KernelIngress("::1")
    with pytest.raises(KernelIngressError, match="not an IP address"):
        KernelIngress("localhost")


def test_without_the_right_to_change_the_nat_table_it_says_so(tmp_path: Path) -> None:
    fake = tmp_path / "iptables"
    fake.write_text(
        "#!/bin/sh\necho 'iptables: Permission denied (you must be root).' >&2\nexit 4\n"
    )
    fake.chmod(0o755)
    with pytest.raises(
        KernelIngressError, match="needs root.*Permission denied|Permission denied.*needs root"
    ):
        check_kernel_ingress(str(fake), str(fake))
    with pytest.raises(KernelIngressError, match="apt-get install iptables"):
        check_kernel_ingress(str(tmp_path / "missing"), str(fake))


@needs_root
def test_a_taken_port_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(KernelIngressError, match="is the port free"):
            KernelIngress(port=port).start([])
    assert chain_name(port) not in nat_table()


# -- real servers ---------------------------------------------------------------------------


@needs_root
def test_connections_spread_and_answers_are_the_single_servers(
    kernel: KernelIngress, replicas: list[Replica]
) -> None:
    before = [r.requests_answered() for r in replicas]
    for _ in range(24):  # a new connection each: each one is balanced once
        client = th.InferenceServerClient(kernel.url)
        inp = th.InferInput("x", [1, 8], "FP32")
        inp.set_data_from_numpy(X)
        np.testing.assert_allclose(
            client.infer("mlp", [inp]).as_numpy("y"), mlp_reference(X, seed=3), rtol=1e-5
        )
        client.close()
    served = [r.requests_answered() - b for r, b in zip(replicas, before, strict=True)]
    # 24 fair coin flips all landing on one side: 2 * 0.5**24, about 1e-7.
    assert sum(served) == 24 and min(served) > 0, served
    assert kernel.server_states() == {"replica-0": "UP", "replica-1": "UP"}
    assert chain_name(kernel.port) in nat_table()


@needs_root
def test_a_killed_replica_is_out_at_once_and_nothing_hangs(
    kernel: KernelIngress, replicas: list[Replica]
) -> None:
    victim, survivor = replicas
    clients = 8
    with Load(kernel.url, clients=clients) as load:
        load.wait_for(300)
        assert victim.requests_answered() > 0
        victim.kill()
        wait_until(lambda: kernel.server_states()["replica-0"] == "DOWN", "never DOWN", 5)
        settled = len(load.answers)
        load.wait_for(300)
    # No retries at L4: the requests in flight on the victim fail with their connection, and
    # so may a reconnection made before the rule changed (milliseconds); never a hang, never
    # an error answer, and after it every request is answered by the survivor.
    assert not [a for a in load.answers if a[0] == 0], "a request hung"
    failures = load.failures()
    assert len(failures) <= 2 * clients and all(s == -1 for s, _ in failures), failures
    assert all(status == 200 for status, _ in load.answers[settled + clients :])
    assert survivor.requests_answered() > 0
    table = nat_table()
    assert f"127.0.0.1:{survivor.endpoint.port}" in table
    assert f"127.0.0.1:{victim.endpoint.port}" not in table


@needs_root
def test_removed_replica_takes_no_new_connection_and_nothing_up_is_a_503(
    kernel: KernelIngress, replicas: list[Replica]
) -> None:
    old, kept = replicas
    kernel.update([kept.endpoint])
    assert set(kernel.server_states()) == {"replica-1"}
    before = old.requests_answered()
    for _ in range(10):
        status, _, _ = exchange(kernel.url, "POST", "/v2/models/mlp/infer", _infer_body())
        assert status == 200
    assert old.requests_answered() == before
    kernel.update([])
    status, headers, body = exchange(kernel.url, "POST", "/v2/models/mlp/infer", _infer_body())
    assert status == 503 and headers["content-type"] == "application/json"
    assert "no replica is up" in json.loads(body)["error"]
    kernel.update([old.endpoint])  # back: the next connection is the replica's
    status, _, _ = exchange(kernel.url, "POST", "/v2/models/mlp/infer", _infer_body())
    assert status == 200


@needs_root
def test_stop_leaves_no_rule_behind(replicas: list[Replica]) -> None:
    front = KernelIngress(grpc_port=None)
    front.start([replicas[0].endpoint])
    port = front.port
    assert chain_name(port) in nat_table()
    front.stop()
    assert chain_name(port) not in nat_table()
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/")


@needs_root
def test_a_replica_that_comes_back_is_checked_back_in(
    kernel: KernelIngress,
    replicas: list[Replica],
    models: tuple[Path, Path],
) -> None:
    victim, _ = replicas
    victim.kill()
    wait_until(lambda: kernel.server_states()["replica-0"] == "DOWN", "never DOWN", 5)
    # A new process on the same port (a restarted replica) passes its check and is back.
    again = Replica("replica-0", models[0])
    try:
        kernel.update([again.endpoint, replicas[1].endpoint])
        wait_until(lambda: kernel.server_states()["replica-0"] == "UP", "never back UP", 10)
    finally:
        again.stop()


# -- the replica's side: draining its connections -------------------------------------------


def test_draining_closes_each_connection_after_its_next_answer(tmp_path: Path) -> None:
    model = save_mlp(tmp_path / "mlp.onnx", seed=3)
    server = InferenceServer(
        ServerSettings(paths=[str(model)], host="127.0.0.1", port=0, options=ServeOptions())
    )
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def main() -> None:
        await server.start()
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        started.set()
        await task

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert started.wait(60)
    try:
        fast = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # infer: fast path
        slow = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # the ASGI app
        for conn, method, path, body in (
            (fast, "POST", "/v2/models/mlp/infer", _infer_body()),
            (slow, "GET", "/v2/health/ready", None),
        ):
            conn.request(method, path, body=body)
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200 and not answer.will_close
        drained = asyncio.run_coroutine_threadsafe(server.drain_connections(10.0), loop)
        for conn, method, path, body in (
            (fast, "POST", "/v2/models/mlp/infer", _infer_body()),
            (slow, "GET", "/v2/health/ready", None),
        ):
            conn.request(method, path, body=body)
            answer = conn.getresponse()
            payload = answer.read()
            # Answered (never cut off), and told to go: the client's next request opens a
            # new connection, which an L4 ingress sends to another replica.
            assert answer.status == 200 and answer.getheader("connection") == "close"
            assert answer.will_close, payload
            if path.endswith("infer"):
                y = json.loads(payload)["outputs"][0]["data"]
                np.testing.assert_allclose(
                    np.asarray(y, np.float32).reshape(1, -1), mlp_reference(X, seed=3), rtol=1e-5
                )
        assert drained.result(15) == 0  # both closed after their answer: nothing left
    finally:
        loop.call_soon_threadsafe(server.request_exit)
        thread.join(30)


@needs_root
def test_the_503_listener_serves_a_bounded_number_of_connections_at_once() -> None:
    front = KernelIngress()
    front.fallback_max_connections = 4
    front.start([])
    idle = []
    try:
        for _ in range(4):  # hold every slot: connected, sending nothing
            idle.append(socket.create_connection(("127.0.0.1", front.port), timeout=5))
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", front.port), timeout=5)
        assert extra.recv(1024) == b""  # beyond the bound: closed unanswered, no thread made
        extra.close()
        for sock in idle:
            sock.close()
        time.sleep(0.2)  # the handlers see their clients gone and free the slots
        status, _, body = exchange(front.url, "GET", "/v2/health/ready")
        assert status == 503 and "no replica is up" in json.loads(body)["error"]
    finally:
        front.stop()


_INGRESS_SCRIPT = """
import sys
from edgeshift.cluster.ingress_config import ReplicaEndpoint
from edgeshift.cluster.ingress_kernel import KernelIngress

with KernelIngress("0.0.0.0", 18000) as front:
    front.start([ReplicaEndpoint("far", "node-2", sys.argv[1], int(sys.argv[2]), ("mlp",))])
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes it
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode,
    reason="network namespaces: needs root and iproute2 (CI has both)",
)
def test_a_replica_on_another_machine_serves_remote_and_local_clients(
    models: tuple[Path, Path],
) -> None:
    # Three machines on one LAN, each a network namespace: the ingress (10.77.0.1), a replica
    # (10.77.0.2) and a client (10.77.0.3). The client's connection to the ingress is
    # rewritten in PREROUTING, forwarded to the replica and masqueraded, so the answer comes
    # back through the ingress; a client on the ingress machine goes through OUTPUT.
    from tests.fleet.netns import NetLab

    with NetLab() as lab:
        for name in ("ing", "rep", "cli"):
            lab.add(name)
        for sysctl in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.route_localnet=1"):
            assert lab.run("ing", ["sysctl", "-qw", sysctl]).returncode == 0
        replica = lab.spawn(
            "rep",
            [sys.executable, "-m", "edgeshift", "serve", str(models[0]), "--host", "10.77.0.2",
             "--port", "18001", "--grpc-port", "off", "--no-access-log"],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        ingress = lab.spawn(
            "ing",
            [sys.executable, "-c", _INGRESS_SCRIPT, "10.77.0.2", "18001"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert ingress.stdout is not None and ingress.stdout.readline() == b"ready\n"

        def infer(node: str, host: str) -> tuple[int, bytes]:
            answer = lab.run(
                node,
                ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10",
                 "-X", "POST", "--data-binary", _infer_body().decode(),
                 f"http://{host}:18000/v2/models/mlp/infer"],
            )  # fmt: skip
            body, _, code = answer.stdout.rpartition("\n")
            return int(code or 0), body.encode()

        deadline = time.monotonic() + 60
        while (status := infer("cli", "10.77.0.1"))[0] != 200:  # the replica still loading
            assert time.monotonic() < deadline, f"never answered through the ingress: {status}"
            time.sleep(0.2)
        for node, host in (("cli", "10.77.0.1"), ("ing", "127.0.0.1")):
            status, body = infer(node, host)
            assert status == 200, (node, status, body)
            y = np.asarray(json.loads(body)["outputs"][0]["data"], np.float32).reshape(1, -1)
            np.testing.assert_allclose(y, mlp_reference(X, seed=3), rtol=1e-5)
        # The replica saw the ingress's address, not the client's (masqueraded): a replica
        # on another machine needs no route back to the clients.
        if Path("/proc/net/nf_conntrack").exists():  # the kernel's table, where it shows it
            table = lab.run("ing", ["cat", "/proc/net/nf_conntrack"]).stdout.splitlines()
            remote = [line for line in table if "src=10.77.0.3 dst=10.77.0.1 " in line]
            # (Connections made while the replica was still loading met the 503 listener.)
            assert any("dport=18000 src=10.77.0.2 dst=10.77.0.1 " in line for line in remote)
        replica.kill()  # `ip netns exec` execs the server: this is its pid
        deadline = time.monotonic() + 10
        while infer("cli", "10.77.0.1")[0] != 503:  # its check failed: the 503 listener answers
            assert time.monotonic() < deadline, "no 503 once the only replica was gone"
            time.sleep(0.1)
        assert ingress.stdin is not None
        ingress.stdin.close()
        assert ingress.wait(15) == 0
