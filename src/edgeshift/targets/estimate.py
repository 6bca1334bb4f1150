"""Does a model fit on a target, how fast, how much energy and money per inference.

The model is a roofline per node: ``max(flops / (peak x efficiency), bytes / bandwidth)``
plus a fixed cost per executed node and per call. Peaks and bandwidths are the target's
catalog numbers; the efficiencies and fixed costs are measured on the host by
:mod:`edgeshift.targets.host` and carried over (overheads scaled by clock). The core,
:func:`estimate_analysis`, is pure: data in, data out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeshift.errors import ShapeError
from edgeshift.model.load import LoadedModel
from edgeshift.targets._node_time import overhead_us, time_one_call
from edgeshift.targets.interval import ErrorModel, Interval, interval_for, load_error_model
from edgeshift.targets.qdq import FLOAT_OUT
from edgeshift.targets.roofline import (
    DEFAULT_EFFICIENCY,
    OP_CLASSES,
    Efficiency,
    efficiency_from_calibration,
)
from edgeshift.targets.schema import BYTES_PER_ELEMENT, Target
from edgeshift.targets.variant import (  # re-exported: compare, plan and tests import them here
    choose_precision,
    default_precision,
    normalize_target_precision,
    runtime_for,
    stored_precision,
    usable_precisions,
)

__all__ = [
    "Estimate",
    "OpClassCost",
    "choose_precision",
    "default_precision",
    "estimate",
    "estimate_analysis",
    "model_display_name",
    "normalize_target_precision",
    "runtime_for",
    "stored_precision",
    "usable_precisions",
]

SECONDS_PER_YEAR = 365.25 * 24 * 3600
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4}


@dataclass
class OpClassCost:
    """One row of the breakdown: all nodes of one op class."""

    op_class: str
    nodes: int
    flops: int
    bytes: int  # weights + activations read and written, at the estimate's precision
    bound: str  # "compute" or "memory": which side of the roofline dominates this class
    ms: float  # time of these nodes in one call, per-node overhead included
    overhead_ms: float  # the per-node dispatch part of ``ms``


@dataclass
class Estimate:
    """What running MODEL on TARGET costs. Infinite figures mean "cannot run" (see fit_reason)."""

    target_id: str
    model: str
    batch: int
    precision: str
    fits: bool
    fit_reason: str
    ram_required_bytes: int
    ram_available_bytes: int
    flash_required_bytes: int | None
    flash_available_bytes: int | None
    latency_ms: float  # one inference call at this batch
    throughput_items_s: float  # items per second at this batch on the whole target
    energy_j: float  # joules per item
    usd_per_million: float  # cost per million items
    breakdown: list[OpClassCost]
    notes: list[str] = field(default_factory=list)
    overhead_ms: float = 0.0  # per-call fixed cost (dispatch, GPU sync and copies) in latency_ms
    streams: int = 1  # concurrent calls behind throughput_items_s
    utilization: float = 1.0
    usd_per_kwh: float = 0.15
    # "roofline" (extrapolated from the host's calibration) or "compiled" (measured figures of
    # an `edgeshift compile --verify` of this very model file for the target's core)
    basis: str = "roofline"
    runtime: str = "onnxruntime"  # the runtime whose speed this estimates
    recipe: str | None = None  # an optimize artifact's recipe (from its manifest)
    measured: Any | None = None  # a BenchResult when ``estimate --measure`` timed it
    # latency_ms x the measured error of such estimates (targets/interval.py): the range the
    # real latency falls in with probability interval_coverage; None: nothing measured
    interval_ms: tuple[float, float] | None = None
    interval_coverage: float = 0.0
    interval_basis: str = ""  # what the interval rests on (measured cases, widening)

    @property
    def variant(self) -> str:
        """What is estimated, in words: ``onnxruntime fp32`` (+ `` · recipe R``)."""
        text = f"{self.runtime} {self.precision}"
        return f"{text} · recipe {self.recipe}" if self.recipe else text


def _check_shapes(analysis: Any) -> None:
    guessed = [a for a in analysis.assumed if not a.rstrip().endswith("(batch)")]
    if guessed:
        what, _, value = guessed[0].split(";")[0].partition(" = ")
        # "input_ids[1] (seq)": name the model's own dim (or the input) in the example
        dim = what[what.find("(") + 1 : what.rfind(")")] if "(" in what else what.split("[")[0]
        raise ShapeError(
            f"cannot estimate: {what} = {value} was guessed — the cost depends on it; "
            f"give the real size with --shape NAME=DIMS (e.g. --shape {dim}={value})"
        )


def _input_bytes(analysis: Any) -> int:
    total = 0
    for spec in analysis.inputs:
        shape = analysis.input_shapes.get(spec.name, ())
        total += math.prod(shape) * _ITEMSIZE.get(spec.dtype, 1)
    return total


def _analysis_batch(analysis: Any) -> int:
    for spec in analysis.inputs:
        shape = analysis.input_shapes.get(spec.name)
        if shape:
            return int(shape[0])
    return 1


def estimate_analysis(
    analysis: Any,
    target: Target,
    *,
    model_name: str = "model",
    batch: int | None = None,
    precision: str | None = None,
    efficiency: Efficiency | None = None,
    usd_per_kwh: float = 0.15,
    utilization: float = 1.0,
    compiled: Any | None = None,
    manifest: Mapping[str, Any] | None = None,
    error_model: ErrorModel | None = None,
    qdq_float_nodes: Mapping[str, frozenset[str]] | None = None,
) -> Estimate:
    """The pure estimate: a ModelAnalysis (or anything with its fields) on TARGET.

    QDQ_FLOAT_NODES (runtime -> ``targets.qdq.qdq_float_nodes`` of the model's graph) names
    the MAC ops of a QDQ model that runtime leaves in float: at int8 they cost fp32 time;
    under ``qdq.FLOAT_OUT``, the int8 MatMuls ONNX Runtime runs with a float output (they
    take the ``gemm_float_out`` curve where the calibration has one).

    MANIFEST (an optimize artifact's) names the runtime, precision and recipe assumed;
    without one the precision defaults as in :func:`default_precision`.

    COMPILED (an ``edgeshift.mcu.feedback.CompiledFigures``) replaces the extrapolation on a
    Cortex-M target: flash and RAM as the linker reported them, time as the instructions
    QEMU counted x the core's cycles per instruction at the target's clock."""
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], not {utilization}")
    if compiled is not None and target.tier == "mcu":
        return _compiled_estimate(
            analysis, target, compiled, model_name, batch, usd_per_kwh, utilization
        )
    eff = efficiency or DEFAULT_EFFICIENCY
    if target.calibration is not None and efficiency is None:
        eff = efficiency_from_calibration(target.calibration, target.clock_ghz.value)
    notes: list[str] = []
    stored = stored_precision(analysis)
    chosen = precision or default_precision(target, stored, manifest)
    runtime = runtime_for(target, chosen, manifest)
    eff = eff.for_runtime(runtime)  # what that runtime reached on the host, where measured
    recipe = (manifest or {}).get("recipe") or None
    recipe_name = None if recipe is None else str(recipe)
    model_batch = _analysis_batch(analysis)
    batch = batch or model_batch
    calls = max(1, math.ceil(batch / model_batch))
    if calls > 1:
        notes.append(
            f"the analysis is at batch {model_batch}: batch {batch} is {calls} calls in a row"
        )
    byte_scale = BYTES_PER_ELEMENT[chosen] / BYTES_PER_ELEMENT[stored]
    if chosen == "int8" and stored != "int8":
        notes.append("int8 of a float model: this estimates a quantized variant — build it "
                     "with `edgeshift optimize`")  # fmt: skip
    weight_bytes = int(analysis.weight_bytes * byte_scale)
    act_bytes = int(analysis.peak_activation_bytes * byte_scale)
    overhead_bytes = target.runtime_overhead.bytes
    if target.calibration is not None:
        overhead_bytes = target.calibration.runtime_overhead_bytes

    # Fit: MCUs execute weights from flash (XIP) and keep activations in SRAM.
    flash_required: int | None = None
    if target.tier == "mcu":
        ram_required = act_bytes + overhead_bytes
        code = target.runtime_code.bytes if target.runtime_code else 0
        flash_required = weight_bytes + code
    else:
        ram_required = weight_bytes + act_bytes + overhead_bytes
    ram_avail = target.ram_bytes
    reasons: list[str] = []
    if chosen not in target.precisions:
        reasons.append(
            f"{target.id} does not run {chosen} (it runs {', '.join(target.precisions)})"
        )
    if ram_required > ram_avail:
        reasons.append(
            f"needs {_mib(ram_required)} RAM ({_ram_parts(target, weight_bytes, act_bytes, overhead_bytes)})"
            f" but {target.id} has {_mib(ram_avail)}"
        )
    if (
        flash_required is not None
        and target.flash_bytes is not None
        and flash_required > target.flash_bytes
    ):
        reasons.append(
            f"needs {_mib(flash_required)} flash (weights {_mib(weight_bytes)} + runtime code) "
            f"but {target.id} has {_mib(target.flash_bytes)}"
        )
    fits = not reasons
    if fits:
        fit_reason = (
            f"fits: {_mib(ram_required)} of {_mib(ram_avail)} RAM "
            f"({_ram_parts(target, weight_bytes, act_bytes, overhead_bytes)})"
        )
        if flash_required is not None and target.flash_bytes is not None:
            fit_reason += f"; {_mib(flash_required)} of {_mib(target.flash_bytes)} flash"
    else:
        fit_reason = "does not fit: " + "; ".join(reasons)

    if chosen not in target.precisions:
        return Estimate(
            target.id, model_name, batch, chosen, False, fit_reason, ram_required, ram_avail,
            flash_required, target.flash_bytes, math.inf, 0.0, math.inf, math.inf, [],
            notes, utilization=utilization, usd_per_kwh=usd_per_kwh, runtime=runtime,
            recipe=recipe_name,
        )  # fmt: skip

    nodes = list(analysis.nodes)
    model_bytes = weight_bytes + act_bytes
    float_nodes: frozenset[str] = frozenset()
    float_out: frozenset[str] = frozenset()
    if chosen == "int8" and qdq_float_nodes:
        float_nodes = qdq_float_nodes.get(runtime, frozenset()) & {n.name for n in nodes}
        if runtime == "onnxruntime":
            float_out = qdq_float_nodes.get(FLOAT_OUT, frozenset())
    if float_nodes:
        notes.append(
            f"{len(float_nodes)} MAC ops run in float on {runtime} (left float by the "
            "quantizer or not fused into int8 kernels by the runtime): estimated at fp32 speed"
        )
    single = time_one_call(
        nodes, target, eff, chosen, stored, 1, model_bytes, float_nodes, model_batch, float_out
    )
    call_oh_s = overhead_us(target, eff, "call", chosen) * 1e-6
    if target.tier == "gpu" and target.host_link_gbs is not None:
        call_oh_s += _input_bytes(analysis) / (target.host_link_gbs.value * 1e9)
    latency_s = calls * (single.total_s + call_oh_s)

    # Throughput: one call on all cores, or one call per core side by side (small models
    # cannot use many cores in one call). GPUs run one stream.
    streams = max(1, int(target.cores.value)) if target.tier != "gpu" else 1
    throughput = batch / latency_s
    if streams > 1:
        split = time_one_call(
            nodes, target, eff, chosen, stored, streams, model_bytes, float_nodes, model_batch,
            float_out,
        )  # fmt: skip
        multi = streams * batch / (calls * (split.total_s + call_oh_s))
        if multi > throughput:
            throughput = multi
            notes.append(f"throughput assumes {streams} concurrent calls, one per core")
        else:
            streams = 1

    unknown = [n.op_type for n in nodes if not n.counted]
    if unknown:
        notes.append(f"{len(unknown)} nodes without a cost model ({', '.join(sorted(set(unknown))[:4])}): "
                     "their FLOPs count as zero")  # fmt: skip

    breakdown = []
    for cls in OP_CLASSES:
        if cls not in single.per_class:
            continue
        n, flops, nbytes, t_c, t_m, oh = single.per_class[cls]
        breakdown.append(
            OpClassCost(
                cls,
                int(n),
                int(flops),
                int(nbytes),
                "compute" if t_c >= t_m else "memory",
                calls * (t_c + t_m + oh) * 1e3,
                calls * oh * 1e3,
            )
        )

    energy_j, usd_per_item = _energy_and_cost(target, throughput, utilization, usd_per_kwh, notes)
    interval = interval_for(
        load_error_model() if error_model is None else error_model,
        tier=target.tier,
        on_host=target.calibration is not None,
        runtime=runtime,
        precision=chosen,
        calibrated=eff.measured,
    )
    return Estimate(
        target_id=target.id,
        model=model_name,
        batch=batch,
        precision=chosen,
        fits=fits,
        fit_reason=fit_reason,
        ram_required_bytes=ram_required,
        ram_available_bytes=ram_avail,
        flash_required_bytes=flash_required,
        flash_available_bytes=target.flash_bytes,
        latency_ms=latency_s * 1e3,
        throughput_items_s=throughput,
        energy_j=energy_j,
        usd_per_million=usd_per_item * 1e6,
        breakdown=breakdown,
        notes=notes,
        overhead_ms=calls * call_oh_s * 1e3,
        streams=streams,
        utilization=utilization,
        usd_per_kwh=usd_per_kwh,
        runtime=runtime,
        recipe=recipe_name,
        **_interval_fields(interval, latency_s * 1e3),
    )


def _interval_fields(interval: Interval | None, latency_ms: float) -> dict[str, Any]:
    if interval is None:
        basis = "no interval: no measured error of such estimates (estimate_error.yaml)"
        return {"interval_ms": None, "interval_coverage": 0.0, "interval_basis": basis}
    return {
        "interval_ms": interval.around(latency_ms),
        "interval_coverage": interval.coverage,
        "interval_basis": interval.basis,
    }


def _compiled_estimate(
    analysis: Any,
    target: Target,
    compiled: Any,
    model_name: str,
    batch: int | None,
    usd_per_kwh: float,
    utilization: float,
) -> Estimate:
    from edgeshift.mcu.cores import CORES

    core = CORES[compiled.core]
    batch = batch or _analysis_batch(analysis)
    cycles = compiled.instructions_per_inference * core.cycles_per_instruction
    latency_s = batch * cycles / (target.clock_ghz.value * 1e9)
    ram, flash = compiled.ram_bytes, compiled.flash_bytes
    reasons = []
    if ram > target.ram_bytes:
        reasons.append(
            f"needs {_mib(ram)} RAM (measured) but {target.id} has {_mib(target.ram_bytes)}"
        )
    if target.flash_bytes is not None and flash > target.flash_bytes:
        reasons.append(
            f"needs {_mib(flash)} flash (measured) but {target.id} has {_mib(target.flash_bytes)}"
        )
    fit_reason = (
        "does not fit: " + "; ".join(reasons)
        if reasons
        else f"fits: {_mib(ram)} of {_mib(target.ram_bytes)} RAM (arena + .data + .bss, measured); "
        f"{_mib(flash)} of {_mib(target.flash_bytes or 0)} flash (measured)"
    )
    notes = [
        f"measured: compiled by `edgeshift compile` for {core.id} ({compiled.created}, "
        f"{compiled.artifact}): {compiled.instructions_per_inference:,.0f} instructions per "
        f"inference x {core.cycles_per_instruction} cycles per instruction at "
        f"{target.clock_ghz.value * 1e3:g} MHz",
        f"cycles per instruction: {core.cpi_reason}",
    ]
    throughput = batch / latency_s
    energy_j, usd_per_item = _energy_and_cost(target, throughput, utilization, usd_per_kwh, notes)
    return Estimate(
        target_id=target.id, model=model_name, batch=batch, precision="int8",
        fits=not reasons, fit_reason=fit_reason, ram_required_bytes=ram,
        ram_available_bytes=target.ram_bytes, flash_required_bytes=flash,
        flash_available_bytes=target.flash_bytes, latency_ms=latency_s * 1e3,
        throughput_items_s=throughput, energy_j=energy_j, usd_per_million=usd_per_item * 1e6,
        breakdown=[], notes=notes, utilization=utilization, usd_per_kwh=usd_per_kwh, basis="compiled",
        runtime="edgeshift compile (C)",
        **_interval_fields(
            interval_for(None, tier="mcu", on_host=False, runtime="", precision="int8",
                         calibrated=True, compiled=True),
            latency_s * 1e3,
        ),
    )  # fmt: skip


def _energy_and_cost(
    target: Target, throughput: float, utilization: float, usd_per_kwh: float, notes: list[str]
) -> tuple[float, float]:
    """Joules and USD per item at THROUGHPUT; appends how the cost was made up to NOTES."""
    # Energy: active power while busy, idle power for the rest of the wall time.
    idle, active = target.power_idle_w, target.power_active_w
    busy_s_per_item = 1.0 / throughput
    wall_s_per_item = busy_s_per_item / utilization
    energy_j = (active - idle) * busy_s_per_item + idle * wall_s_per_item
    if target.usd_per_hour is not None:
        usd_per_item = target.usd_per_hour / 3600 * wall_s_per_item  # power is in the price
        notes.append(
            f"cost: {target.usd_per_hour} USD/h over {throughput * utilization:.4g} items/s"
        )
    else:
        assert target.purchase_usd is not None and target.lifetime_years is not None
        amortized_usd_s = target.purchase_usd / (target.lifetime_years * SECONDS_PER_YEAR)
        usd_per_item = amortized_usd_s * wall_s_per_item + energy_j / 3.6e6 * usd_per_kwh
        notes.append(
            f"cost: {target.purchase_usd} USD over {target.lifetime_years} years + energy at "
            f"{usd_per_kwh} USD/kWh, at {utilization:.0%} utilization"
        )
    return energy_j, usd_per_item


def model_display_name(path: Path) -> str:
    """``resnet`` for resnet.onnx; the directory's name for artifacts and zoo ``model.onnx``."""
    if path.suffix != ".onnx":
        return path.name
    return path.parent.name if path.stem == "model" and path.parent.name else path.stem


def _mib(n: float) -> str:
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    if n < 1 << 30:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / (1 << 30):.2f} GiB"


def _ram_parts(target: Target, weights: int, acts: int, overhead: int) -> str:
    if target.tier == "mcu":
        return f"activations {_mib(acts)} + runtime {_mib(overhead)}; weights in flash"
    return f"weights {_mib(weights)} + activations {_mib(acts)} + runtime {_mib(overhead)}"


def estimate(
    model: str | Path | LoadedModel | Any,
    target: str | Target,
    *,
    batch: int = 1,
    precision: str | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    usd_per_kwh: float = 0.15,
    utilization: float = 1.0,
    calibration: Any | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> Estimate:
    """Estimate MODEL (a .onnx path, artifact dir, LoadedModel or ModelAnalysis) on TARGET.

    TARGET is a catalog id, ``"host"`` or a :class:`Target`. PRECISION defaults as in
    :func:`default_precision` (on the host: what ``bench`` runs). A model given as a file is
    first checked as ``bench`` loads it (ONNX checker, then the runtime the estimate names
    opens it): a model that cannot run raises ModelError and is not estimated. An analysis
    is taken as already checked (see :func:`edgeshift.runtime.check.check_runs`); MANIFEST
    then names its artifact.
    CALIBRATION (a ``host.PinnedCalibration``) pins the efficiencies; otherwise they come
    from the cached host calibration when there is one (never measured here unless TARGET
    is ``"host"``). Raises TargetError, ModelError or ShapeError.
    """
    from edgeshift.targets.catalog import HOST_ID, get_target
    from edgeshift.targets.host import cached_efficiency, host_target

    if batch < 1:
        raise ShapeError(f"--batch must be >= 1, not {batch}")
    if isinstance(target, str):
        pinned_host = target == HOST_ID and calibration is not None
        tgt = host_target(calibration=calibration) if pinned_host else get_target(target)
    else:
        tgt = target
    if precision is not None:
        precision = normalize_target_precision(precision)
    if hasattr(model, "nodes") and hasattr(model, "peak_activation_bytes"):
        analysis, name = model, "model"
    else:
        from edgeshift.model.analysis import analyze
        from edgeshift.model.load import load_model

        loaded = model if isinstance(model, LoadedModel) else load_model(model)  # checker
        analysis = analyze(loaded, shapes=shapes, batch=batch)
        name = model_display_name(loaded.path)
        manifest = loaded.manifest
        _check_shapes(analysis)
        stored = stored_precision(analysis)
        chosen = precision or default_precision(tgt, stored, manifest)
        from edgeshift.runtime.check import check_runs

        check_runs(loaded, runtime_for(tgt, chosen, manifest), name, analysis)
    _check_shapes(analysis)
    if tgt.calibration is not None:
        eff = None
    elif calibration is not None:
        eff = calibration.efficiency()
    else:
        eff = cached_efficiency()
    compiled = None
    source = getattr(analysis, "source_path", None)
    core = getattr(tgt, "mcu_core", None)
    if core and source and precision in (None, "int8"):
        from edgeshift.mcu.feedback import lookup

        compiled = lookup(source, core)
    from edgeshift.targets.qdq import float_nodes_by_runtime

    float_nodes = float_nodes_by_runtime(source, getattr(analysis, "op_histogram", {}))
    return estimate_analysis(
        analysis, tgt, model_name=name, batch=batch, precision=precision, efficiency=eff,
        usd_per_kwh=usd_per_kwh, utilization=utilization, compiled=compiled, manifest=manifest,
        qdq_float_nodes=float_nodes,
    )  # fmt: skip
