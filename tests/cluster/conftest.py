"""One real local Ray cluster per test module: a head and two logical nodes, each node carrying
one plan pool as a custom resource, so placement is observable (a replica asking for
``edgeshift-pool:hospital/mini-pc`` can only land on that node).

Ray takes 10-20 s to start on a small box, so the fixture is module-scoped: share it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Before Ray is imported anywhere: no usage reporting, nothing leaves the machine.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

OBJECT_STORE_BYTES = 80 * 1024 * 1024
# The plan pools the test nodes stand for (pools of examples/factory-hospital.yaml's plan).
TEST_POOLS = ("hospital/mini-pc", "eu-cloud/cpu")


@dataclass(frozen=True)
class RayTestCluster:
    address: str  # GCS address: what ray.init(address=...) and ClusterServer(address=...) take
    pool_nodes: dict[str, str]  # plan pool ("site/pool") -> Ray node id (hex) that carries it
    head_node_id: str
    cluster: Any = None  # the ray.cluster_utils.Cluster: add_node / remove_node (node kills)

    def node_of(self, pool: str) -> str:
        return self.pool_nodes[pool]


def pool_resource(pool: str) -> str:
    return f"edgeshift-pool:{pool}"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayTestCluster]:
    """A running cluster with this process connected as a driver; Serve is shut down and the
    cluster torn down after the module."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from edgeshift.cluster.quiet import (
        NODE_HEALTH_SYSTEM_CONFIG,
        QUIET_SYSTEM_CONFIG,
        apply_quiet_env,
    )

    # The settings edgeshift uses for a cluster of its own: the tests run what users run.
    apply_quiet_env()

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "object_store_memory": OBJECT_STORE_BYTES,
            # Nobody reads the workers' logs from the driver (log_to_driver=False).
            "include_log_monitor": False,
            # A dead node is noticed in ~1.5 s instead of Ray's default ~15 s (5 missed checks
            # 3 s apart): what a cluster serving requests should run with (docs/scale-out.md).
            "_system_config": {**QUIET_SYSTEM_CONFIG, **NODE_HEALTH_SYSTEM_CONFIG},
        },
    )
    try:
        pool_nodes = {}
        for pool in TEST_POOLS:
            node = cluster.add_node(
                num_cpus=1,
                object_store_memory=OBJECT_STORE_BYTES,
                resources={pool_resource(pool): 8},
            )
            pool_nodes[pool] = node.node_id
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield RayTestCluster(cluster.address, pool_nodes, cluster.head_node.node_id, cluster)
    finally:
        try:
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """REPO/mlp/{1,2}, REPO/double/1 (tests/serve/serve_models.make_repository)."""
    from tests.serve.serve_models import make_repository

    return make_repository(tmp_path_factory.mktemp("cluster-models"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small MLPs for the ingress tests: mlp (seed 3) and other/other (seed 4)."""
    from tests.serve.serve_models import save_mlp

    root = tmp_path_factory.mktemp("ingress")
    return save_mlp(root / "mlp.onnx", seed=3), save_mlp(root / "other" / "other.onnx", seed=4)


@pytest.fixture
def replicas(models: tuple[Path, Path]) -> Iterator[list[Any]]:
    """Two `edgeshift serve` processes of mlp (tests/cluster/test_ingress.py's Replica)."""
    from tests.cluster.test_ingress import Replica

    started = [Replica(f"replica-{i}", models[0]) for i in range(2)]
    yield started
    for replica in started:
        replica.stop()
