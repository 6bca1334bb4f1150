"""Placement from ``edgeshift plan``: each plan pool is a Ray custom resource
(``edgeshift-pool:SITE/POOL``) that the operator gives the Ray nodes of that pool; each
replica asks for one unit of it, so Ray can only start it on a node of its pool, and a node's
count of the resource is how many replicas it may hold.

Pure: plan.json (as a dict) and the cluster's resource totals in, placements or a one-line
ConfigError out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeshift.errors import ConfigError

POOL_RESOURCE_PREFIX = "edgeshift-pool:"
# Tiers whose pools are microcontrollers or phones: no Ray node runs there.
_NOT_RAY_TIERS = frozenset({"mcu", "mobile"})


def pool_resource(pool: str) -> str:
    """The Ray custom resource for plan pool ``SITE/POOL``."""
    return f"{POOL_RESOURCE_PREFIX}{pool}"


@dataclass(frozen=True)
class PoolPlacement:
    """Replicas of one pool: ``replicas`` Ray Serve replicas, each holding ``models``
    (empty: every model served) and one unit of ``resource``."""

    pool: str
    replicas: int
    workloads: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    # The plan's queueing inputs for the autoscaler: the slowest workload's service time on
    # this pool's hardware, the tightest SLO (ms at a quantile). None without a plan.
    service_ms: float | None = None
    slo_ms: float | None = None
    slo_quantile: float = 0.99

    @property
    def resource(self) -> str:
        return pool_resource(self.pool)


def read_plan(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read plan {path} ({exc}) — pass the plan.json written by edgeshift plan --out"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("workloads"), list):
        raise ConfigError(f"{path} is not a plan.json (no workloads) — run edgeshift plan --out")
    return data


def placements_from_plan(plan: Mapping[str, Any], models: Sequence[str]) -> list[PoolPlacement]:
    """Pools and replica counts from the plan's placed workloads.

    A workload whose name is a served model's name puts that model on its pool; when no
    workload names a served model, every pool serves every model. Workloads on
    microcontroller or phone pools are skipped (no Ray there); a pool's replicas are the sum
    of its workloads' replicas, as the plan counted a server per workload replica.
    """
    placed = [
        w
        for w in plan.get("workloads", [])
        if w.get("placed") and w.get("pool") and w.get("tier") not in _NOT_RAY_TIERS
    ]
    named = {str(w["workload"]) for w in placed} & set(models)
    by_pool: dict[str, list[Mapping[str, Any]]] = {}
    for w in placed:
        if named and w["workload"] not in named:
            continue
        by_pool.setdefault(str(w["pool"]), []).append(w)
    if not by_pool:
        raise ConfigError(
            "the plan places no workload on a pool that can run Ray (only microcontrollers "
            "or phones, or nothing placed) — plan with server, edge or on-prem pools"
        )
    result = []
    for pool, workloads in sorted(by_pool.items()):
        names = tuple(str(w["workload"]) for w in workloads)
        replicas = sum(max(1, int(w.get("replicas", 1))) for w in workloads)
        service = [float(w["service_ms"]) for w in workloads if w.get("service_ms")]
        slos = [w["slo"] for w in workloads if isinstance(w.get("slo"), dict) and "ms" in w["slo"]]
        result.append(
            PoolPlacement(
                pool,
                replicas,
                names,
                names if named else (),
                service_ms=max(service) if service else None,
                slo_ms=min(float(x["ms"]) for x in slos) if slos else None,
                slo_quantile=max((float(x.get("quantile", 0.99)) for x in slos), default=0.99),
            )
        )
    return result


def check_resources(
    placements: Sequence[PoolPlacement], cluster_resources: Mapping[str, float]
) -> None:
    """Raise ConfigError when a pool has no Ray node, or too few units for its replicas
    (Ray would leave those replicas pending forever)."""
    for p in placements:
        if not p.pool:
            continue  # no plan: replicas go wherever Ray has room
        have = cluster_resources.get(p.resource, 0.0)
        if have <= 0:
            raise ConfigError(
                f"plan pool {p.pool} has no Ray node: start its nodes with "
                f"ray start --resources '{{\"{p.resource}\": {p.replicas}}}'"
            )
        if have < p.replicas:
            raise ConfigError(
                f"plan pool {p.pool} needs {p.replicas} replicas but its Ray nodes offer "
                f"{have:g} units of {p.resource} — add nodes or raise their --resources count"
            )
