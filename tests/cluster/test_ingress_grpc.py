"""gRPC through HaproxyIngress (the real /usr/sbin/haproxy) in front of real `edgeshift serve`
processes serving gRPC: routing by the model named in the message body, the any-backend for
server-wide calls, streams, a replica killed under load, servers added at run time; and the
gRPC part of the pure config."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from tests.cluster.test_ingress import ClosedLoop, wait_for_state
from tests.serve.serve_models import ServeProcess, mlp_reference, save_mlp

from edgeshift.cluster.ingress import HAPROXY_BINARY, HaproxyIngress, ReplicaEndpoint
from edgeshift.cluster.ingress_config import haproxy_config, map_file_text
from edgeshift.errors import ConfigError

pytestmark = pytest.mark.skipif(
    not os.access(HAPROXY_BINARY, os.X_OK), reason="needs HAProxy (apt-get install haproxy)"
)

X = np.arange(8, dtype=np.float32).reshape(1, 8) / 8


class GrpcReplica:
    """`python -m edgeshift serve PATHS --port 0 --grpc-port 0`, killable for real."""

    def __init__(self, replica_id: str, *paths: Path) -> None:
        server = ServeProcess(*map(str, paths), "--no-access-log", grpc=True)
        self.proc = server.proc
        host, port = server.url.rsplit(":", 1)
        assert server.grpc_url is not None
        self.endpoint = ReplicaEndpoint(
            replica_id,
            "node-1",
            host,
            int(port),
            tuple(p.stem for p in paths),
            grpc_port=int(server.grpc_url.rsplit(":", 1)[1]),
        )

    def answered(self) -> int:
        """Inference requests this replica answered (its own gRPC statistics)."""
        assert self.endpoint.grpc_address is not None
        client = tg.InferenceServerClient(self.endpoint.grpc_address)
        stats = client.get_inference_statistics(as_json=True)
        client.close()
        return sum(
            int(m["inference_stats"]["success"].get("count", 0)) for m in stats["model_stats"]
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def _infer(client: tg.InferenceServerClient, model: str, x: np.ndarray = X) -> np.ndarray:
    inp = tg.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("y")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ingress-grpc")
    return save_mlp(root / "mlp.onnx", seed=3), save_mlp(root / "other" / "other.onnx", seed=4)


@pytest.fixture
def split(models: tuple[Path, Path]) -> Iterator[tuple[GrpcReplica, GrpcReplica, HaproxyIngress]]:
    """Two replicas holding different models behind one ingress with a gRPC frontend."""
    a, b = GrpcReplica("replica-mlp", models[0]), GrpcReplica("replica-other", models[1])
    try:
        with HaproxyIngress(grpc_port=0) as front:
            front.start([a.endpoint, b.endpoint])
            for r in (a, b):
                wait_for_state(front, r.endpoint.replica_id, "UP")
            yield a, b, front
    finally:
        a.stop()
        b.stop()


def test_grpc_is_routed_by_the_model_in_the_message(split) -> None:
    a, b, front = split
    assert front.grpc_url is not None
    client = tg.InferenceServerClient(front.grpc_url)
    assert client.is_server_live() and client.is_server_ready()  # the any-backend
    for _ in range(5):  # each model only on its replica: a wrong route is NOT_FOUND
        np.testing.assert_allclose(_infer(client, "mlp"), mlp_reference(X, seed=3), rtol=1e-5)
        np.testing.assert_allclose(_infer(client, "other"), mlp_reference(X, seed=4), rtol=1e-5)
    assert client.is_model_ready("other") and client.is_model_ready("mlp")
    assert client.get_model_metadata("other").name == "other"
    assert client.get_model_config("mlp").config.name == "mlp"
    assert (a.answered(), b.answered()) == (5, 5)
    # A model no replica holds goes to any, whose replica answers the single server's error.
    with pytest.raises(tg.InferenceServerException, match="nope"):
        _infer(client, "nope")
    client.close()


def test_a_stream_goes_to_the_replica_of_its_first_message(split) -> None:
    _, b, front = split
    client = tg.InferenceServerClient(front.grpc_url)
    results: queue.Queue[object] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put(error or result))
    for i in range(4):
        inp = tg.InferInput("x", [1, 8], "FP32")
        inp.set_data_from_numpy(X * i)
        client.async_stream_infer("other", [inp], request_id=str(i))
    got = [results.get(timeout=30) for _ in range(4)]
    client.stop_stream()
    client.close()
    for result in got:
        assert isinstance(result, tg.InferResult), result
        i = int(result.get_response().id)
        np.testing.assert_allclose(result.as_numpy("y"), mlp_reference(X * i, seed=4), rtol=1e-5)
    assert b.answered() == 4


def test_aio_client_through_the_ingress(split) -> None:
    async def run(url: str) -> list[np.ndarray]:
        client = tga.InferenceServerClient(url)
        try:
            assert await client.is_server_ready()
            inp = tga.InferInput("x", [1, 8], "FP32")
            inp.set_data_from_numpy(X)
            answers = await asyncio.gather(*(client.infer(m, [inp]) for m in ["mlp", "other"] * 4))
            return [r.as_numpy("y") for r in answers]
        finally:
            await client.close()

    _, _, front = split
    outputs = asyncio.run(run(front.grpc_url))
    for i, y in enumerate(outputs):
        np.testing.assert_allclose(y, mlp_reference(X, seed=3 + i % 2), rtol=1e-5)


class GrpcLoad(ClosedLoop):
    """Closed-loop tritonclient.grpc clients on URL; each answer is kept as "ok" or the
    error's status; a call unanswered after 10 s is a "hang"."""

    def __init__(self, url: str, clients: int = 4, model: str = "mlp") -> None:
        self.url, self.model = url, model
        self.answers: list[str] = []
        super().__init__(clients)

    def _client(self) -> None:
        client = tg.InferenceServerClient(self.url)
        while not self._stop.is_set():
            try:
                inp = tg.InferInput("x", [1, 8], "FP32")
                inp.set_data_from_numpy(X)
                client.infer(self.model, [inp], client_timeout=10)
                self.answers.append("ok")
            except tg.InferenceServerException as exc:
                self.answers.append(
                    "hang" if exc.status() == "StatusCode.DEADLINE_EXCEEDED" else str(exc.status())
                )
        client.close()


