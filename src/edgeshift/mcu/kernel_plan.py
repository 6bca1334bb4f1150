"""Which kernel runs each op, the scratch it needs, and whether it may run in place. Pure.

The MAC kernels' needs come from :mod:`edgeshift.mcu.kernel_specs` (which mirrors
``kernels/es_conv.h``); the other ops are element-wise or small and need no scratch. Element-wise
kernels (``es_clamp``, ``es_add``) read element i before writing it, so they may write over
their first input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeshift.mcu import ir

_MAC_FILES = {"es_common.h", "es_acle.h", "es_conv.h", "es_conv.c", "es_dwconv.c", "es_fc.c"}
_MISC_FILES = {"es_common.h", "es_misc.h", "es_misc.c"}
_MISC_KERNEL = {
    ir.Add: "es_add",
    ir.Softmax: "es_softmax",
    ir.Pad: "es_pad",
    ir.Concat: "es_concat",
    ir.Clamp: "es_clamp",
}
_ELEMENTWISE = (ir.Add, ir.Clamp)


@dataclass
class KernelPlan:
    kernels: dict[int, str] = field(default_factory=dict)  # step -> C function
    scratch_bytes: dict[int, int] = field(default_factory=dict)
    inplace_steps: set[int] = field(default_factory=set)
    below_input_bytes: dict[int, int] = field(default_factory=dict)  # step -> safe distance
    headers: set[str] = field(default_factory=set)
    kernel_files: set[str] = field(default_factory=set)


def row_order_distance(op: ir.Conv2D, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """How far below its input a convolution's output may start and overlap the input.

    ``es_conv2d`` produces output pixels in row-major order, up to two at a time (a pair may
    straddle two rows), and gathers a pair's inputs into scratch before writing it. When
    output row r+1 is written, the lowest input row still to be read is output row r's first
    one, ``r * stride - pad_top``. So the output may start D bytes below the input if, for
    every r, ``(r + 2) * out_row_bytes <= D + max(0, r * stride - pad_top) * in_row_bytes``.
    """
    _, iw, ic = in_shape
    oh, ow, oc = out_shape
    in_row, out_row = iw * ic, ow * oc
    stride, pad_top = op.stride[0], op.pad[0]
    need = max((r + 2) * out_row - max(0, r * stride - pad_top) * in_row for r in range(oh))
    return max(0, need)


def kernel_plan(graph: ir.McuGraph, core: str) -> KernelPlan:
    """The kernel of every op of GRAPH on CORE, with its scratch and in-place permission."""
    from edgeshift.mcu import kernel_specs

    plan = KernelPlan()
    for step, op in enumerate(graph.ops):
        if isinstance(op, ir.Reshape):
            plan.kernels[step] = "(view)"
            continue
        if isinstance(op, ir.Conv2D | ir.DepthwiseConv2D | ir.FullyConnected):
            in_shape = graph.tensors[op.inp].shape
            out_shape = graph.tensors[op.out].shape
            plan.kernels[step] = {
                ir.Conv2D: "es_conv2d", ir.DepthwiseConv2D: "es_dwconv2d",
                ir.FullyConnected: "es_fc",
            }[type(op)]  # fmt: skip
            plan.scratch_bytes[step] = kernel_specs.scratch_bytes(op, in_shape, out_shape, core)
            if kernel_specs.inplace_ok(op, in_shape, out_shape):
                plan.inplace_steps.add(step)
            elif isinstance(op, ir.Conv2D):
                distance = row_order_distance(op, in_shape, out_shape)
                if distance < graph.tensors[op.inp].size_bytes:
                    plan.below_input_bytes[step] = distance
            plan.headers.add("es_conv.h")
            plan.kernel_files |= _MAC_FILES
            continue
        plan.kernels[step] = (
            ("es_maxpool" if op.kind == "max" else "es_avgpool")
            if isinstance(op, ir.Pool2D)
            else _MISC_KERNEL[type(op)]
        )
        if isinstance(op, _ELEMENTWISE):
            plan.inplace_steps.add(step)
        plan.headers.add("es_misc.h")
        plan.kernel_files |= _MISC_FILES
    return plan
