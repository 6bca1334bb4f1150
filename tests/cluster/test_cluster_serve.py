"""ClusterServer on a real local Ray cluster: tritonclient through HAProxy, a rolling update
under load, a scale-up after a load step, placement on the plan's nodes."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tests.serve.serve_models import exchange, mlp_reference, save_fixed, save_mlp, wait_until
from tritonclient.utils import InferenceServerException

from edgeshift.cluster import ClusterServer, ReplicaEndpoint
from edgeshift.errors import ConfigError
from edgeshift.serve import ServeOptions

pytestmark = pytest.mark.ray


def _infer(client: httpclient.InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("y")


@pytest.fixture(scope="module")
def served(ray_cluster, model_repo):
    with ClusterServer(
        [model_repo], address=ray_cluster.address, port=0, replicas=2, name="t-serve", grpc_port=0
    ) as server:
        yield server


def _grpc_infer(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("y")


def test_tritonclient_grpc_through_the_ingress(served: ClusterServer) -> None:
    assert served.grpc_url is not None
    assert all(e.grpc_port is not None for e in served.endpoints())
    client = grpcclient.InferenceServerClient(served.grpc_url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")
    assert client.get_model_metadata("mlp").versions == ["2"]
    x = np.arange(24, dtype=np.float32).reshape(3, 8) / 10
    np.testing.assert_allclose(_grpc_infer(client, "mlp", x), mlp_reference(x, seed=2), rtol=1e-5)
    with pytest.raises(InferenceServerException, match="nope"):
        _grpc_infer(client, "nope", x)
    client.close()

    async def aio() -> np.ndarray:
        aclient = grpcaio.InferenceServerClient(served.grpc_url)
        try:
            inp = grpcaio.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            results = await asyncio.gather(*(aclient.infer("mlp", [inp]) for _ in range(8)))
            return np.stack([r.as_numpy("y") for r in results])
        finally:
            await aclient.close()

    for y in asyncio.run(aio()):
        np.testing.assert_allclose(y, mlp_reference(x, seed=2), rtol=1e-5)


def test_tritonclient_through_the_ingress(served: ClusterServer) -> None:
    client = httpclient.InferenceServerClient(served.url)
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    meta = client.get_model_metadata("mlp")
    assert meta["inputs"][0]["name"] == "x" and meta["versions"] == ["2"]
    x = np.arange(24, dtype=np.float32).reshape(3, 8) / 10
    np.testing.assert_allclose(_infer(client, "mlp", x), mlp_reference(x, seed=2), rtol=1e-5)
    # Two replicas, each its own server on its own port, both registered.
    endpoints = served.endpoints()
    assert len(endpoints) == 2 and len({e.port for e in endpoints}) == 2
    assert all(e.models == ("double", "mlp") for e in endpoints)
    # /metrics through the ingress: every replica's, labelled with replica and node.
    status, _, body = exchange(served.url, "GET", "/metrics")
    assert status == 200
    for e in endpoints:
        assert f'replica="{e.replica_id}"' in body.decode()


def test_errors_are_the_single_servers(served: ClusterServer) -> None:
    client = httpclient.InferenceServerClient(served.url)
    with pytest.raises(InferenceServerException) as bad_model:
        _infer(client, "nope", np.zeros((1, 8), np.float32))
    assert bad_model.value.status() == "400" or "nope" in str(bad_model.value)
    status, _, body = exchange(
        served.url, "POST", "/v2/models/mlp/infer", b'{"inputs": [{"name": "x"}]}'
    )
    assert 400 <= status < 500 and json.loads(body)["error"]
    status, _, _ = exchange(served.url, "GET", "/v2/models/nope/ready")
    assert status == 404


def test_a_replica_dropped_from_the_registry_registers_again(served: ClusterServer) -> None:
    import ray

    from edgeshift.cluster.registry import get_registry

    registry = get_registry("t-serve", create=False)
    dropped = served.endpoints()[0]
    version, _ = ray.get(registry.snapshot.remote())
    ray.get(registry.unregister.remote(dropped.replica_id))

    def back() -> bool:
        now, entries = ray.get(registry.snapshot.remote())
        return now >= version + 2 and dropped in [e for _, e in entries]

    wait_until(back, "its heartbeat to register it again", 10)
    wait_until(lambda: dropped in served.endpoints(), "the controller to see it back", 10)


def test_the_registry_lives_on_the_controllers_node(served: ClusterServer) -> None:
    # Anywhere else, losing that node lost the registry: Ray restarted it empty and the
    # controller drained the surviving replicas until their next heartbeat.
    import ray

    from edgeshift.cluster.registry import get_registry

    registry = get_registry("t-serve", create=False)
    assert ray.get(registry.node_id.remote()) == ray.get_runtime_context().get_node_id()


class _Hammer:
    """Clients sending requests through the ingress until stopped; counts what failed."""

    def __init__(self, url: str, clients: int = 2) -> None:
        self.url, self.ok, self.failed = url, 0, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        client = httpclient.InferenceServerClient(self.url)
        x = np.ones((1, 8), np.float32)
        while not self._stop.is_set():
            try:
                _infer(client, "mlp", x)
                self.ok += 1
            except Exception as exc:  # every failure counts, whatever its kind
                self.failed.append(repr(exc))

    def __enter__(self) -> _Hammer:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def test_rolling_update_fails_no_request(served: ClusterServer, tmp_path: Path) -> None:
    new_repo = tmp_path / "repo"
    save_mlp(new_repo / "mlp" / "3" / "model.onnx", seed=3)
    save_mlp(new_repo / "double" / "1" / "model.onnx", seed=4)
    before = {e.replica_id for e in served.endpoints()}
    with _Hammer(served.url) as hammer:
        wait_until(lambda: hammer.ok > 20, "requests before the update")
        started = time.monotonic()
        served.update_model([new_repo])
        wait_until(lambda: not before & {e.replica_id for e in served.endpoints()}, "old gone")
        took_s = time.monotonic() - started
        ok_after = hammer.ok
        wait_until(lambda: hammer.ok > ok_after + 20, "requests after the update")
    print(f"rolling update: {took_s:.1f} s, {hammer.ok} requests, {len(hammer.failed)} failed")
    assert hammer.failed == []
    client = httpclient.InferenceServerClient(served.url)
    x = np.ones((2, 8), np.float32)
    np.testing.assert_allclose(_infer(client, "mlp", x), mlp_reference(x, seed=3), rtol=1e-5)
    assert client.get_model_metadata("mlp")["versions"] == ["3"]


def test_scale_up_after_a_load_step_and_down_after_it(ray_cluster, model_repo) -> None:
    options = ServeOptions(threads=1)
    with ClusterServer(
        [model_repo],
        address=ray_cluster.address,
        port=0,
        options=options,
        min_replicas=1,
        max_replicas=2,
        target_in_flight=2.0,
        downscale_delay_s=2.0,
        name="t-scale",
    ) as server:
        assert len(server.endpoints()) == 1
        first = server.endpoints()[0].replica_id
        with _Hammer(server.url, clients=6) as hammer:
            step = time.monotonic()
            wait_until(lambda: len(server.endpoints()) == 2, "a second replica", 60)
            (new,) = [e for e in server.endpoints() if e.replica_id != first]
            wait_until(
                lambda: metric_of(new, "edgeshift_inference_requests") > 0,
                "the new replica serving through the ingress",
                30,
            )
            serving_s = time.monotonic() - step
        print(f"scale-up: a new replica served {serving_s:.1f} s after the load step")
        assert hammer.failed == []
        # One client is one replica's load: after the delay, back to one, failing nothing.
        with _Hammer(server.url, clients=1) as light:
            wait_until(lambda: len(server.endpoints()) == 1, "a scale-down to one replica", 60)
            ok_after = light.ok
            wait_until(lambda: light.ok > ok_after + 10, "requests after the scale-down")
        assert light.failed == []
        assert server.apps() == {"t-scale": 1}
        # Scaling kept the running replicas (a redeploy would have replaced them all).
        assert first in {e.replica_id for e in server.endpoints()} or new.replica_id in {
            e.replica_id for e in server.endpoints()
        }


def metric_of(endpoint: ReplicaEndpoint, name: str) -> float:
    status, _, body = exchange(endpoint.address, "GET", "/metrics")
    assert status == 200
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith(name + "{") or line.startswith(name + "_total{")
    )


def _plan(path: Path, placed: dict[str, str]) -> Path:
    """A plan.json with one placed workload per model (name -> pool)."""
    workloads = [
        {"workload": name, "placed": True, "pool": pool, "tier": "server", "replicas": 1}
        for name, pool in placed.items()
    ]
    path.write_text(json.dumps({"workloads": workloads, "pools": []}))
    return path


def test_replicas_land_on_the_plans_pools(ray_cluster, tmp_path: Path) -> None:
    mlp = save_mlp(tmp_path / "mlp.onnx", seed=1)
    double = save_fixed(tmp_path / "double.onnx")
    plan = _plan(tmp_path / "plan.json", {"mlp": "hospital/mini-pc", "double": "eu-cloud/cpu"})
    with ClusterServer(
        [mlp, double], address=ray_cluster.address, port=0, plan=plan, name="t-plan", grpc_port=0
    ) as server:
        placed = {e.models: e.node_id for e in server.endpoints()}
        assert placed == {
            ("mlp",): ray_cluster.node_of("hospital/mini-pc"),
            ("double",): ray_cluster.node_of("eu-cloud/cpu"),
        }
        client = httpclient.InferenceServerClient(server.url)
        x = np.ones((1, 8), np.float32)
        np.testing.assert_allclose(_infer(client, "mlp", x), mlp_reference(x, seed=1), rtol=1e-5)
        assert not client.is_model_ready("nope")
        # gRPC, routed by the model in the message: each pool holds one model, so a request
        # sent to the other pool's replica would be NOT_FOUND.
        assert server.grpc_url is not None
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        for _ in range(4):
            y = _grpc_infer(grpc, "mlp", x)
            np.testing.assert_allclose(y, mlp_reference(x, seed=1), rtol=1e-5)
            x4 = np.arange(4, dtype=np.float32).reshape(1, 4)
            np.testing.assert_allclose(_grpc_infer(grpc, "double", x4), 2 * x4)
        grpc.close()


def test_a_plan_pool_without_nodes_is_one_clear_error(ray_cluster, tmp_path: Path) -> None:
    mlp = save_mlp(tmp_path / "mlp.onnx")
    plan = _plan(tmp_path / "plan.json", {"mlp": "factory/gateway"})
    server = ClusterServer([mlp], address=ray_cluster.address, port=0, plan=plan, name="t-bad")
    with pytest.raises(ConfigError, match="factory/gateway has no Ray node"):
        server.start()


def test_ray_users_bind_the_deployment_and_call_infer(ray_cluster, model_repo) -> None:
    from ray import serve

    from edgeshift.serve.ray import EdgeshiftDeployment

    handle = serve.run(
        EdgeshiftDeployment.bind([str(model_repo)]), name="t-user", route_prefix=None
    )
    try:
        x = np.arange(16, dtype=np.float32).reshape(2, 8)
        out = handle.infer.remote("mlp", {"x": x}).result(timeout_s=60)
        np.testing.assert_allclose(out["y"], mlp_reference(x, seed=2), rtol=1e-5)
        # edgeshift's errors come back as they are (the version policy loads the latest only).
        with pytest.raises(Exception, match="no loaded version '1'"):
            handle.infer.remote("mlp", {"x": x}, version="1").result(timeout_s=60)
        # Its own server answers on the port it reports: the same model, no Ray proxy.
        endpoint = handle.endpoint.remote().result(timeout_s=60)
        client = httpclient.InferenceServerClient(endpoint.address)
        np.testing.assert_allclose(_infer(client, "mlp", x), out["y"], rtol=1e-6)
        with pytest.raises(Exception, match="unknown model|not found|nope"):
            handle.infer.remote("nope", {"x": x}).result(timeout_s=60)
    finally:
        serve.delete("t-user")


def test_one_replica_rolling_update_hands_over(ray_cluster, tmp_path: Path) -> None:
    # One replica: the old one must wait for its successor before leaving the ingress.
    first = save_mlp(tmp_path / "a" / "mlp.onnx", seed=1)
    second = save_mlp(tmp_path / "b" / "mlp.onnx", seed=2)
    with ClusterServer(
        [first], address=ray_cluster.address, port=0, replicas=1, name="t-one"
    ) as server:
        with _Hammer(server.url, clients=1) as hammer:
            wait_until(lambda: hammer.ok > 10, "requests before the update")
            server.update_model([second])
            wait_until(lambda: len(server.endpoints()) == 1, "the old replica gone")
            ok_after = hammer.ok
            wait_until(lambda: hammer.ok > ok_after + 10, "requests after the update")
        assert hammer.failed == []
        client = httpclient.InferenceServerClient(server.url)
        x = np.ones((1, 8), np.float32)
        np.testing.assert_allclose(_infer(client, "mlp", x), mlp_reference(x, seed=2), rtol=1e-5)


@pytest.mark.skipif(os.geteuid() != 0, reason="the kernel ingress changes the nat table (root)")
def test_kernel_ingress_serves_both_protocols_and_rolls_an_update_failing_nothing(
    ray_cluster, tmp_path: Path
) -> None:
    first = save_mlp(tmp_path / "a" / "mlp.onnx", seed=1)
    second = save_mlp(tmp_path / "b" / "mlp.onnx", seed=2)
    with ClusterServer(
        [first],
        address=ray_cluster.address,
        port=0,
        replicas=2,
        name="t-kernel",
        grpc_port=0,
        ingress_mode="kernel",
    ) as server:
        x = np.ones((2, 8), np.float32)
        client = httpclient.InferenceServerClient(server.url)
        np.testing.assert_allclose(_infer(client, "mlp", x), mlp_reference(x, seed=1), rtol=1e-5)
        assert server.grpc_url is not None
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        np.testing.assert_allclose(_grpc_infer(grpc, "mlp", x), mlp_reference(x, seed=1), rtol=1e-5)
        # The port goes to a replica: the aggregated metrics are on the aggregator's own.
        status, _, body = exchange(
            server.metrics_url.removeprefix("http://")[: -len("/metrics")], "GET", "/metrics"
        )
        assert status == 200 and body.count(b"edgeshift_cluster_replica_up{") == 2
        before = {e.replica_id for e in server.endpoints()}
        with _Hammer(server.url) as hammer:
            wait_until(lambda: hammer.ok > 20, "requests before the update")
            server.update_model([second])
            wait_until(lambda: not before & {e.replica_id for e in server.endpoints()}, "old gone")
            ok_after = hammer.ok
            wait_until(lambda: hammer.ok > ok_after + 20, "requests after the update")
        # The old replicas left the NAT rules first, then closed each client connection after
        # its next answer (connection: close): every client moved over with no failed request.
        assert hammer.failed == []
        np.testing.assert_allclose(_infer(client, "mlp", x), mlp_reference(x, seed=2), rtol=1e-5)


def test_a_killed_node_is_replaced_and_capacity_comes_back(ray_cluster, tmp_path: Path) -> None:
    from tests.cluster.conftest import OBJECT_STORE_BYTES, pool_resource

    spare = {pool_resource("spare/a"): 1}
    doomed = ray_cluster.cluster.add_node(
        num_cpus=1, object_store_memory=OBJECT_STORE_BYTES, resources=spare
    )
    mlp = save_mlp(tmp_path / "mlp.onnx", seed=1)
    plan = _plan(tmp_path / "plan.json", {"mlp": "spare/a"})
    with ClusterServer(
        [mlp], address=ray_cluster.address, port=0, plan=plan, name="t-kill"
    ) as server:
        (before,) = server.endpoints()
        assert before.node_id == doomed.node_id
        ray_cluster.cluster.add_node(
            num_cpus=1, object_store_memory=OBJECT_STORE_BYTES, resources=spare
        )
        killed = time.monotonic()
        ray_cluster.cluster.remove_node(doomed, allow_graceful=False)
        wait_until(
            lambda: [e.node_id for e in server.endpoints()] not in ([], [doomed.node_id]),
            "a replica on the surviving node",
            60,
        )
        client = httpclient.InferenceServerClient(server.url)
        x = np.ones((1, 8), np.float32)
        wait_until(lambda: _serves(client, x), "the new replica serving through HAProxy", 30)
        print(f"node kill: capacity back {time.monotonic() - killed:.1f} s after the kill")
        np.testing.assert_allclose(_infer(client, "mlp", x), mlp_reference(x, seed=1), rtol=1e-5)


def _serves(client: httpclient.InferenceServerClient, x: np.ndarray) -> bool:
    try:
        _infer(client, "mlp", x)
        return True
    except InferenceServerException:
        return False
