"""One call of a model on a target, node by node: the roofline per node (``max(FLOPs /
(peak x efficiency), bytes / bandwidth)``) plus the dispatch cost of every node that runs.
Pure: the analysis' nodes, the target and the efficiencies in, seconds per op class out
(:func:`time_one_call`; :mod:`edgeshift.targets.estimate` builds the estimate around it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeshift.targets.roofline import Efficiency, conv_width, kernel_class, op_class
from edgeshift.targets.schema import BYTES_PER_ELEMENT, Target


def overhead_us(
    target: Target,
    eff: Efficiency,
    which: str,
    precision: str,
    cls: str = "gemm",
    nbytes: float = 0.0,
) -> float:
    q = target.call_overhead_us if which == "call" else target.op_overhead_us
    if q is not None:
        return q.value
    call, op = eff.overheads_us(precision, cls, nbytes)
    # A runtime's dispatch is serial code: it scales with the clock, not the core count.
    return (call if which == "call" else op) * eff.reference_clock_ghz / target.clock_ghz.value


def _rows(node: Any, stored: str) -> float | None:
    """M of a GEMM / output positions of a Conv: MACs per weight element (None: no weights)."""
    elems = node.weight_bytes / BYTES_PER_ELEMENT[stored]
    return node.macs / elems if node.macs and elems >= 1 else None


def _fused(node: Any, prev: Any | None, cls: str, prev_cls: str | None) -> bool:
    # Runtimes fuse a bias add / activation into the GEMM or Conv before it: same-sized
    # output, read straight from that node's result, no dispatch and no memory traffic.
    return (
        cls == "elementwise"
        and prev is not None
        and prev_cls in ("gemm", "conv")
        and node.output_bytes == prev.output_bytes
        and node.input_bytes <= 2 * prev.output_bytes
    )


@dataclass
class _Timing:
    total_s: float
    # op class -> [nodes, flops, bytes, compute-bound s, memory-bound s, dispatch s]
    per_class: dict[str, list[float]]


def time_one_call(
    nodes: list[Any],
    target: Target,
    eff: Efficiency,
    precision: str,
    stored: str,
    share: int,
    model_bytes: float,
    float_nodes: frozenset[str] = frozenset(),
    batch: int = 1,
    float_out: frozenset[str] = frozenset(),
) -> _Timing:
    """Seconds of one call when the target's compute and bandwidth are split SHARE ways.
    FLOAT_NODES run at fp32 whatever PRECISION is (convs of a QDQ model the runtime does
    not fuse into int8 kernels: ``targets/qdq.py``)."""
    byte_scale = BYTES_PER_ELEMENT[precision] / BYTES_PER_ELEMENT[stored]
    peak = target.peak(precision) * 1e9 / share
    float_peak = target.peak("fp32") * 1e9 / share if float_nodes else peak
    bw = target.mem_bandwidth_gbs.value * 1e9 * eff.memory / share
    llc = target.llc.bytes / share if target.llc is not None else 0.0
    all_cached = llc > 0 and model_bytes <= llc
    cache_bw = bw * eff.cache_speedup
    per_class: dict[str, list[float]] = {}
    total = 0.0
    prev, prev_cls, fused_run = None, None, 0
    for node in nodes:
        cls = op_class(node.op_type)
        row = per_class.setdefault(cls, [0, 0, 0, 0.0, 0.0, 0.0])
        row[0] += 1
        if cls == "free":
            continue
        if fused_run < 2 and _fused(node, prev, cls, prev_cls):
            fused_run += 1
            continue  # prev / prev_cls stay on the GEMM or Conv it fused into
        fused_run = 0
        w_bytes = node.weight_bytes * byte_scale
        a_bytes = (node.input_bytes + node.output_bytes) * byte_scale
        rows = _rows(node, stored) if cls in ("gemm", "conv") else None
        kind, size = kernel_class(node, stored)  # the host measured each kernel class apart
        width = conv_width(node, stored) if kind == "conv_dense" else None
        node_precision, node_peak = precision, peak
        if node.name in float_nodes:
            node_precision, node_peak = "fp32", float_peak
        elif (
            node.name in float_out
            and kind == "gemm"
            and f"{precision}/gemm_float_out" in (eff.kernel_gops)
        ):
            kind = "gemm_float_out"  # ORT's MatMulIntegerToFloat, measured apart
        t_c = (
            node.flops
            / (node_peak * eff.compute_for(cls, node_precision, rows, kind, size, width, batch))
            if node.flops
            else 0.0
        )
        if all_cached:
            t_m = (w_bytes + a_bytes) / cache_bw
        else:
            a_bw = cache_bw if llc and a_bytes <= llc / 2 else bw
            t_m = w_bytes / bw + a_bytes / a_bw
        row[1] += node.flops
        row[2] += int(w_bytes + a_bytes)
        row[3] += t_c if t_c >= t_m else 0.0
        row[4] += t_m if t_m > t_c else 0.0
        op_oh = overhead_us(target, eff, "op", precision, cls, (w_bytes + a_bytes) / share) * 1e-6
        row[5] += op_oh
        total += max(t_c, t_m) + op_oh
        prev, prev_cls = node, cls
    return _Timing(total, per_class)
