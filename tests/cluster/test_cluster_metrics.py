"""The cluster's /metrics: every replica's metrics under the single server's names, labelled
by replica and node; a replica that cannot be scraped shows as down, not as an error."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.serve.serve_models import exchange, save_mlp

from edgeshift.cluster.ingress import ReplicaEndpoint
from edgeshift.cluster.metrics import MetricsAggregator, aggregate_metrics, scrape_metrics
from edgeshift.serve import ServerSettings, ServerThread
from edgeshift.serve.metrics import ServerMetrics


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _replica_metrics(requests: int, batch_rows: int) -> str:
    metrics = ServerMetrics()
    for _ in range(requests):
        metrics.request_started("mlp")
        metrics.request_finished("mlp", "1", 200, 0.002)
    metrics.observe_batch("mlp", batch_rows)
    metrics.request_started("mlp")  # one still in flight
    return metrics.render().decode()


A = ReplicaEndpoint("replica-a", "node-1", "127.0.0.1", 1, ("mlp",))
B = ReplicaEndpoint("replica-b", "node-2", "127.0.0.1", 2, ("mlp",))
C = ReplicaEndpoint("replica-c", "node-2", "127.0.0.1", 3, ("mlp",))


def test_every_sample_keeps_its_name_and_gains_replica_and_node() -> None:
    text = aggregate_metrics({A: _replica_metrics(3, 4), B: _replica_metrics(5, 8), C: None})
    samples = _samples(text)

    def value(name: str, replica: ReplicaEndpoint, **labels: str) -> float:
        key = {"replica": replica.replica_id, "node": replica.node_id, "model": "mlp", **labels}
        return samples[(name, frozenset(key.items()))]

    total = "edgeshift_inference_requests_total"
    assert value(total, A, version="1", status="200") == 3
    assert value(total, B, version="1", status="200") == 5
    assert value("edgeshift_inference_in_flight", B) == 1
    assert value("edgeshift_batch_size_sum", A) == 4
    assert value("edgeshift_batch_size_bucket", B, le="8.0") == 1
    assert value("edgeshift_inference_latency_seconds_count", A) == 3
    up = {
        dict(labels)["replica"]: v
        for (name, labels), v in samples.items()
        if name == "edgeshift_cluster_replica_up"
    }
    assert up == {"replica-a": 1, "replica-b": 1, "replica-c": 0}
    # Prometheus' text format: one TYPE line per family, its samples together after it.
    types = re.findall(r"^# TYPE (\S+)", text, re.M)
    assert len(types) == len(set(types))
    assert "# TYPE edgeshift_inference_requests_total counter" in text
    assert "# TYPE edgeshift_inference_latency_seconds histogram" in text


def test_a_replica_label_of_the_same_name_is_overridden() -> None:
    text = '# TYPE thing gauge\nthing{replica="liar",node="x"} 2.0\n'
    samples = _samples(aggregate_metrics({A: text}))
    assert samples[("thing", frozenset({("replica", "replica-a"), ("node", "node-1")}))] == 2


def test_no_replicas_is_an_empty_but_valid_exposition() -> None:
    text = aggregate_metrics({})
    assert "# TYPE edgeshift_cluster_replica_up gauge" in text
    assert list(text_string_to_metric_families(text))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerThread]]:
    model = save_mlp(tmp_path_factory.mktemp("metrics") / "mlp.onnx")
    started = [ServerThread(ServerSettings([model], port=0, access_log=False)) for _ in range(2)]
    for server in started:
        server.start()
    yield started
    for server in started:
        server.stop()


def _infer(url: str, times: int) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]}
    ).encode()
    for _ in range(times):
        assert exchange(url, "POST", "/v2/models/mlp/infer", body)[0] == 200


def test_scraped_over_http_from_real_servers(servers: list[ServerThread], tmp_path: Path) -> None:
    endpoints = [
        ReplicaEndpoint(f"r{i}", f"n{i}", "127.0.0.1", s.port, ("mlp",))
        for i, s in enumerate(servers)
    ]
    dead = ReplicaEndpoint("gone", "n9", "127.0.0.1", 1, ("mlp",))  # nothing listens on 1
    _infer(servers[0].url, 2)
    _infer(servers[1].url, 3)
    aggregator = MetricsAggregator(lambda: [*endpoints, dead]).start()
    try:
        status, headers, body = exchange(aggregator.address, "GET", "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        samples = _samples(body.decode())
        counts = {
            dict(labels)["replica"]: v
            for (name, labels), v in samples.items()
            if name == "edgeshift_inference_requests_total" and dict(labels)["status"] == "200"
        }
        assert counts == {"r0": 2, "r1": 3}
        assert (
            samples[
                ("edgeshift_cluster_replica_up", frozenset({("replica", "gone"), ("node", "n9")}))
            ]
            == 0
        )
        assert exchange(aggregator.address, "GET", "/other")[0] == 404
    finally:
        aggregator.stop()
    up = [
        v
        for (name, _), v in _samples(scrape_metrics(endpoints)).items()
        if name == "edgeshift_cluster_replica_up"
    ]
    assert up == [1, 1]
