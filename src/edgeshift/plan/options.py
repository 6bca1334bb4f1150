"""Every way to place each workload: (pool, variant) with its latency, replicas and cost.

An option is sized with the fewest replicas that meet the workload's SLO at peak rate with the
scenario's utilization headroom; when no replica count meets the SLO it is sized for capacity
alone and flagged, so that the baselines can still use it and count the violation. Options a
data policy forbids are kept too, flagged, for the same reason and for the explanations.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from edgeshift.plan.problem import (
    LinkSpec,
    Perf,
    Pool,
    Problem,
    SiteSpec,
    Variant,
    WorkloadSpec,
)
from edgeshift.plan.queueing import min_servers, response_quantile_ms

# Beyond this many replicas of one workload we stop searching: no real pool is this large.
_MAX_REPLICAS_SEARCH = 100_000


@dataclass
class Option:
    workload: str
    pool: str
    site: str
    site_kind: str
    tier: str
    target_id: str
    variant: str
    precision: str
    accuracy_drop: float
    network_ms: float  # round trip (+ payload transfer time when it crosses a link)
    service_ms: float
    ram_required_bytes: int
    servers_per_replica: int  # concurrent inference streams one node sustains
    replicas: int  # 0 when the option cannot run at all
    queue_rps: float  # peak arrivals into one queue (the whole rate, or one device's share)
    queue_servers: int  # servers behind that queue
    latency_ms: float  # predicted response quantile (the SLO's), end to end; inf if unusable
    floor_latency_ms: float  # network + service: the latency with unlimited replicas
    utilization_peak: float
    utilization_mean: float
    power_w: float  # at peak utilization, for site power budgets
    energy_usd: float  # per month at mean utilization (owned nodes; cloud bills it per hour)
    instance_usd: float  # per month, cloud instances
    egress_usd: float  # per month
    links: tuple[frozenset[str], ...]  # the route's links, empty when processed on site
    link_bps: float  # payload bits/s over the link at peak
    fits: bool  # the model runs on the target (precision supported, memory fits)
    meets_slo: bool
    policy_ok: bool
    within_capacity: bool  # the pool has enough nodes for the sizing
    reason: str  # why the option is not admissible ("" when it is)

    @property
    def admissible(self) -> bool:
        return self.fits and self.meets_slo and self.policy_ok and self.within_capacity

    @property
    def usable(self) -> bool:
        """Runnable at all (for baselines, which may break SLOs and policies)."""
        return self.fits and self.within_capacity and self.replicas > 0

    @property
    def running_usd(self) -> float:
        """Monthly cost of this option alone; purchases of owned nodes are added per pool."""
        return self.energy_usd + self.instance_usd + self.egress_usd


def policy_allows(problem: Problem, workload: WorkloadSpec, site: str) -> tuple[bool, str]:
    """Whether WORKLOAD's data may be processed at SITE, and why not."""
    home = problem.sites[workload.site]
    there = problem.sites[site]
    if site in workload.deny_sites:
        return False, f"{workload.name} denies site {site}"
    if workload.allow_sites is not None and site not in workload.allow_sites and site != home.name:
        return False, f"{workload.name} allows only {', '.join(sorted(workload.allow_sites))}"
    if workload.data_policy == "site" and site != home.name:
        return False, f"{workload.name} data may not leave site {home.name}"
    if workload.data_policy == "region" and there.region != home.region:
        return False, f"{workload.name} data may not leave region {home.region}"
    return True, ""


def build_options(problem: Problem) -> dict[str, list[Option]]:
    """Options per workload name, for every pool reachable from where its data is produced."""
    pools_by_site: dict[str, list[Pool]] = {}
    for pool in problem.pools:
        pools_by_site.setdefault(pool.site, []).append(pool)
    routes_from: dict[str, dict[str, tuple[LinkSpec, ...]]] = {}
    # Identical (pool, variant, rate, budget) sizings recur across workloads: cache them.
    sizing_cache: dict[tuple[object, ...], int | None] = {}
    result: dict[str, list[Option]] = {}
    for workload in problem.workloads:
        if workload.site not in routes_from:
            routes_from[workload.site] = shortest_routes(problem, workload.site)
        options: list[Option] = []
        for site, route in routes_from[workload.site].items():
            kind = problem.sites[site].kind
            if kind == "device" and site != workload.site:
                continue  # a sensor's processor serves its own data, not other sites'
            if kind != "cloud" and len(route) > 1:
                continue  # edge and on-prem sites serve their own and their neighbours' data
            for pool in pools_by_site.get(site, []):
                for variant in workload.variants:
                    options.append(_option(problem, workload, pool, variant, route, sizing_cache))
        result[workload.name] = options
    return result


