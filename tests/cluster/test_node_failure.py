"""A Ray node killed under load on the real local cluster: its replica leaves HAProxy's rotation,
what was in flight is retried elsewhere or ended with a 503 JSON error (never a hang), the
survivor serves everything after, and Ray's replacement replica brings capacity back."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from tests.cluster.conftest import OBJECT_STORE_BYTES, pool_resource
from tests.cluster.test_ingress import Load
from tests.cluster.test_ingress_grpc import GrpcLoad
from tests.serve.serve_models import save_mlp, wait_until

from edgeshift.cluster import ClusterServer

pytestmark = pytest.mark.ray

POOL = "failover/a"


def _plan(path: Path, replicas: int, pool: str = POOL) -> Path:
    workload = {"workload": "mlp", "placed": True, "pool": pool, "tier": "server"}
    path.write_text(json.dumps({"workloads": [{**workload, "replicas": replicas}], "pools": []}))
    return path


@pytest.mark.parametrize(
    "ingress_mode",
    [
        "http",
        pytest.param(
            "kernel",
            marks=pytest.mark.skipif(os.geteuid() != 0, reason="the kernel ingress needs root"),
        ),
    ],
)
def test_a_node_killed_under_load_leaves_rotation_and_capacity_comes_back(
    ray_cluster, tmp_path: Path, ingress_mode: str
) -> None:
    cluster = ray_cluster.cluster
    pool = f"{POOL}-{ingress_mode}"  # nodes of their own: another mode's run left its nodes
    nodes = [
        cluster.add_node(
            num_cpus=1,
            object_store_memory=OBJECT_STORE_BYTES,
            resources={pool_resource(pool): 1},  # one replica per node
        )
        for _ in range(2)
    ]
    mlp = save_mlp(tmp_path / "mlp.onnx", seed=3)
    with ClusterServer(
        [mlp],
        address=ray_cluster.address,
        port=0,
        grpc_port=0,
        plan=_plan(tmp_path / "plan.json", 2, pool),
        ingress_mode=ingress_mode,
        name=f"t-fail-{ingress_mode}",
    ) as server:
        by_node = {e.node_id: e for e in server.endpoints()}
        assert set(by_node) == {n.node_id for n in nodes}
        victim_node = nodes[0]
        victim = by_node[victim_node.node_id]
        # Room for Ray to put the lost replica back.
        cluster.add_node(
            num_cpus=1, object_store_memory=OBJECT_STORE_BYTES, resources={pool_resource(pool): 1}
        )
        clients = 4
        assert server.grpc_url is not None
        with Load(server.url, clients=clients) as load, GrpcLoad(server.grpc_url, 2) as grpc:
            load.wait_for(100)
            grpc.wait_for(50)
            killed = time.monotonic()
            cluster.remove_node(victim_node, allow_graceful=False)
            wait_until(
                lambda: server.ingress.server_states().get(victim.replica_id, "gone") != "UP",
                "the dead node's replica out of rotation",
            )
            out_s = time.monotonic() - killed
            after_out, grpc_after_out = len(load.answers), len(grpc.answers)
            load.wait_for(100)
            grpc.wait_for(50)
            wait_until(
                lambda: sum(s == "UP" for s in server.ingress.server_states().values()) == 2,
                "a replacement replica in rotation",
                60,
            )
            back_s = time.monotonic() - killed
            load.wait_for(100)
        print(f"node kill: out of rotation {out_s:.2f} s, capacity back {back_s:.1f} s")
        assert not [a for a in load.answers if a[0] == 0], "a request hung"
        failures = load.failures()
        # HAProxy replays what it can: at most what was in flight fails. The kernel's NAT
        # does not retry: what was in flight fails with its connection, and so may a
        # reconnection made in the moment before the rule went (docs/scale-out.md).
        per_client = 1 if ingress_mode == "http" else 2
        assert len(failures) <= per_client * clients, failures
        for status, body in failures:
            assert status == -1 or (status == 503 and "retry" in json.loads(body)["error"]), body
        assert all(status == 200 for status, _ in load.answers[after_out + clients :])
        # gRPC through the same ingress: its servers leave rotation with the HTTP ones (the
        # same checks), so the calls keep being answered; at most those in flight fail, as
        # UNAVAILABLE, never a hang.
        grpc_failures = [a for a in grpc.answers if a != "ok"]
        assert "hang" not in grpc.answers
        assert len(grpc_failures) <= 2 * per_client
        assert set(grpc_failures) <= {"StatusCode.UNAVAILABLE"}
        assert set(grpc.answers[grpc_after_out + 2 * per_client :]) == {"ok"}
        assert victim_node.node_id not in {e.node_id for e in server.endpoints()}
