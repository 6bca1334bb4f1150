"""Plain data of a placement problem: what the solver, explanations and report work on.

The scenario loader (scenario.py) and the estimate bridge (inputs.py) produce a ``Problem``;
everything after that is pure and can be built by hand in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DataPolicy = Literal["anywhere", "region", "site"]
SiteKind = Literal["device", "edge", "on-prem", "cloud"]


@dataclass(frozen=True)
class SiteSpec:
    name: str
    kind: SiteKind
    region: str
    usd_per_kwh: float
    power_budget_w: float | None
    lan_rtt_ms: float  # round trip between two nodes of the same site


@dataclass(frozen=True)
class Pool:
    """Identical nodes at one site: grouping them keeps 10,000 nodes a small model."""

    id: str  # "site/name"
    site: str
    name: str
    target_id: str
    tier: str  # the catalog's tier: "mcu", "edge", "server", "gpu", ...
    existing: int  # nodes already there: purchase is sunk, energy is not
    max_add: int  # nodes that may be added (owned) or instances that may be started (cloud)
    added_usd_per_month: float  # owned: purchase / (lifetime_years * 12) per added node
    instance_usd_per_month: float  # cloud: usd_per_hour * hours_per_month per used instance
    idle_w: float
    active_w: float
    ram_bytes: int

    @property
    def is_cloud(self) -> bool:
        return self.instance_usd_per_month > 0.0

    @property
    def capacity(self) -> int:
        return self.existing + self.max_add


@dataclass(frozen=True)
class LinkSpec:
    a: str
    b: str
    rtt_ms: float
    bandwidth_bps: float
    usd_per_gb: float  # egress, charged on request payloads that cross the link
    key: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", frozenset((self.a, self.b)))


@dataclass(frozen=True)
class Variant:
    """One way to run a workload's model: a precision, with its measured accuracy drop."""

    name: str  # label shown to users, e.g. "fp32" or "int8 (artifacts/cnn-int8)"
    model_key: str  # key of the model in the perf table
    precision: str
    accuracy_drop: float


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    site: str  # where its data is produced
    mean_rps: float
    peak_rps: float
    payload_bytes: int
    quantile: float  # 0.95 or 0.99
    slo_ms: float
    data_policy: DataPolicy
    variants: tuple[Variant, ...]
    allow_sites: frozenset[str] | None = None  # None: every site the policy admits
    deny_sites: frozenset[str] = frozenset()

    @property
    def slo_label(self) -> str:
        return f"p{round(self.quantile * 100)}"


@dataclass(frozen=True)
class Perf:
    """Estimated figures of one model variant on one target (one inference call, batch 1)."""

    service_ms: float  # one call on one stream
    throughput_items_s: float  # whole node
    ram_required_bytes: int
    fits: bool
    streams: int = 1  # concurrent calls a node runs side by side (the servers of the queue)
    fit_reason: str = ""
    # measured / estimated at the ends of the estimate's interval (targets/interval.py)
    interval_factors: tuple[float, float] | None = None


@dataclass
class Problem:
    sites: dict[str, SiteSpec]
    pools: list[Pool]
    links: dict[frozenset[str], LinkSpec]
    workloads: list[WorkloadSpec]
    # (model_key, target_id, precision) -> Perf; None: the target cannot run that precision
    perf: dict[tuple[str, str, str], Perf | None]
    headroom: float = 0.8  # max utilization at peak rate
    hours_per_month: float = 730.0
    name: str = ""
    notes: list[str] = field(default_factory=list)

    def pool(self, pool_id: str) -> Pool:
        return self._pool_index()[pool_id]

    def _pool_index(self) -> dict[str, Pool]:
        index = getattr(self, "_pools_by_id", None)
        if index is None or len(index) != len(self.pools):
            index = {p.id: p for p in self.pools}
            self._pools_by_id = index
        return index