def shortest_routes(problem: Problem, source: str) -> dict[str, tuple[LinkSpec, ...]]:
    """The lowest round-trip route (a chain of links) from SOURCE to every reachable site."""
    neighbours: dict[str, list[tuple[str, LinkSpec]]] = {}
    for each in problem.links.values():
        neighbours.setdefault(each.a, []).append((each.b, each))
        neighbours.setdefault(each.b, []).append((each.a, each))
    best: dict[str, float] = {source: 0.0}
    routes: dict[str, tuple[LinkSpec, ...]] = {source: ()}
    heap: list[tuple[float, str]] = [(0.0, source)]
    while heap:
        dist, site = heapq.heappop(heap)
        if dist > best[site]:
            continue
        for other, link in neighbours.get(site, []):
            candidate = dist + link.rtt_ms
            if candidate < best.get(other, math.inf):
                best[other] = candidate
                routes[other] = (*routes[site], link)
                heapq.heappush(heap, (candidate, other))
    return routes


def _option(
    problem: Problem,
    workload: WorkloadSpec,
    pool: Pool,
    variant: Variant,
    route: tuple[LinkSpec, ...],
    sizing_cache: dict[tuple[object, ...], int | None],
) -> Option:
    site = problem.sites[pool.site]
    if not route:
        network_ms = site.lan_rtt_ms
    else:
        # Store and forward: every hop adds its round trip and the payload's transfer time.
        network_ms = sum(
            link.rtt_ms + workload.payload_bytes * 8.0 / link.bandwidth_bps * 1000.0
            for link in route
        )
    policy_ok, policy_reason = policy_allows(problem, workload, pool.site)
    perf = problem.perf.get((variant.model_key, pool.target_id, variant.precision))
    base = dict(
        workload=workload.name,
        pool=pool.id,
        site=pool.site,
        site_kind=site.kind,
        tier=pool.tier,
        target_id=pool.target_id,
        variant=variant.name,
        precision=variant.precision,
        accuracy_drop=variant.accuracy_drop,
        network_ms=network_ms,
        links=tuple(link.key for link in route),
        link_bps=workload.peak_rps * workload.payload_bytes * 8.0 if route else 0.0,
        policy_ok=policy_ok,
    )
    unusable = dict(
        servers_per_replica=1,
        replicas=0,
        queue_rps=0.0,
        queue_servers=0,
        latency_ms=math.inf,
        utilization_peak=0.0,
        utilization_mean=0.0,
        power_w=0.0,
        energy_usd=0.0,
        instance_usd=0.0,
        egress_usd=0.0,
        meets_slo=False,
        within_capacity=False,
    )
    if perf is None:
        reason = f"{pool.target_id} cannot run {variant.precision}"
        return Option(
            **base,  # type: ignore[arg-type]
            **unusable,  # type: ignore[arg-type]
            service_ms=math.inf,
            ram_required_bytes=0,
            floor_latency_ms=math.inf,
            fits=False,
            reason=reason,
        )
    floor_ms = network_ms + perf.service_ms
    if not perf.fits or perf.ram_required_bytes > pool.ram_bytes:
        need_mib = perf.ram_required_bytes / 2**20
        reason = perf.fit_reason or (
            f"needs {need_mib:.1f} MiB, {pool.target_id} has {pool.ram_bytes / 2**20:.1f} MiB"
        )
        return Option(
            **base,  # type: ignore[arg-type]
            **unusable,  # type: ignore[arg-type]
            service_ms=perf.service_ms,
            ram_required_bytes=perf.ram_required_bytes,
            floor_latency_ms=floor_ms,
            fits=False,
            reason=f"memory: {reason}",
        )
    servers = max(1, perf.streams)
    budget_ms = workload.slo_ms - network_ms
    load = workload.peak_rps * perf.service_ms / 1000.0
    if not math.isfinite(load / (problem.headroom * servers)):
        # No count of nodes carries an unbounded load; sizing it would overflow.
        return Option(
            **base,  # type: ignore[arg-type]
            **unusable,  # type: ignore[arg-type]
            service_ms=perf.service_ms,
            ram_required_bytes=perf.ram_required_bytes,
            floor_latency_ms=floor_ms,
            fits=True,
            reason=f"capacity: {workload.peak_rps:g} req/s at {perf.service_ms:g} ms is unbounded",
        )
    if site.kind == "device":
        return _device_option(problem, workload, pool, perf, base, network_ms, servers)
    key = (perf.service_ms, servers, workload.peak_rps, workload.quantile, budget_ms)
    if key not in sizing_cache:
        sizing_cache[key] = min_servers(
            workload.peak_rps,
            perf.service_ms,
            workload.quantile,
            budget_ms,
            problem.headroom,
            servers,
            _MAX_REPLICAS_SEARCH,
        )
    slo_replicas = sizing_cache[key]
    # Capacity-only sizing, used when the SLO cannot be met (baselines count the violation).
    capacity_replicas = max(1, math.ceil(load / (problem.headroom * servers) - 1e-12))
    meets_slo = slo_replicas is not None
    replicas = slo_replicas if slo_replicas is not None else capacity_replicas
    within_capacity = replicas <= pool.capacity
    reason = ""
    if not policy_ok:
        reason = f"policy: {policy_reason}"
    elif not meets_slo:
        reason = (
            f"slo: {workload.slo_label} ≥ {floor_ms:.1f} ms here (network {network_ms:.1f} + "
            f"service {perf.service_ms:.1f}) > SLO {workload.slo_ms:g} ms"
        )
    elif not within_capacity:
        reason = f"capacity: needs {replicas} nodes, {pool.id} has at most {pool.capacity}"
    peak_bps = workload.peak_rps * workload.payload_bytes * 8.0
    for link in route:
        if peak_bps > problem.headroom * link.bandwidth_bps:
            within_capacity = False
            reason = reason or (
                f"bandwidth: {peak_bps / 1e6:.1f} Mbit/s at peak > {problem.headroom:.0%} of "
                f"link {link.a}–{link.b} ({link.bandwidth_bps / 1e6:g} Mbit/s)"
            )
    capacity_servers = replicas * servers
    queue_fields = dict(queue_rps=workload.peak_rps, queue_servers=capacity_servers)
    latency_ms = network_ms + response_quantile_ms(
        workload.peak_rps, perf.service_ms, capacity_servers, workload.quantile
    )
    util_peak = load / capacity_servers
    util_mean = workload.mean_rps * perf.service_ms / 1000.0 / capacity_servers
    power_w = _power_w(pool, replicas, util_peak)
    energy_usd = 0.0
    if not pool.is_cloud:
        energy_usd = _energy_usd(problem, site, _power_w(pool, replicas, util_mean))
    egress_usd = 0.0
    if route:
        gb_per_month = (
            workload.payload_bytes * workload.mean_rps * 3600.0 * problem.hours_per_month / 1e9
        )
        egress_usd = gb_per_month * sum(link.usd_per_gb for link in route)
    return Option(
        **base,  # type: ignore[arg-type]
        **queue_fields,  # type: ignore[arg-type]
        service_ms=perf.service_ms,
        ram_required_bytes=perf.ram_required_bytes,
        servers_per_replica=servers,
        replicas=replicas,
        latency_ms=latency_ms,
        floor_latency_ms=floor_ms,
        utilization_peak=util_peak,
        utilization_mean=util_mean,
        power_w=power_w,
        energy_usd=energy_usd,
        instance_usd=replicas * pool.instance_usd_per_month,
        egress_usd=egress_usd,
        fits=True,
        meets_slo=meets_slo,
        within_capacity=within_capacity,
        reason=reason,
    )