def test_a_killed_replica_leaves_grpc_rotation_and_requests_keep_being_answered(
    models: tuple[Path, Path],
) -> None:
    replicas = [GrpcReplica(f"replica-{i}", models[0]) for i in range(2)]
    victim, survivor = replicas
    clients = 4
    try:
        with HaproxyIngress(grpc_port=0) as front:
            front.start([r.endpoint for r in replicas])
            for r in replicas:
                wait_for_state(front, r.endpoint.replica_id, "UP")
            with GrpcLoad(front.grpc_url, clients=clients) as load:
                load.wait_for(100)
                victim.proc.send_signal(signal.SIGKILL)
                wait_for_state(front, victim.endpoint.replica_id, "DOWN")
                after_down = len(load.answers)
                load.wait_for(200)
            survivor_answered = survivor.answered()
    finally:
        for r in replicas:
            r.stop()
    assert "hang" not in load.answers
    failures = [a for a in load.answers if a != "ok"]
    # At most what was in flight on the victim, as UNAVAILABLE (retry), never a hang.
    assert len(failures) <= clients, failures
    assert all(a == "StatusCode.UNAVAILABLE" for a in failures), failures
    assert all(a == "ok" for a in load.answers[after_down + clients :])
    assert survivor_answered >= 200


def test_grpc_servers_added_and_removed_at_run_time(models: tuple[Path, Path]) -> None:
    first, second = GrpcReplica("replica-a", models[0]), GrpcReplica("replica-b", models[0])
    try:
        with HaproxyIngress(grpc_port=0) as front:
            front.start([first.endpoint])
            wait_for_state(front, "replica-a", "UP")
            with GrpcLoad(front.grpc_url, clients=2) as load:
                load.wait_for(50)
                front.update([second.endpoint])  # add b, drain and delete a
                rows = front.command("show stat").splitlines()
                assert not [r for r in rows if ",replica-a," in r]
                assert [r for r in rows if r.startswith("g_any,replica-b,")]
                before = first.answered()
                load.wait_for(100)
                assert first.answered() == before
            assert set(load.answers) == {"ok"}
            assert second.answered() > 0
    finally:
        first.stop()
        second.stop()


def test_the_grpc_config_routes_by_field_one_and_checks_the_http_port(tmp_path: Path) -> None:
    endpoints = [
        ReplicaEndpoint("r1", "n1", "127.0.0.1", 9001, ("a b", "c"), grpc_port=9101),
        ReplicaEndpoint("r2", "n2", "::1", 9002, ("c",)),  # no gRPC: not in the gRPC backends
    ]
    (tmp_path / "m.map").write_text(map_file_text(["a b", "c"]))
    text = haproxy_config(
        "127.0.0.1",
        8000,
        endpoints,
        admin_socket=tmp_path / "s",
        map_file=tmp_path / "m.map",
        grpc_port=8001,
    )
    (tmp_path / "h.cfg").write_text(text)
    check = subprocess.run([HAPROXY_BINARY, "-c", "-f", tmp_path / "h.cfg"], capture_output=True)
    assert check.returncode == 0, check.stderr.decode()
    assert "bind 127.0.0.1:8001 proto h2" in text
    assert "req.body,bytes(5),protobuf(1)," in text
    grpc_servers = [line for line in text.splitlines() if "proto h2 check" in line]
    # r1 in g_any and in both of its models' gRPC backends; r2 in none.
    assert len(grpc_servers) == 3
    assert all("127.0.0.1:9101 proto h2 check port 9001 check-proto h1" in s for s in grpc_servers)
    assert "option http-buffer-request" not in text.split("frontend grpc")[1]
    assert "frontend grpc" not in haproxy_config(
        "127.0.0.1", 8000, endpoints, admin_socket=tmp_path / "s", map_file=tmp_path / "m.map"
    )


def test_an_unknown_ingress_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ingress mode 'udp': use http or tcp"):
        haproxy_config(
            "127.0.0.1", 8000, [], admin_socket=tmp_path / "s", map_file=tmp_path / "m", mode="udp"
        )
