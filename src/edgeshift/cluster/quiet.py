"""Settings that keep a Ray cluster's own periodic work small when it only hosts edgeshift.

edgeshift's requests never pass through Ray (HAProxy -> the replicas' own servers), so what
Ray does between requests is pure overhead: measured idle on a 2-core box (a head and three
logical nodes, one replica), Ray's processes burned ~0.2 CPU-s per second. These settings
apply to a cluster edgeshift starts itself (``--address local``, the tests, the benchmark);
an operator's own cluster takes the same ones through ``ray start`` (docs/scale-out.md).

Nothing here slows failure handling: node health checks are set by the caller (0.5 s x 3,
docs/scale-out.md) and HAProxy's checks take a dead replica out on their own.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# Read by each replica (Ray Serve's code in it): edgeshift sets these on its deployments, so
# they apply on any cluster. Serve exports its own per-replica metrics to Ray's metrics
# every 100 ms by default; edgeshift's /metrics comes from its servers instead.
REPLICA_ENV: dict[str, str] = {
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "5000",
}

# Read by processes at start (Serve controller, dashboard agents): set before Ray starts.
QUIET_ENV: dict[str, str] = {
    # Serve's controller reconciles 10x a second by default; 2x still replaces a dead
    # replica well within the 10 s goal (its node's death takes 1.5 s to notice).
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    # Each node's agents check their raylet every 0.4 s and scan every process every 5 s
    # for the dashboard, which edgeshift does not start.
    "RAY_DASHBOARD_AGENT_CHECK_PARENT_INTERVAL_S": "2",
    "REPORTER_UPDATE_INTERVAL_MS": "60000",
    "RAY_USAGE_STATS_ENABLED": "0",
    **REPLICA_ENV,
}

# Ray's _system_config (the head node's; it reaches every node).
QUIET_SYSTEM_CONFIG: dict[str, object] = {
    # Ray's own Prometheus metrics: edgeshift's /metrics comes from its replicas instead.
    "enable_metrics_collection": False,
    "metrics_report_interval_ms": 60_000,
    # Per-event-loop handler statistics, only ever printed to debug logs.
    "event_stats": False,
}

# A dead node noticed in ~1.5 s (3 missed checks 0.5 s apart), not Ray's default ~15 s.
NODE_HEALTH_SYSTEM_CONFIG: dict[str, object] = {
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
    # A worker whose raylet died checks for that once a second by default, and its replica's
    # server (a thread of the worker) answers until then: a killed node's replica stayed up to
    # 1 s, then HAProxy's checks took 0.1-0.35 s more (out of rotation in 0.3-1.13 s,
    # measured). Checked every 100 ms, the worker goes with its raylet.
    "raylet_death_check_interval_milliseconds": 100,
}


def apply_quiet_env(environ: MutableMapping[str, str] | None = None) -> None:
    """Set QUIET_ENV in ENVIRON (os.environ) where the user has not set a value."""
    target = os.environ if environ is None else environ
    for key, value in QUIET_ENV.items():
        target.setdefault(key, value)
