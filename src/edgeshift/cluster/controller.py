"""``ClusterServer``: edgeshift's models served across a Ray cluster.

Deploys one Ray Serve application per plan pool (or one, without a plan) whose replicas run
edgeshift's own server; watches the registry and feeds HAProxy (the cluster's front door)
the replicas that are up; scales each application on the replicas' in-flight counts; and
rolls model updates through Ray Serve (new replicas start and register before old ones,
which hand over, are drained from HAProxy and only then stop).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeshift.cluster.autoscale import (
    AutoscalePolicy,
    Autoscaler,
    LoadSample,
    in_flight_total,
    requests_total,
)
from edgeshift.cluster.bind import check_ingress_host, check_replica_host, exposure_warning
from edgeshift.cluster.ingress import HaproxyIngress, ReplicaEndpoint
from edgeshift.cluster.ingress_config import INGRESS_MODES
from edgeshift.cluster.ingress_kernel import KernelIngress
from edgeshift.cluster.metrics import MetricsAggregator
from edgeshift.cluster.placement import (
    PoolPlacement,
    check_resources,
    placements_from_plan,
    read_plan,
)
from edgeshift.cluster.probes import port_open, reachable, scrape_texts
from edgeshift.cluster.quiet import (
    NODE_HEALTH_SYSTEM_CONFIG,
    QUIET_SYSTEM_CONFIG,
    REPLICA_ENV,
    apply_quiet_env,
)
from edgeshift.errors import ConfigError, EdgeshiftError
from edgeshift.serve import ServeOptions
from edgeshift.serve.repository import discover

log = logging.getLogger("edgeshift.cluster")

# A registered replica whose port refused this many polls in a row is gone (node died):
# 1.5 s, by which time HAProxy's own checks have long taken it out of rotation (0.3 s).
_PRUNE_AFTER_FAILURES = 3
_PRUNE_POLL_S = 0.5
# The registry wakes the watcher on a change; without one it asks again this often.
_WATCH_WAIT_S = 2.0
_POLL_S = 0.1
_DEPLOYMENT = "EdgeshiftReplica"


class ClusterError(EdgeshiftError):
    """The Ray cluster cannot do what was asked (no Ray at the address, replicas that never
    come up)."""


@dataclass
class _App:
    placement: PoolPlacement
    replicas: int
    autoscaler: Autoscaler
    answered: float = 0.0  # requests answered at the last scrape, over its replicas
    scraped_s: float | None = None


# HAProxy's (L7 "http", L4 "tcp") and the kernel's NAT (L4, no process on the data path).
CLUSTER_INGRESS_MODES = (*INGRESS_MODES, "kernel")


def _require_tools(ingress_mode: str = "http") -> None:
    """Ray and HAProxy (or iptables), checked before anything starts: a missing one is one
    line, not a traceback or a cluster left half-started."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise ClusterError(
            "Ray Serve is not installed — pip install 'edgeshift[ray]' (or ray[serve])"
        ) from None
    from edgeshift.cluster import ingress, ingress_kernel

    if ingress_mode == "kernel":
        # The paths read at call time, as HAPROXY_BINARY is (tests point them elsewhere).
        ingress_kernel.check_kernel_ingress(
            ingress_kernel.IPTABLES, ingress_kernel.IPTABLES_RESTORE
        )
        return
    if not os.access(ingress.HAPROXY_BINARY, os.X_OK):
        raise ClusterError(
            f"HAProxy is not at {ingress.HAPROXY_BINARY} — install it (apt-get install haproxy); "
            "it fronts the replicas"
        )


