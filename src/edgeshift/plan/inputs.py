"""From a validated scenario to a placement ``Problem``: catalog targets, models, estimates.

This is the plan's edge: it reads model files and the catalog. Each model is analysed once
and each (model, target, precision) estimated once, however many nodes and workloads use it.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeshift.errors import ConfigError, ModelError, PlanError, ShapeError, TargetError
from edgeshift.plan.problem import LinkSpec, Perf, Pool, Problem, SiteSpec, Variant, WorkloadSpec
from edgeshift.plan.scenario import NodeGroup, Scenario

CLOUD_DEFAULT_MAX_INSTANCES = 1000
# optimize writes accuracy.drop; a hand-written manifest may put it at the top level.
_DROP_KEYS = ("accuracy_drop", "metric_drop", "drop")


@dataclass
class ModelRef:
    key: str  # stable id: "zoo:NAME" or the resolved path
    label: str  # what the user wrote
    path: Path
    manifest: dict[str, Any] | None


@dataclass
class Estimator:
    """Analyses each model once and estimates each (model, target, precision) once."""

    analyses: dict[str, Any] = field(default_factory=dict)
    manifests: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    perf: dict[tuple[str, str, str], Perf | None] = field(default_factory=dict)
    calls: int = 0
    # (model key, target id, precision) -> what the estimate assumes: runtime, precision, recipe
    assumed: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    calibration: Any | None = None  # a host.PinnedCalibration pinning the efficiencies

    def add_model(self, ref: ModelRef, shapes: dict[str, tuple[int, ...]] | None = None) -> str:
        """Analyse REF at SHAPES once; the key its estimates are stored under."""
        key = ref.key if not shapes else f"{ref.key}|{sorted(shapes.items())}"
        if key not in self.analyses:
            from edgeshift.model.analysis import analyze
            from edgeshift.model.load import load_model
            from edgeshift.runtime.check import check_runs

            loaded = load_model(ref.path)  # the ONNX checker, as bench loads it
            # A model no runtime opens gets no estimate (checked once, on ONNX Runtime).
            self.analyses[key] = analyze(loaded, shapes=shapes or None)
            check_runs(loaded, "onnxruntime", ref.label, self.analyses[key])
            self.manifests[key] = ref.manifest
        return key

    def get(self, model_key: str, target: Any, precision: str) -> Perf | None:
        key = (model_key, target.id, precision)
        if key not in self.perf:
            self.perf[key] = self._estimate(model_key, target, precision)
        return self.perf[key]

    def _estimate(self, model_key: str, target: Any, precision: str) -> Perf | None:
        if precision not in target.precisions:
            return None
        try:
            from edgeshift.targets.estimate import estimate
        except ImportError as exc:  # pragma: no cover - only while targets is being built
            raise PlanError(
                "edgeshift.targets.estimate is not available — install a complete edgeshift"
            ) from exc
        self.calls += 1
        est = estimate(
            self.analyses[model_key],
            target,
            batch=1,
            precision=precision,
            calibration=self.calibration,
            manifest=self.manifests.get(model_key),
        )
        streams = max(1, int(getattr(est, "streams", 1)))
        # With several streams each call runs on its share of the cores: slower than
        # ``latency_ms`` (one call on the whole node), and what the queue's servers see.
        service_ms = float(est.latency_ms)
        if streams > 1 and est.throughput_items_s > 0:
            service_ms = 1000.0 * streams / float(est.throughput_items_s)
        factors = None
        if est.interval_ms is not None and est.latency_ms > 0:
            factors = (est.interval_ms[0] / est.latency_ms, est.interval_ms[1] / est.latency_ms)
        self.assumed[(model_key, target.id, precision)] = {
            "runtime": est.runtime,
            "precision": est.precision,
            "recipe": est.recipe,
            # the service time's interval: the estimate's measured error (targets/interval.py)
            "service_ms": service_ms,
            "service_interval_ms": None if factors is None else [service_ms * f for f in factors],
            "interval_coverage": est.interval_coverage,
        }
        return Perf(
            service_ms=service_ms,
            throughput_items_s=float(est.throughput_items_s),
            ram_required_bytes=int(est.ram_required_bytes),
            fits=bool(est.fits) and math.isfinite(service_ms),
            fit_reason=str(est.fit_reason) if not est.fits else "",
            interval_factors=factors,
            streams=streams,
        )


def resolve_model(spec: str, base_dir: Path, tmp_dir: Path, where: str) -> ModelRef:
    """A workload's ``model:``: a zoo name, or a .onnx file / artifact dir beside the scenario."""
    from edgeshift.model.load import resolve_model_path
    from edgeshift.zoo import get as zoo_get
    from edgeshift.zoo import list_models

    zoo_names = {e.name: e for e in list_models()}
    if spec in zoo_names:
        entry = zoo_names[spec]
        if not entry.available:
            raise ModelError(f"{where}: zoo model {spec} is not available here — {entry.reason}")
        got = zoo_get(spec, tmp_dir / spec)
        return ModelRef(f"zoo:{spec}", spec, got.model_path, None)
    path = Path(spec)
    if not path.is_absolute():
        path = base_dir / path
    if not path.exists():
        raise ModelError(
            f"{where}: model {spec!r} is neither a zoo model ({', '.join(zoo_names)}) nor a "
            f"file or artifact dir at {path} — fix the name or the path"
        )
    model_path, manifest = resolve_model_path(path)
    return ModelRef(str(model_path.resolve()), spec, model_path, manifest)