def _device_option(
    problem: Problem,
    workload: WorkloadSpec,
    pool: Pool,
    perf: Perf,
    base: dict[str, object],
    network_ms: float,
    servers: int,
) -> Option:
    """On the producing devices themselves: each device runs the model on its own share of the
    rate, in its own queue; all of them are used and none can be added."""
    devices = pool.existing
    share_rps = workload.peak_rps / devices if devices else math.inf
    load = share_rps * perf.service_ms / 1000.0
    util_peak = load / servers
    latency_ms = network_ms + (
        response_quantile_ms(share_rps, perf.service_ms, servers, workload.quantile)
        if devices
        else math.inf
    )
    fast_enough = latency_ms <= workload.slo_ms
    within_capacity = devices > 0 and util_peak <= problem.headroom
    reason = ""
    if not base["policy_ok"]:
        reason = "policy: the data may not be processed here"
    elif not devices:
        reason = f"capacity: {pool.id} lists no devices (count: 0)"
    elif not within_capacity:
        reason = (
            f"capacity: each device is {util_peak:.0%} busy at peak, above the "
            f"{problem.headroom:.0%} headroom"
        )
    elif not fast_enough:
        reason = (
            f"slo: {workload.slo_label} {latency_ms:.1f} ms on each device > SLO "
            f"{workload.slo_ms:g} ms"
        )
    util_mean = workload.mean_rps / max(devices, 1) * perf.service_ms / 1000.0 / servers
    site = problem.sites[pool.site]
    return Option(
        **base,  # type: ignore[arg-type]
        service_ms=perf.service_ms,
        ram_required_bytes=perf.ram_required_bytes,
        servers_per_replica=servers,
        replicas=devices,
        queue_rps=share_rps,
        queue_servers=servers,
        latency_ms=latency_ms,
        floor_latency_ms=network_ms + perf.service_ms,
        utilization_peak=util_peak,
        utilization_mean=util_mean,
        power_w=_power_w(pool, devices, util_peak),
        energy_usd=_energy_usd(problem, site, _power_w(pool, devices, util_mean)),
        instance_usd=devices * pool.instance_usd_per_month,
        egress_usd=0.0,
        fits=True,
        meets_slo=fast_enough and within_capacity,
        within_capacity=devices > 0,
        reason=reason,
    )


def _power_w(pool: Pool, nodes: int, utilization: float) -> float:
    """Draw of ``nodes`` nodes: idle power plus the dynamic share at this utilization."""
    return nodes * (pool.idle_w + (pool.active_w - pool.idle_w) * min(utilization, 1.0))


def _energy_usd(problem: Problem, site: SiteSpec, mean_w: float) -> float:
    """A month of ``mean_w`` watts at the site's electricity price."""
    return mean_w / 1000.0 * problem.hours_per_month * site.usd_per_kwh
