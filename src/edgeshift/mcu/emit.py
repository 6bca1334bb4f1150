"""The C emitter: an IR graph, its memory plan and its kernel plan in; C source text out. Pure.

``model.c`` holds the weights and quantization constants as ``const`` arrays (flash), one
``const`` parameter struct per op, the arena as one static array of the planned size, and
``model_infer``: copy the inputs into the arena, call each op's kernel at its planned offsets,
copy the outputs out. No malloc, no interpreter, nothing beyond libc/libm and the kernels
(copied beside it, so the directory builds on its own). An op is rendered by one function in
``_RENDER``, keyed by its IR type: adding an op is adding a row.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeshift.mcu import ir
from edgeshift.mcu.kernel_plan import KernelPlan
from edgeshift.mcu.memory import MemoryPlan

KERNEL_DIR = Path(__file__).parent / "kernels"
FIRMWARE_DIR = Path(__file__).parent / "firmware"
ARENA = "model_arena"
_WRAP = 24  # numbers per line in array initialisers


@dataclass
class _Ctx:
    graph: ir.McuGraph
    plan: MemoryPlan
    kplan: KernelPlan
    decls: list[str] = field(default_factory=list)

    def at(self, tensor: str) -> str:
        return f"{ARENA} + {self.plan.tensor_offsets[tensor]}"

    def scratch(self, step: int) -> str:
        off = self.plan.scratch_offsets.get(step)
        return "0" if off is None else f"{ARENA} + {off}"

    def array(self, name: str, ctype: str, values: np.ndarray) -> str:
        self.decls.append(_array(name, ctype, values))
        return name


def _float_literal(v: float | np.floating) -> str:
    # Hex floats round-trip exactly: the multiplier the kernels use is the one lowering chose.
    f = float(np.float32(v))
    return f"{f.hex()}f" if np.isfinite(f) else "0.0f"


def _array(name: str, ctype: str, values: np.ndarray) -> str:
    flat = np.ascontiguousarray(values).reshape(-1)
    if ctype == "float":
        items = [_float_literal(v) for v in flat.tolist()]
    else:
        items = [str(int(v)) for v in flat.tolist()]
    lines = [", ".join(items[i : i + _WRAP]) for i in range(0, len(items), _WRAP)] or ["0"]
    body = ",\n    ".join(lines)
    return (
        f"static const {ctype} {name}[{max(len(items), 1)}] __attribute__((aligned(4))) = {{\n"
        f"    {body}\n}};"
    )


def _struct(ctype: str, name: str, fields: dict[str, Any]) -> str:
    body = ",\n".join(f"    .{k} = {v}" for k, v in fields.items())
    return f"static const {ctype} {name} = {{\n{body}\n}};"


def _mac_fields(ctx: _Ctx, step: int, op: Any) -> dict[str, Any]:
    return {
        "weights": ctx.array(f"w{step}", "int8_t", op.weights.astype(np.int8)),
        "bias": ctx.array(f"b{step}", "int32_t", op.bias.astype(np.int32)),
        "mult": ctx.array(f"m{step}", "float", op.multiplier.astype(np.float32)),
    }


def _conv(ctx: _Ctx, step: int, op: ir.Conv2D | ir.DepthwiseConv2D) -> str:
    g = ctx.graph
    ih, iw, ic = g.tensors[op.inp].shape
    oh, ow, oc = g.tensors[op.out].shape
    kh, kw = op.weights.shape[1:3] if isinstance(op, ir.Conv2D) else op.weights.shape[0:2]
    fields = {
        "in_h": ih, "in_w": iw, "in_c": ic, "out_h": oh, "out_w": ow, "out_c": oc,
        "kh": kh, "kw": kw, "stride_h": op.stride[0], "stride_w": op.stride[1],
        "pad_t": op.pad[0], "pad_l": op.pad[1], "dil_h": op.dilation[0], "dil_w": op.dilation[1],
        "in_zp": g.tensors[op.inp].zero_point, "out_zp": g.tensors[op.out].zero_point,
        "act_min": op.act_min, "act_max": op.act_max,
        **_mac_fields(ctx, step, op),
    }  # fmt: skip
    ctx.decls.append(_struct("es_conv_t", f"op{step}", fields))
    fn = "es_conv2d" if isinstance(op, ir.Conv2D) else "es_dwconv2d"
    return f"{fn}(&op{step}, {ctx.at(op.inp)}, {ctx.at(op.out)}, {ctx.scratch(step)});"


def _fc(ctx: _Ctx, step: int, op: ir.FullyConnected) -> str:
    g = ctx.graph
    fields = {
        "in_n": g.tensors[op.inp].size_bytes, "out_n": g.tensors[op.out].size_bytes,
        "in_zp": g.tensors[op.inp].zero_point, "out_zp": g.tensors[op.out].zero_point,
        "act_min": op.act_min, "act_max": op.act_max,
        **_mac_fields(ctx, step, op),
    }  # fmt: skip
    ctx.decls.append(_struct("es_fc_t", f"op{step}", fields))
    return f"es_fc(&op{step}, {ctx.at(op.inp)}, {ctx.at(op.out)}, {ctx.scratch(step)});"


def _reshape(ctx: _Ctx, step: int, op: ir.Reshape) -> str:
    src, dst = ctx.plan.tensor_offsets[op.inp], ctx.plan.tensor_offsets[op.out]
    if src == dst:
        return f"/* step {step}: reshape {op.out} is a view of {op.inp} */"
    n = ctx.graph.tensors[op.out].size_bytes
    return f"memmove({ctx.at(op.out)}, {ctx.at(op.inp)}, {n});"


def _pool(ctx: _Ctx, step: int, op: ir.Pool2D) -> str:
    from edgeshift.mcu.reference import global_avgpool_scale, is_global_pool

    g = ctx.graph
    x, y = g.tensors[op.inp], g.tensors[op.out]
    ih, iw, c = x.shape
    oh, ow, _ = y.shape
    if op.kind == "max":
        kind, fn = "ES_POOL_MAX", "es_maxpool"
    elif is_global_pool(g, op):
        kind, fn = "ES_POOL_AVG_GLOBAL", "es_avgpool"
    else:
        kind, fn = "ES_POOL_AVG", "es_avgpool"
    count = op.kernel[0] * op.kernel[1]
    fields = {
        "in_h": ih, "in_w": iw, "channels": c, "out_h": oh, "out_w": ow,
        "kernel_h": op.kernel[0], "kernel_w": op.kernel[1],
        "stride_h": op.stride[0], "stride_w": op.stride[1],
        "pad_top": op.pad[0], "pad_left": op.pad[1], "kind": kind,
        "count_include_pad": int(op.count_include_pad),
        "in_zp": x.zero_point, "out_zp": y.zero_point,
        "in_scale": _float_literal(x.scale), "out_scale": _float_literal(y.scale),
        "global_scale": _float_literal(global_avgpool_scale(x.scale, y.scale, count)),
    }  # fmt: skip
    ctx.decls.append(_struct("es_pool_t", f"op{step}", fields))
    return f"{fn}(&op{step}, {ctx.at(op.inp)}, {ctx.at(op.out)});"


def _add(ctx: _Ctx, step: int, op: ir.Add) -> str:
    from edgeshift.mcu.reference import add_params

    g = ctx.graph
    ra, rb, fixed = add_params(g.tensors[op.a], g.tensors[op.b], g.tensors[op.out])
    fields = {
        "size": g.tensors[op.out].size_bytes, "ratio_a": _float_literal(ra),
        "ratio_b": _float_literal(rb), "fixed": _float_literal(fixed),
        "act_min": op.act_min, "act_max": op.act_max,
    }  # fmt: skip
    ctx.decls.append(_struct("es_add_t", f"op{step}", fields))
    return f"es_add(&op{step}, {ctx.at(op.a)}, {ctx.at(op.b)}, {ctx.at(op.out)});"


def _softmax(ctx: _Ctx, step: int, op: ir.Softmax) -> str:
    from edgeshift.mcu.reference import softmax_table, softmax_y_scale

    g = ctx.graph
    x, y = g.tensors[op.inp], g.tensors[op.out]
    length = x.shape[-1]
    fields = {
        "rows": x.size_bytes // length, "length": length,
        "table": ctx.array(f"t{step}", "float", softmax_table(x.scale, length)),
        "y_scale": _float_literal(softmax_y_scale(y.scale)), "y_zp": y.zero_point,
    }  # fmt: skip
    ctx.decls.append(_struct("es_softmax_t", f"op{step}", fields))
    return f"es_softmax(&op{step}, {ctx.at(op.inp)}, {ctx.at(op.out)});"


def _pad_op(ctx: _Ctx, step: int, op: ir.Pad) -> str:
    x = ctx.graph.tensors[op.inp]
    ih, iw, c = x.shape
    fields = {
        "in_h": ih, "in_w": iw, "channels": c, "pad_top": op.pad[0], "pad_left": op.pad[1],
        "pad_bottom": op.pad[2], "pad_right": op.pad[3], "zero_point": x.zero_point,
    }  # fmt: skip
    ctx.decls.append(_struct("es_pad_t", f"op{step}", fields))
    return f"es_pad(&op{step}, {ctx.at(op.inp)}, {ctx.at(op.out)});"


def _concat(ctx: _Ctx, step: int, op: ir.Concat) -> str:
    g = ctx.graph
    xs = [g.tensors[n] for n in op.inputs]
    y = g.tensors[op.out]
    fields = {
        "n_inputs": len(xs),
        "pixels": int(np.prod(y.shape[:-1], dtype=np.int64)),
        "channels": ctx.array(f"cc{step}", "uint16_t", np.array([x.shape[-1] for x in xs])),
        "in_scale": ctx.array(f"cs{step}", "float", np.array([x.scale for x in xs], np.float32)),
        "in_zp": ctx.array(f"cz{step}", "int32_t", np.array([x.zero_point for x in xs])),
        "out_scale": _float_literal(y.scale), "out_zp": y.zero_point,
    }  # fmt: skip
    ctx.decls.append(_struct("es_concat_t", f"op{step}", fields))
    ins = ", ".join(ctx.at(n) for n in op.inputs)
    return f"es_concat(&op{step}, (const int8_t *const[]){{{ins}}}, {ctx.at(op.out)});"


def _clamp(ctx: _Ctx, step: int, op: ir.Clamp) -> str:
    fields = {
        "size": ctx.graph.tensors[op.out].size_bytes,
        "act_min": op.act_min, "act_max": op.act_max,
    }  # fmt: skip
    ctx.decls.append(_struct("es_clamp_t", f"op{step}", fields))
    return f"es_clamp(&op{step}, {ctx.at(op.inp)}, {ctx.at(op.out)});"


_RENDER: dict[type, Callable[[_Ctx, int, Any], str]] = {
    ir.Conv2D: _conv,
    ir.DepthwiseConv2D: _conv,
    ir.FullyConnected: _fc,
    ir.Reshape: _reshape,
    ir.Pool2D: _pool,
    ir.Add: _add,
    ir.Softmax: _softmax,
    ir.Pad: _pad_op,
    ir.Concat: _concat,
    ir.Clamp: _clamp,
}


def _macro(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def _model_h(graph: ir.McuGraph, plan: MemoryPlan) -> str:
    lines = [
        "/* Generated by edgeshift compile — do not edit. */",
        "#ifndef MODEL_H",
        "#define MODEL_H",
        "",
        "#include <stdint.h>",
        "",
        f'#define MODEL_NAME "{graph.name}"',
        f"#define MODEL_INPUT_BYTES {sum(graph.tensors[n].size_bytes for n in graph.inputs)}",
        f"#define MODEL_OUTPUT_BYTES {sum(graph.tensors[n].size_bytes for n in graph.outputs)}",
        f"#define MODEL_ARENA_BYTES {plan.arena_bytes}",
        f"#define MODEL_MACS {graph.macs()}",
        "",
        "/* Inputs and outputs, in this order inside in[] and out[]: int8, stored layout "
        "(NHWC, no batch), real = scale * (q - zero_point). */",
    ]
    for kind, names in (("INPUT", graph.inputs), ("OUTPUT", graph.outputs)):
        for i, name in enumerate(names):
            t = graph.tensors[name]
            lines += [
                f"#define MODEL_{kind}{i}_BYTES {t.size_bytes}  /* {name}: "
                f"{'x'.join(map(str, t.shape))} */",
                f"#define MODEL_{kind}{i}_SCALE {_float_literal(t.scale)}",
                f"#define MODEL_{kind}{i}_ZERO_POINT {t.zero_point}",
            ]
    lines += [
        "",
        "/* One inference: in holds MODEL_INPUT_BYTES, out receives MODEL_OUTPUT_BYTES. "
        "Returns 0. Not reentrant: one static arena. */",
        "int model_infer(const int8_t *in, int8_t *out);",
        "",
        "#endif",
        "",
    ]
    return "\n".join(lines)


def _model_c(graph: ir.McuGraph, plan: MemoryPlan, kplan: KernelPlan) -> str:
    ctx = _Ctx(graph, plan, kplan)
    body: list[str] = []
    offset = 0
    for name in graph.inputs:
        n = graph.tensors[name].size_bytes
        body.append(f"memcpy({ctx.at(name)}, in + {offset}, {n});")
        offset += n
    for step, op in enumerate(graph.ops):
        render = _RENDER.get(type(op))
        if render is None:
            raise NotImplementedError(f"no C rendering for IR op {type(op).__name__}")
        body.append(f"/* {step}: {type(op).__name__} -> {op.out} */")
        body.append(render(ctx, step, op))
    offset = 0
    for name in graph.outputs:
        n = graph.tensors[name].size_bytes
        body.append(f"memcpy(out + {offset}, {ctx.at(name)}, {n});")
        offset += n
    headers = sorted({f'#include "{h}"' for h in kplan.headers})
    return "\n".join(
        [
            "/* Generated by edgeshift compile — do not edit.",
            f" * {graph.name}: {len(graph.ops)} ops, {graph.macs():,} MACs, arena "
            f"{plan.arena_bytes:,} B ({plan.method}). */",
            "#include <string.h>",
            '#include "model.h"',
            *headers,
            "",
            f"static int8_t {ARENA}[MODEL_ARENA_BYTES] __attribute__((aligned(8)));",
            "",
            *ctx.decls,
            "",
            "int model_infer(const int8_t *in, int8_t *out) {",
            *("    " + line for line in body),
            "    return 0;",
            "}",
            "",
        ]
    )


def emit_sources(
    graph: ir.McuGraph, plan: MemoryPlan, kplan: KernelPlan, core: str
) -> dict[str, str]:
    """Every file of the output directory, by relative path: model.c/.h, the kernels, main.c."""
    files = {"model.h": _model_h(graph, plan), "model.c": _model_c(graph, plan, kplan)}
    for path in sorted(KERNEL_DIR.iterdir()):
        if path.suffix in (".c", ".h") and path.name in kplan.kernel_files:
            files[f"kernels/{path.name}"] = path.read_text()
    files["main.c"] = (FIRMWARE_DIR / "harness.c").read_text()
    return files
