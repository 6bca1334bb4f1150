"""HaproxyIngress (the real /usr/sbin/haproxy) in front of real `edgeshift serve` processes on
127.0.0.1: routing by model, a replica killed or hung under load, servers added and removed
through the runtime API under load, and the config HAProxy itself accepts or refuses."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest
import tritonclient.http as th
from tests.serve.serve_models import ServeProcess, exchange, mlp_reference

from edgeshift.cluster.ingress import (
    HAPROXY_BINARY,
    HaproxyIngress,
    ReplicaEndpoint,
    haproxy_config,
    map_file_text,
    server_names,
)
from edgeshift.errors import ConfigError

pytestmark = pytest.mark.skipif(
    not os.access(HAPROXY_BINARY, os.X_OK), reason="needs HAProxy (apt-get install haproxy)"
)


class Replica:
    """`python -m edgeshift serve PATHS --port 0`: a replica that can be killed for real."""

    def __init__(self, replica_id: str, *paths: Path) -> None:
        server = ServeProcess(*map(str, paths), "--no-access-log")
        self.proc = server.proc
        host, port = server.url.rsplit(":", 1)
        models = tuple(p.stem for p in paths)
        self.endpoint = ReplicaEndpoint(replica_id, "node-1", host, int(port), models)

    def requests_answered(self) -> float:
        status, _, body = exchange(self.endpoint.address, "GET", "/metrics")
        assert status == 200
        prefix = "edgeshift_inference_requests_total{"
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.decode().splitlines()
            if line.startswith(prefix)
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(30)


X = np.arange(8, dtype=np.float32).reshape(1, 8) / 8


def _infer_body(model: str = "mlp") -> bytes:
    del model
    return json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": X.ravel().tolist()}]}
    ).encode()


class ClosedLoop:
    """CLIENTS threads each running ``_client`` until the block ends; they append to
    ``answers`` (HTTP here, gRPC in test_ingress_grpc)."""

    answers: list[Any]

    def __init__(self, clients: int) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, answers: int) -> None:
        deadline = time.monotonic() + 60
        target = len(self.answers) + answers
        while len(self.answers) < target:
            assert time.monotonic() < deadline, "the load stalled"
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


class Load(ClosedLoop):
    """Closed-loop clients on keep-alive connections to URL, each answer kept as
    (status, body); a request unanswered after 10 s is recorded as status 0 (a hang)."""

    def __init__(self, url: str, clients: int = 4, model: str = "mlp") -> None:
        self.url, self.model = url, model
        self.answers: list[tuple[int, bytes]] = []
        super().__init__(clients)

    def _client(self) -> None:
        host, port = self.url.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        body = _infer_body(self.model)
        while not self._stop.is_set():
            try:
                conn.request("POST", f"/v2/models/{self.model}/infer", body=body)
                response = conn.getresponse()
                self.answers.append((response.status, response.read()))
            except TimeoutError:
                self.answers.append((0, b"hang"))
                conn.close()
            except (OSError, http.client.HTTPException) as exc:
                self.answers.append((-1, repr(exc).encode()))
                conn.close()

    def failures(self) -> list[tuple[int, bytes]]:
        return [(status, body) for status, body in self.answers if status != 200]


def wait_for_state(ingress: HaproxyIngress, replica_id: str, state: str) -> None:
    deadline = time.monotonic() + 30
    while ingress.server_states().get(replica_id) != state:
        assert time.monotonic() < deadline, f"{replica_id} never {state}"
        time.sleep(0.01)


@pytest.fixture
def ingress(replicas: list[Replica]) -> Iterator[HaproxyIngress]:
    with HaproxyIngress() as front:
        front.start([r.endpoint for r in replicas])
        for replica in replicas:
            wait_for_state(front, replica.endpoint.replica_id, "UP")
        yield front


def test_requests_reach_every_replica_with_the_single_server_api(
    ingress: HaproxyIngress, replicas: list[Replica]
) -> None:
    client = th.InferenceServerClient(ingress.url)
    inp = th.InferInput("x", [1, 8], "FP32")
    inp.set_data_from_numpy(X)
    before = [r.requests_answered() for r in replicas]
    for _ in range(20):
        result = client.infer("mlp", [inp])
        np.testing.assert_allclose(result.as_numpy("y"), mlp_reference(X, seed=3), rtol=1e-5)
    assert client.is_server_ready()
    assert client.get_model_metadata("mlp")["name"] == "mlp"
    client.close()
    served = [r.requests_answered() - b for r, b in zip(replicas, before, strict=True)]
    assert sum(served) == 20 and min(served) > 0, served
    status, _, body = exchange(ingress.url, "GET", "/v2/models/nope")
    assert status == 404 and "unknown model" in json.loads(body)["error"]  # the replica's answer


def test_a_killed_replica_leaves_rotation_and_nothing_hangs(
    ingress: HaproxyIngress, replicas: list[Replica]
) -> None:
    victim, survivor = replicas
    with Load(ingress.url) as load:
        load.wait_for(200)
        victim.kill()
        wait_for_state(ingress, victim.endpoint.replica_id, "DOWN")
        after_down = len(load.answers)
        load.wait_for(200)
    # Requests cut off by the death were retried on the survivor; anything that could not be
    # is a 503 with a JSON error, never a hang or a dropped connection.
    for status, body in load.failures():
        assert status == 503 and "error" in json.loads(body), (status, body)
    assert all(status == 200 for status, _ in load.answers[after_down + 4 :])
    assert survivor.requests_answered() > 0


def test_a_hung_replica_leaves_rotation_and_ends_its_requests_in_flight(
    ingress: HaproxyIngress, replicas: list[Replica]
) -> None:
    victim, _ = replicas
    clients = 4
    with Load(ingress.url, clients=clients) as load:
        load.wait_for(100)
        victim.kill(signal.SIGSTOP)  # accepts connections (the kernel does), answers nothing
        wait_for_state(ingress, victim.endpoint.replica_id, "DOWN")
        after_down = len(load.answers)
        load.wait_for(200)
    # Marked down, its requests in flight are ended at once: HAProxy closes their client
    # connections without an answer (it has none to give); nothing waits for a timeout.
    assert not [a for a in load.answers if a[0] == 0], "a request hung"
    failures = load.failures()
    assert len(failures) <= clients, failures
    for status, body in failures:
        assert status == -1 or (status == 503 and "retry" in json.loads(body)["error"]), body
    assert all(status == 200 for status, _ in load.answers[after_down + clients :])


def test_runtime_add_and_remove_under_load_drop_no_request(
    ingress: HaproxyIngress, replicas: list[Replica], models: tuple[Path, Path]
) -> None:
    old, kept = replicas
    new = Replica("replica-new", models[0])
    try:
        with Load(ingress.url) as load:
            load.wait_for(100)
            ingress.update([kept.endpoint, new.endpoint])  # add new, drain and delete old
            assert set(ingress.server_states()) == {"replica-1", "replica-new"}
            old_count = old.requests_answered()
            load.wait_for(300)
            assert old.requests_answered() == old_count  # out of rotation once update returned
            old.stop()  # safe now: nothing of the load is on it
            load.wait_for(100)
        assert load.failures() == []
        assert new.requests_answered() > 0
    finally:
        new.stop()


def test_a_new_model_reloads_haproxy_with_no_error_answer(
    ingress: HaproxyIngress, replicas: list[Replica], models: tuple[Path, Path]
) -> None:
    other = Replica("replica-other", models[1])
    clients = 4
    try:
        with Load(ingress.url, clients=clients) as load:
            load.wait_for(100)
            ingress.update([*(r.endpoint for r in replicas), other.endpoint])
            load.wait_for(200)
        # The old worker finishes every request it holds, then closes its idle keep-alive
        # connections: a client that sent on one at that instant sees it closed (at most one
        # per connection), never an error answer.
        failures = load.failures()
        assert len(failures) <= clients and all(status == -1 for status, _ in failures), failures
        wait_for_state(ingress, "replica-other", "UP")
        before = [r.requests_answered() for r in replicas]
        client = th.InferenceServerClient(ingress.url)
        for _ in range(6):  # only replica-other holds "other": the map routes it there
            inp = th.InferInput("x", [1, 8], "FP32")
            inp.set_data_from_numpy(X)
            y = client.infer("other", [inp]).as_numpy("y")
            np.testing.assert_allclose(y, mlp_reference(X, seed=4), rtol=1e-5)
        client.close()
        assert [r.requests_answered() for r in replicas] == before
    finally:
        other.stop()


def test_no_replica_up_is_a_503_with_a_json_error(replicas: list[Replica]) -> None:
    with HaproxyIngress() as front:
        front.start([])
        status, headers, body = exchange(front.url, "POST", "/v2/models/mlp/infer", _infer_body())
        assert status == 503 and headers["content-type"] == "application/json"
        assert "no replica" in json.loads(body)["error"]


def test_haproxy_accepts_the_config_of_odd_names(tmp_path: Path) -> None:
    endpoints = [
        ReplicaEndpoint("SERVE_REPLICA::app#edgeshift#a1", "n1", "127.0.0.1", 9001, ("a b", "c")),
        ReplicaEndpoint("SERVE_REPLICA::app#edgeshift#b2", "n2", "::1", 9002, ("c",)),
    ]
    models = ["a b", "c"]
    (tmp_path / "m.map").write_text(map_file_text(models))
    text = haproxy_config(
        "127.0.0.1", 8000, endpoints, admin_socket=tmp_path / "s", map_file=tmp_path / "m.map"
    )
    (tmp_path / "h.cfg").write_text(text)
    check = subprocess.run([HAPROXY_BINARY, "-c", "-f", tmp_path / "h.cfg"], capture_output=True)
    assert check.returncode == 0, check.stderr.decode()
    assert "[::1]:9002" in text and "/v2/models/a%20b/ready" in text


def test_replica_ids_that_collide_as_server_names_are_refused() -> None:
    a = ReplicaEndpoint("r#1", "n", "127.0.0.1", 1)
    b = ReplicaEndpoint("r:1", "n", "127.0.0.1", 2)
    with pytest.raises(ConfigError, match="differ in letters or digits"):
        server_names([a, b])


def test_tcp_mode_balances_connections_and_a_killed_replica_hangs_nothing(
    replicas: list[Replica],
) -> None:
    victim, survivor = replicas
    clients = 4
    with HaproxyIngress(mode="tcp", drain_timeout_s=1.0) as front:
        front.start([r.endpoint for r in replicas])
        for replica in replicas:
            wait_for_state(front, replica.endpoint.replica_id, "UP")
        with Load(front.url, clients=clients) as load:
            load.wait_for(200)
            # L4: each client connection was balanced once (leastconn: 2 and 2).
            assert victim.requests_answered() > 0 and survivor.requests_answered() > 0
            victim.kill()
            wait_for_state(front, victim.endpoint.replica_id, "DOWN")
            # A connection balanced to the victim just before it was DOWN waits out HAProxy's
            # connect-retry turn-around (1 s) and is then cut by shutdown-sessions.
            time.sleep(1.5)
            settled = len(load.answers)
            load.wait_for(200)
    # No retries at L4: the victim's connections fail (reset or closed, never a hang), and
    # so can such a reconnection; after that every client is on the survivor.
    assert not [a for a in load.answers if a[0] == 0], "a request hung"
    failures = load.failures()
    assert 0 < len(failures) <= 2 * clients and all(s == -1 for s, _ in failures), failures
    assert all(status == 200 for status, _ in load.answers[settled:])


def test_tcp_mode_removal_cuts_the_connections_left_on_a_live_replica(
    replicas: list[Replica],
) -> None:
    old, kept = replicas
    with HaproxyIngress(mode="tcp", drain_timeout_s=0.5) as front:
        front.start([r.endpoint for r in replicas])
        for replica in replicas:
            wait_for_state(front, replica.endpoint.replica_id, "UP")
        with Load(front.url, clients=2) as load:
            load.wait_for(100)
            front.update([kept.endpoint])  # old still serves: its client connection is cut
            assert set(front.server_states()) == {kept.endpoint.replica_id}
            before = old.requests_answered()
            load.wait_for(100)
            assert old.requests_answered() == before
    assert len(load.failures()) <= 2


def test_the_tcp_mode_config_is_l4_in_front_of_any(tmp_path: Path) -> None:
    endpoint = ReplicaEndpoint("r1", "n1", "127.0.0.1", 9001, ("m",))
    (tmp_path / "m.map").write_text(map_file_text(["m"]))
    text = haproxy_config(
        "127.0.0.1",
        8000,
        [endpoint],
        admin_socket=tmp_path / "s",
        map_file=tmp_path / "m.map",
        mode="tcp",
    )
    (tmp_path / "h.cfg").write_text(text)
    check = subprocess.run([HAPROXY_BINARY, "-c", "-f", tmp_path / "h.cfg"], capture_output=True)
    assert check.returncode == 0, check.stderr.decode()
    frontend = text.split("frontend ingress")[1].split("\n\n")[0]
    assert "mode tcp" in frontend and "default_backend any" in frontend
    assert "use_backend" not in frontend  # no routing by model at L4
    assert "mode tcp" in text.split("\nbackend any\n")[1].split("\n\n")[0]
