"""A Ray node killed under load on the real local cluster: its replica leaves HAProxy's rotation,
what was in flight is retried elsewhere or ended with a 503 JSON error (never a hang), the
survivor serves everything after, and Ray's replacement replica brings capacity back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tests.cluster.conftest import OBJECT_STORE_BYTES, pool_resource
from tests.cluster.test_ingress import Load
from tests.serve.serve_models import save_mlp, wait_until

from edgeshift.cluster import ClusterServer

pytestmark = pytest.mark.ray

POOL = "failover/a"


def _plan(path: Path, replicas: int) -> Path:
    workload = {"workload": "mlp", "placed": True, "pool": POOL, "tier": "server"}
    path.write_text(json.dumps({"workloads": [{**workload, "replicas": replicas}], "pools": []}))
    return path


def test_a_node_killed_under_load_leaves_rotation_and_capacity_comes_back(
    ray_cluster, tmp_path: Path
) -> None:
    cluster = ray_cluster.cluster
    nodes = [
        cluster.add_node(
            num_cpus=1,
            object_store_memory=OBJECT_STORE_BYTES,
            resources={pool_resource(POOL): 1},  # one replica per node
        )
        for _ in range(2)
    ]
    mlp = save_mlp(tmp_path / "mlp.onnx", seed=3)
    with ClusterServer(
        [mlp], address=ray_cluster.address, port=0, plan=_plan(tmp_path / "plan.json", 2)
    ) as server:
        by_node = {e.node_id: e for e in server.endpoints()}
        assert set(by_node) == {n.node_id for n in nodes}
        victim_node = nodes[0]
        victim = by_node[victim_node.node_id]
        # Room for Ray to put the lost replica back.
        cluster.add_node(
            num_cpus=1, object_store_memory=OBJECT_STORE_BYTES, resources={pool_resource(POOL): 1}
        )
        clients = 4
        with Load(server.url, clients=clients) as load:
            load.wait_for(100)
            killed = time.monotonic()
            cluster.remove_node(victim_node, allow_graceful=False)
            wait_until(
                lambda: server.ingress.server_states().get(victim.replica_id, "gone") != "UP",
                "the dead node's replica out of rotation",
            )
            out_s = time.monotonic() - killed
            after_out = len(load.answers)
            load.wait_for(100)
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
        assert len(failures) <= clients, failures  # at most what was in flight
        for status, body in failures:
            assert status == -1 or (status == 503 and "retry" in json.loads(body)["error"]), body
        assert all(status == 200 for status, _ in load.answers[after_out + clients :])
        assert victim_node.node_id not in {e.node_id for e in server.endpoints()}