class ClusterServer:
    """``start()`` deploys and returns once every replica is serving behind the ingress
    (``url``); ``stop()`` takes it all down. ``address``: a Ray cluster's address, ``"auto"``
    (RAY_ADDRESS or the local node's), or None/``"local"`` to start a Ray on this machine.
    ``grpc_port``: the ingress's gRPC port (0: any free; None: no gRPC), replicas then serve
    gRPC too. ``replica_host``: what replicas bind (None: each node's IP; docs in
    :mod:`.bind`). ``ingress_mode``: "http" (HAProxy, L7), "tcp" (HAProxy, L4) or "kernel"
    (the kernel's NAT, L4: :mod:`.ingress_kernel`; root, IPv4)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        *,
        address: str | None = None,
        plan: Path | None = None,
        options: ServeOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        replicas: int | None = None,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
        name: str = "edgeshift",
        replica_host: str | None = None,
        target_in_flight: float = 4.0,
        downscale_delay_s: float = 10.0,
        start_timeout_s: float = 180.0,
        grpc_port: int | None = None,
        ingress_mode: str = "http",
    ) -> None:
        self.paths = [str(Path(p).resolve()) for p in paths]
        self.address = address
        self.plan = plan
        self.options = options or ServeOptions()
        self.host, self.port = check_ingress_host(host), port
        self.name = name
        self.replica_host = check_replica_host(replica_host)
        if grpc_port is not None and not 0 <= grpc_port <= 65535:
            raise ConfigError(f"--grpc-port {grpc_port}: give a port (0-65535; 0: any free) or off")
        if ingress_mode not in CLUSTER_INGRESS_MODES:
            modes = ", ".join(CLUSTER_INGRESS_MODES)
            raise ConfigError(f"--ingress-mode {ingress_mode!r}: use one of {modes}")
        if ingress_mode == "kernel" and ":" in self.host:
            raise ConfigError(
                f"--host {self.host}: the kernel ingress is IPv4 only — give an IPv4 address, "
                "or use --ingress-mode http"
            )
        self.grpc_port, self.ingress_mode = grpc_port, ingress_mode
        self.start_timeout_s = start_timeout_s
        if replicas is not None and replicas < 1:
            raise ConfigError(f"--replicas must be >= 1, not {replicas}")
        self._replicas, self._min, self._max = replicas, min_replicas, max_replicas
        self._target_in_flight, self._downscale_delay_s = target_in_flight, downscale_delay_s
        # Counts unset: no autoscaling (min = max = the starting count). Checked here, so a
        # bad count fails before Ray is touched.
        self.policy = self._policy(replicas or min_replicas or 1)
        self._apps: dict[str, _App] = {}
        self._registry: Any = None
        self._ingress: HaproxyIngress | KernelIngress | None = None
        self._aggregator: MetricsAggregator | None = None
        self._endpoints: dict[str, ReplicaEndpoint] = {}
        self._failures: dict[str, int] = {}
        self._registered: list[tuple[str, ReplicaEndpoint]] = []
        self._version = -1
        self._fed_version = -1  # the registry version HAProxy's servers reflect
        self._generation = 0  # bumped by update_model: replicas register as APP#gN
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._scaler: threading.Thread | None = None
        self.scale_events: list[tuple[float, str, int]] = []  # (monotonic s, app, replicas)

    # -- public ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._ingress is None:
            raise RuntimeError("the cluster server is not started")
        return self._ingress.url

    @property
    def grpc_url(self) -> str | None:
        """HOST:PORT of the ingress's gRPC frontend; None without gRPC."""
        if self._ingress is None:
            raise RuntimeError("the cluster server is not started")
        return self._ingress.grpc_url

    @property
    def metrics_url(self) -> str:
        """Where the aggregated ``/metrics`` is: the ingress's port (HAProxy routes it), or
        the aggregator's own address with the kernel ingress (its port goes to a replica)."""
        if self._ingress is None or self._aggregator is None:
            raise RuntimeError("the cluster server is not started")
        if isinstance(self._ingress, KernelIngress):
            return f"http://{self._aggregator.address}/metrics"
        return f"http://{self._ingress.url}/metrics"

    @property
    def ingress(self) -> HaproxyIngress | KernelIngress:
        """The ingress in front (``server_states()``: which replicas are in rotation)."""
        if self._ingress is None:
            raise RuntimeError("the cluster server is not started")
        return self._ingress

    def endpoints(self) -> list[ReplicaEndpoint]:
        with self._lock:
            return list(self._endpoints.values())

    def apps(self) -> dict[str, int]:
        """Ray Serve application -> replicas asked for."""
        return {name: app.replicas for name, app in self._apps.items()}

    def start(self) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        models = sorted(discover(self.paths))
        if not models:
            raise ConfigError(f"no models found in {', '.join(self.paths)}")
        placements = self._placements(models)  # a bad plan fails before Ray is touched
        _require_tools(self.ingress_mode)
        if warning := exposure_warning(self.host, self.replica_host):
            log.warning("%s", warning)
        self._connect()
        try:
            self._start(placements)
        except BaseException:
            # Nothing half-started stays behind: replicas pending forever, HAProxy running.
            if self._registry is not None:
                self.stop()
            raise

    def _start(self, placements: list[tuple[PoolPlacement, AutoscalePolicy]]) -> None:
        import ray
        from ray import serve

        check_resources([p for p, _ in placements], ray.cluster_resources())
        serve.start(proxy_location="Disabled")
        from edgeshift.cluster.registry import get_registry

        # On this process's node: see get_registry.
        node = ray.get_runtime_context().get_node_id()
        self._registry = get_registry(self.name, create=True, node_id=node)
        ray.get(self._registry.set_stopping.remote(False))
        for p, policy in placements:
            self._apps[self._app_name(p)] = _App(p, p.replicas, Autoscaler(policy))
        self._deploy(list(self._apps), wait=True)
        self._wait_for_replicas()
        self._aggregator = MetricsAggregator(self.endpoints).start()
        if self.ingress_mode == "kernel":
            self._ingress = KernelIngress(self.host, self.port, grpc_port=self.grpc_port)
        else:
            self._ingress = HaproxyIngress(
                self.host,
                self.port,
                metrics_address=self._aggregator.address,
                grpc_port=self.grpc_port,
                mode=self.ingress_mode,
            )
        self._fed_version = self._version
        self._ingress.start(self.endpoints())
        self.port, self.grpc_port = self._ingress.port, self._ingress.grpc_port
        self._watcher = threading.Thread(target=self._watch, name="edgeshift-watch", daemon=True)
        self._watcher.start()
        self._scaler = threading.Thread(target=self._autoscale, name="edgeshift-scale", daemon=True)
        self._scaler.start()

    def scale(self, n: int) -> None:
        """Every application to N replicas now (the autoscaler may change it later, within
        min/max)."""
        if n < 1:
            raise ConfigError(f"replicas must be >= 1, not {n}")
        for app in self._apps.values():
            app.replicas = n
        self._deploy(list(self._apps), wait=False)

    def update_model(self, paths: Sequence[str | Path]) -> None:
        """Serve PATHS instead, by a rolling update: returns once every replica serves them."""
        self.paths = [str(Path(p).resolve()) for p in paths]
        self._generation += 1
        self._deploy(list(self._apps), wait=True)
        self._wait_for_replicas()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._watcher, self._scaler):
            if thread is not None:
                thread.join(10)
        import ray
        from ray import serve

        if self._registry is not None:
            ray.get(self._registry.set_stopping.remote(True))
        if self._ingress is not None:
            self._ingress.stop()
        if self._aggregator is not None:
            self._aggregator.stop()
        for name in self._apps:
            serve.delete(name, _blocking=True)
        if self._registry is not None:
            ray.kill(self._registry)
            self._registry = None

    def __enter__(self) -> ClusterServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- Ray ------------------------------------------------------------------------------

    def _connect(self) -> None:
        import ray

        if ray.is_initialized():
            return
        if self.address not in (None, "local", "auto") and not reachable(self.address):
            # ray.init retries an unreachable GCS for a minute or more: say it now.
            raise ClusterError(
                f"no Ray cluster at {self.address} (nothing listens there) — start one with "
                "ray start --head, or pass --address local"
            )
        try:
            if self.address in (None, "local"):
                # A cluster of our own: its processes inherit this environment.
                apply_quiet_env()
                ray.init(
                    include_dashboard=False,
                    log_to_driver=False,
                    _system_config={**QUIET_SYSTEM_CONFIG, **NODE_HEALTH_SYSTEM_CONFIG},
                )
            else:
                ray.init(address=self.address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(
                f"no Ray cluster at {self.address} ({first}) — start one with ray start "
                "--head, or pass --address local"
            ) from None

    def _policy(self, initial: int) -> AutoscalePolicy:
        low = self._min if self._min is not None else initial
        return AutoscalePolicy(
            min_replicas=low,
            max_replicas=self._max if self._max is not None else max(initial, low),
            target_in_flight=self._target_in_flight,
            downscale_delay_s=self._downscale_delay_s,
        )

    def _placements(self, models: list[str]) -> list[tuple[PoolPlacement, AutoscalePolicy]]:
        """Each application's placement (its starting count clamped) and scaling policy."""
        if self.plan is None:
            return [
                (
                    PoolPlacement("", self.policy.clamp(self._replicas or self._min or 1)),
                    self.policy,
                )
            ]
        result = []
        for p in placements_from_plan(read_plan(self.plan), models):
            # Without counts the plan's are kept; its SLO and service time feed the queueing
            # model, which may ask for more than in-flight counts do.
            policy = dataclasses.replace(
                self._policy(self._replicas or p.replicas),
                latency_budget_ms=p.slo_ms,
                latency_quantile=p.slo_quantile,
            )
            initial = policy.clamp(self._replicas or p.replicas)
            result.append((dataclasses.replace(p, replicas=initial), policy))
        return result

    def _app_name(self, placement: PoolPlacement) -> str:
        # One Ray Serve application per pool; '/' in a name would read as a route.
        return f"{self.name}-{placement.pool.replace('/', '-')}" if placement.pool else self.name

    def _deploy(self, names: list[str], *, wait: bool) -> None:
        from ray import serve
        from ray.serve.api import RunTarget, run_many

        from edgeshift.cluster.replica import EdgeshiftReplica

        targets = []
        for name in names:
            app = self._apps[name]
            p = app.placement
            resources = {p.resource: 1} if p.pool else {}
            deployment: Any = serve.deployment(
                EdgeshiftReplica,
                name=_DEPLOYMENT,
                num_replicas=app.replicas,
                # The replica's own server uses the node's cores through its runtime threads;
                # Ray's CPU count would only cap replicas per node, which the pool resource does.
                ray_actor_options={
                    "num_cpus": 0,
                    "resources": resources,
                    "runtime_env": {"env_vars": dict(REPLICA_ENV)},
                },
                graceful_shutdown_timeout_s=30,
                health_check_period_s=2,
                max_ongoing_requests=256,
            )
            # A version per model generation: without one Serve gives every deploy a random
            # version, and a redeploy that only changes num_replicas would replace every
            # running replica. (Serve's external-scaler API avoids the redeploy, but with it a
            # node's death took the survivors out of rotation too; measured, not used.)
            deployment = deployment.options(version=f"g{self._generation}", _internal=True)
            paths = [str(x) for x in self.paths]
            if p.models:
                paths = self._model_paths(p.models)
            bound = deployment.bind(
                paths,
                self.options,
                host=self.replica_host,
                registry=self.name,
                app=f"{self._app_name(p)}#g{self._generation}",
                grpc_port=None if self.grpc_port is None else 0,
            )
            targets.append(RunTarget(bound, name=self._app_name(p), route_prefix=None))
        run_many(
            targets,
            wait_for_ingress_deployment_creation=wait,
            wait_for_applications_running=wait,
        )

    def _model_paths(self, models: Sequence[str]) -> list[str]:
        # A pool serves only the models the plan put there: their own files or directories.
        sources = discover(self.paths)
        missing = [m for m in models if m not in sources]
        if missing:
            raise ConfigError(f"the plan names models that are not served: {', '.join(missing)}")
        # A model from a repository comes with its repository (its other models too).
        found = [sources[m].repository or next(iter(sources[m].versions.values())) for m in models]
        return list(dict.fromkeys(str(path) for path in found))

    def _wait_for_replicas(self) -> None:
        """Until each application has as many registered replicas, serving the current
        paths, as asked for."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            self._refresh()
            counts: dict[str, int] = {}
            for tag, _ in self._registered:
                counts[tag] = counts.get(tag, 0) + 1
            short = {
                name: app.replicas
                for name, app in self._apps.items()
                if counts.get(f"{name}#g{self._generation}", 0) < app.replicas
            }
            if not short:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"replicas not serving after {self.start_timeout_s:g} s ({short}) — check "
                    "the Ray nodes' resources and the replica logs (ray logs)"
                )
            self._refresh(wait_s=_PRUNE_POLL_S)

    # -- loops ----------------------------------------------------------------------------

    def _refresh(self, wait_s: float = 0.0) -> bool:
        """Read the registry, waiting up to WAIT_S for a change; True when it changed."""
        import ray

        if wait_s > 0:
            call = self._registry.changed.remote(self._version, wait_s)
        else:
            call = self._registry.snapshot.remote()
        version, entries = ray.get(call)
        if version == self._version:
            return False
        self._version, self._registered = version, entries
        with self._lock:
            self._endpoints = {e.replica_id: e for _, e in entries}
        return True

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._refresh(wait_s=_WATCH_WAIT_S)
                # Compared with what HAProxy was last given, not with the last read: the
                # main thread reads the registry too (waiting for replicas).
                version = self._version
                if version != self._fed_version and self._ingress is not None:
                    self._ingress.update(self.endpoints())
                    self._fed_version = version
            except Exception:  # the loop must outlive one failed poll
                log.exception("cluster watch loop")
                self._stop.wait(_POLL_S)

    def _prune(self) -> None:
        """Forget replicas whose server is gone (their node died: they never unregistered)."""
        import ray

        for endpoint in self.endpoints():
            if port_open(endpoint.host, endpoint.port):
                self._failures.pop(endpoint.replica_id, None)
                continue
            self._failures[endpoint.replica_id] = self._failures.get(endpoint.replica_id, 0) + 1
            if self._failures[endpoint.replica_id] >= _PRUNE_AFTER_FAILURES:
                ray.get(self._registry.unregister.remote(endpoint.replica_id))
                self._failures.pop(endpoint.replica_id, None)

    def _autoscale(self) -> None:
        # Pruning is here, not in the watcher: the watcher sleeps in the registry until a
        # change, and an unregistered replica is one (it wakes and updates HAProxy).
        while not self._stop.wait(_PRUNE_POLL_S):
            try:
                self._prune()
            except Exception:
                log.exception("cluster prune")
            try:
                self._autoscale_once()
            except Exception:
                log.exception("cluster autoscale loop")

    def _autoscale_once(self) -> None:
        policies = [app.autoscaler.policy for app in self._apps.values()]
        if all(p.max_replicas == p.min_replicas for p in policies):
            return  # fixed counts: no need to scrape
        registered = list(self._registered)
        texts = scrape_texts([e for _, e in registered])
        now = time.monotonic()
        changed = []
        for name, app in self._apps.items():
            policy = app.autoscaler.policy
            if policy.max_replicas == policy.min_replicas:
                continue  # fixed count: nothing to decide
            app_name = name
            mine = [
                texts.get(e.replica_id, "") for tag, e in registered if tag.split("#")[0] == name
            ]
            in_flight = sum(in_flight_total(text) for text in mine)
            answered = sum(requests_total(text) for text in mine)
            rps = None
            if app.scraped_s is not None and answered >= app.answered and now > app.scraped_s:
                rps = (answered - app.answered) / (now - app.scraped_s)
            app.answered, app.scraped_s = answered, now  # a replica gone resets the counter
            sample = LoadSample(in_flight, rps, app.placement.service_ms)
            wanted = app.autoscaler.step(now, app.replicas, sample)
            if wanted != app.replicas:
                log.info("scaling %s from %d to %d replicas", app_name, app.replicas, wanted)
                app.replicas = wanted
                self.scale_events.append((now, app_name, wanted))
                changed.append(name)
        if changed:
            self._deploy(changed, wait=False)
