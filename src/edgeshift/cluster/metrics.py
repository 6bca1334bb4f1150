"""The cluster's ``/metrics``: every replica's own ``/metrics``, in the same metric names as a
single ``edgeshift serve``, each sample labelled with its ``replica`` and ``node``.

:func:`aggregate_metrics` is pure (texts in, text out); :func:`scrape_metrics` fetches the
texts (concurrently, with a deadline); :class:`MetricsAggregator` serves the result over
HTTP for the ingress to route ``/metrics`` to. A replica that cannot be scraped is missing
from that scrape and shows as ``edgeshift_cluster_replica_up{...} 0``; Prometheus' own
``sum by (model)`` gives the cluster totals.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from edgeshift.cluster.ingress import ReplicaEndpoint

REPLICA_UP = "edgeshift_cluster_replica_up"


class _Families:
    """A collector that yields fixed metric families (for generate_latest's rendering)."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def aggregate_metrics(texts: Mapping[ReplicaEndpoint, str | None]) -> str:
    """One Prometheus text exposition of every replica's metrics, each sample labelled with
    ``replica`` and ``node``; a replica whose text is None (its scrape failed) is reported
    by ``edgeshift_cluster_replica_up`` 0 only. Families keep their names, types and help."""
    families: dict[str, Metric] = {}
    up = Metric(REPLICA_UP, "1 when the replica's /metrics answered this scrape.", "gauge")
    for endpoint, text in sorted(texts.items(), key=lambda item: item[0].replica_id):
        extra = {"replica": endpoint.replica_id, "node": endpoint.node_id}
        up.samples.append(Sample(REPLICA_UP, extra, 0.0 if text is None else 1.0))
        if text is None:
            continue
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            elif merged.type != family.type:
                continue  # a replica of another edgeshift version; first type seen wins
            for sample in family.samples:
                # A replica's own label of these names would be ambiguous: ours win.
                labels = {**sample.labels, **extra}
                merged.samples.append(sample._replace(labels=labels))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), up]))
    return generate_latest(registry).decode()


def _fetch(endpoint: ReplicaEndpoint, timeout_s: float) -> str | None:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout_s)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        return body.decode() if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def scrape_metrics(endpoints: Sequence[ReplicaEndpoint], timeout_s: float = 2.0) -> str:
    """Fetch every replica's ``/metrics`` at once (TIMEOUT_S each) and aggregate them."""
    if not endpoints:
        return aggregate_metrics({})
    with ThreadPoolExecutor(max_workers=min(len(endpoints), 32)) as pool:
        texts = list(pool.map(lambda e: _fetch(e, timeout_s), endpoints))
    return aggregate_metrics(dict(zip(endpoints, texts, strict=True)))


class MetricsAggregator:
    """An HTTP server whose ``GET /metrics`` scrapes the replicas that ``endpoints()``
    returns at that moment. ``port=0`` picks a free port; ``.address`` is host:port."""

    def __init__(
        self,
        endpoints: Callable[[], Sequence[ReplicaEndpoint]],
        host: str = "127.0.0.1",
        port: int = 0,
        timeout_s: float = 2.0,
    ) -> None:
        get_endpoints, scrape_timeout_s = endpoints, timeout_s

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self._answer(
                        404, b'{"error": "only /metrics is served here"}', "application/json"
                    )
                    return
                text = scrape_metrics(get_endpoints(), scrape_timeout_s)
                self._answer(200, text.encode(), CONTENT_TYPE_LATEST)

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # scrapes every few seconds would flood the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="edgeshift-metrics", daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host.decode() if isinstance(host, bytes) else host}:{port}"

    def start(self) -> MetricsAggregator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
