"""What the MAC kernels (``kernels/es_conv.h``) need from the planner and the emitter. Pure.

The kernels take the IR's arrays as they are: int8 weights in the IR layout (Conv2D OHWI,
DepthwiseConv2D HWC, FullyConnected [out, in]), int32 bias, float32 multiplier. Nothing is
repacked at compile time (the DSP path reorders the *input* as it widens it), so the emitter
renders one ``const`` struct per op and one call::

    static const es_conv_t opN = {.in_h, .in_w, .in_c, .out_h, .out_w, .out_c, .kh, .kw,
        .stride_h, .stride_w, .pad_t, .pad_l, .dil_h, .dil_w, .in_zp, .out_zp, .act_min,
        .act_max, .weights, .bias, .mult};
    es_conv2d(&opN, in, out, scratch);      /* es_dwconv2d for DepthwiseConv2D */
    static const es_fc_t opN = {.in_n, .out_n, .in_zp, .out_zp, .act_min, .act_max,
        .weights, .bias, .mult};
    es_fc(&opN, in, out, scratch);

``scratch`` is a 4-byte aligned arena region of :func:`scratch_bytes` bytes (``0``/NULL when
that is 0). In place means ``out == in`` (the same base address), nothing else; see
:func:`inplace_ok`. The path a core compiles (Helium, DSP, portable) changes only the scratch
size, never the arrays.
"""

from __future__ import annotations

from edgeshift.errors import TargetError
from edgeshift.mcu import ir

MacOp = ir.Conv2D | ir.DepthwiseConv2D | ir.FullyConnected

# Cores whose build takes the Helium path (es_acle.h: __ARM_FEATURE_MVE).
MVE_CORES = frozenset({"cortex-m55", "cortex-m85"})


def _ceil(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _size(shape: tuple[int, ...]) -> int:
    total = 1
    for d in shape:
        total *= int(d)
    return total


def scratch_bytes(
    op: MacOp, in_shape: tuple[int, ...], out_shape: tuple[int, ...], core: str
) -> int:
    """Bytes of scratch OP's kernel needs on CORE (mirrors ``ES_*_SCRATCH_BYTES_*``)."""
    if not isinstance(core, str) or not core:
        raise TargetError(f"core {core!r} is not a core id: pass one such as 'cortex-m4'")
    mve = core.strip().lower() in MVE_CORES
    if isinstance(op, ir.Conv2D):
        out_c, kh, kw, in_c = (int(d) for d in op.weights.shape)
        k = kh * kw * in_c
        # Helium: folded int32 biases + two int8 columns; else two int16 columns, and a third
        # when taps straddle the DSP path's groups of 4 (in_c % 4 != 0).
        if mve:
            return 4 * out_c + 2 * _ceil(k, 4)
        return (6 if in_c % 4 else 4) * _ceil(k, 2)
    if isinstance(op, ir.DepthwiseConv2D):
        return 0
    if isinstance(op, ir.FullyConnected):
        in_n = _size(in_shape)
        return _ceil(in_n, 4) if mve else 2 * _ceil(in_n, 2)
    raise TargetError(f"{type(op).__name__} is not a MAC op: es_conv.h has no kernel for it")


def inplace_ok(op: MacOp, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    """Whether OP's kernel may write its output at its input's base address.

    FullyConnected: always (the input is copied to scratch first). Conv2D: a 1x1 kernel,
    stride 1, no padding and out_c <= in_c (pixels go to scratch before their outputs are
    written, and output pixel p ends before input pixel p + 2 begins). DepthwiseConv2D: never.
    """
    if isinstance(op, ir.FullyConnected):
        return True
    if isinstance(op, ir.Conv2D):
        out_c, kh, kw, in_c = (int(d) for d in op.weights.shape)
        return (
            (kh, kw) == (1, 1)
            and tuple(op.stride) == (1, 1)
            and not any(op.pad)
            and out_c <= in_c
            and tuple(in_shape[:2]) == tuple(out_shape[:2])
        )
    return False