def manifest_variant(manifest: dict[str, Any], where: str) -> tuple[str, float]:
    """(precision, accuracy drop) an optimize artifact's manifest records."""
    precision = str(manifest.get("precision") or "fp32").lower()
    aliases = {"f32": "fp32", "float32": "fp32", "f16": "fp16", "float16": "fp16", "i8": "int8"}
    precision = aliases.get(precision, precision)
    sections = [manifest.get(k) for k in ("accuracy", "metrics")]
    for source in [manifest, *(s for s in sections if isinstance(s, dict))]:
        for key in _DROP_KEYS:
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, int | float):
                return precision, max(0.0, float(value))
    if precision == "fp32":
        return precision, 0.0
    raise ConfigError(
        f"{where}: the artifact's manifest records no accuracy drop for its {precision} "
        "model — re-run `edgeshift optimize` with an eval set, or give the variant as "
        "`precision:` with `accuracy_drop:`"
    )


def build_problem(
    scenario: Scenario,
    base_dir: Path,
    *,
    get_target: Callable[[str], Any] | None = None,
    estimator: Estimator | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[Problem, Estimator]:
    """The placement problem of SCENARIO (paths relative to BASE_DIR), with estimates."""
    if get_target is None:
        from edgeshift.targets.catalog import get_target as catalog_get_target

        get_target = catalog_get_target
    est = estimator or Estimator()
    notes: list[str] = []
    targets: dict[str, Any] = {}
    sites: dict[str, SiteSpec] = {}
    pools: list[Pool] = []
    for i, site in enumerate(scenario.sites):
        sites[site.name] = SiteSpec(
            name=site.name,
            kind=site.kind,
            region=site.region or site.name,
            usd_per_kwh=site.usd_per_kwh,
            power_budget_w=site.power_budget_w,
            lan_rtt_ms=site.lan_rtt_ms,
        )
        groups: dict[tuple[Any, ...], list[NodeGroup]] = {}
        for j, group in enumerate(site.nodes):
            if group.target not in targets:
                try:
                    targets[group.target] = get_target(group.target)
                except TargetError as exc:
                    raise TargetError(f"sites[{i}].nodes[{j}].target: {exc}") from exc
            identity = (
                group.target,
                group.purchase_usd,
                group.lifetime_years,
                group.usd_per_hour,
            )
            groups.setdefault(identity, []).append(group)
        for same in groups.values():
            pools.append(_pool(site.name, same, targets[same[0].target], scenario, i))
    links = {}
    for link in scenario.links:
        link_spec = LinkSpec(
            a=link.between[0],
            b=link.between[1],
            rtt_ms=link.rtt_ms,
            bandwidth_bps=link.bandwidth_mbps * 1e6,
            usd_per_gb=link.usd_per_gb,
        )
        links[link_spec.key] = link_spec
    workloads: list[WorkloadSpec] = []
    with tempfile.TemporaryDirectory(prefix="edgeshift-plan-") as tmp:
        refs: dict[str, ModelRef] = {}
        for i, w in enumerate(scenario.workloads):
            where = f"workloads[{i}] ({w.name})"
            shapes = {k: (v,) if isinstance(v, int) else tuple(v) for k, v in w.shapes.items()}

            def ref_for(spec: str, at: str, shapes: dict[str, tuple[int, ...]] = shapes) -> str:
                if spec not in refs:
                    refs[spec] = resolve_model(spec, base_dir, Path(tmp), at)
                ref = refs[spec]
                if progress is not None:
                    progress(f"analysing {ref.label}")
                try:
                    return est.add_model(ref, shapes)
                except ShapeError as exc:
                    raise ShapeError(f"{at}: {exc} (set `shapes:` on the workload)") from exc

            variants, dropped = _variants(w, i, ref_for, est.manifests, where)
            for name, drop in dropped:
                notes.append(
                    f"{w.name}: variant {name} left out, its accuracy drop {drop:.4g} exceeds "
                    f"the budget {w.accuracy_budget:g}"
                )
            if not variants:
                raise PlanError(
                    f"{where}: no variant within accuracy_budget {w.accuracy_budget:g} — raise "
                    "the budget or add an fp32 variant"
                )
            workloads.append(
                WorkloadSpec(
                    name=w.name,
                    site=w.site,
                    mean_rps=w.mean_rps,
                    peak_rps=w.peak_rps,
                    payload_bytes=w.payload_bytes,
                    quantile=w.slo.quantile,
                    slo_ms=w.slo.ms,
                    data_policy=w.data_policy,
                    variants=tuple(variants),
                    allow_sites=None if w.allow_sites is None else frozenset(w.allow_sites),
                    deny_sites=frozenset(w.deny_sites),
                )
            )
    if progress is not None:
        progress("estimating")
    target_ids = {p.target_id for p in pools}
    for spec in workloads:
        for v in spec.variants:
            for target_id in sorted(target_ids):
                est.get(v.model_key, targets[target_id], v.precision)
    problem = Problem(
        sites=sites,
        pools=pools,
        links=links,
        workloads=workloads,
        perf=est.perf,
        headroom=scenario.headroom,
        hours_per_month=scenario.hours_per_month,
        name=scenario.name,
        notes=notes,
    )
    return problem, est


def _variants(
    w: Any,
    index: int,
    ref_for: Callable[[str, str], str],
    manifests: dict[str, dict[str, Any] | None],
    where: str,
) -> tuple[list[Variant], list[tuple[str, float]]]:
    kept: list[Variant] = []
    dropped: list[tuple[str, float]] = []

    def offer(variant: Variant) -> None:
        if variant.accuracy_drop <= w.accuracy_budget + 1e-12:
            kept.append(variant)
        else:
            dropped.append((variant.name, variant.accuracy_drop))

    base_key = ref_for(w.model, f"{where}.model")
    base_manifest = manifests.get(base_key)
    if base_manifest is not None:
        precision, drop = manifest_variant(base_manifest, f"{where}.model")
        offer(Variant(f"{precision} ({w.model})", base_key, precision, drop))
    else:
        offer(Variant("fp32", base_key, "fp32", 0.0))
    for j, spec in enumerate(w.variants):
        vwhere = f"workloads[{index}].variants[{j}]"
        if spec.artifact is not None:
            key = ref_for(spec.artifact, vwhere)
            manifest = manifests.get(key)
            if manifest is None:
                raise ConfigError(
                    f"{vwhere}: {spec.artifact} has no manifest.json — give an artifact dir "
                    "written by `edgeshift optimize`, or `precision:` with `accuracy_drop:`"
                )
            precision, drop = manifest_variant(manifest, vwhere)
            offer(Variant(f"{precision} ({spec.artifact})", key, precision, drop))
        else:
            assert spec.precision is not None and spec.accuracy_drop is not None
            offer(Variant(spec.precision, base_key, spec.precision, spec.accuracy_drop))
    names = [v.name for v in kept]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: two variants are the same ({names}) — list each once")
    return kept, dropped


def _pool(site: str, groups: list[NodeGroup], target: Any, scenario: Scenario, i: int) -> Pool:
    first = groups[0]
    usd_per_hour = first.usd_per_hour if first.usd_per_hour is not None else None
    purchase = first.purchase_usd
    lifetime = first.lifetime_years
    if usd_per_hour is None and purchase is None:
        usd_per_hour = target.usd_per_hour
        purchase = target.purchase_usd
        lifetime = lifetime if lifetime is not None else target.lifetime_years
    rented = usd_per_hour is not None and purchase is None
    if not rented and (purchase is None or lifetime is None):
        raise ConfigError(
            f"sites[{i}] node {first.name or first.target}: no purchase_usd/lifetime_years "
            "for an owned node — add them to the node group"
        )
    default_add = CLOUD_DEFAULT_MAX_INSTANCES if rented else 0
    names = {g.name or g.target for g in groups}
    name = names.pop() if len(names) == 1 else target.id
    return Pool(
        id=f"{site}/{name}",
        site=site,
        name=name,
        target_id=target.id,
        tier=target.tier,
        existing=sum(g.count for g in groups),
        max_add=sum(g.max_add if g.max_add is not None else default_add for g in groups),
        added_usd_per_month=0.0 if rented else purchase / (lifetime * 12.0),  # type: ignore[operator]
        instance_usd_per_month=(usd_per_hour or 0.0) * scenario.hours_per_month if rented else 0.0,
        idle_w=target.power_idle_w,
        active_w=target.power_active_w,
        ram_bytes=target.ram_bytes,
    )
