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


def _float_literal(v: float) -> str:
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


_RENDER: dict[type, Callable[[_Ctx, int, Any], str]] = {
    ir.Conv2D: _conv,
    ir.DepthwiseConv2D: _conv,
    ir.FullyConnected: _fc,
    ir.Reshape: _reshape,
}


def register_renderer(op_type: type, fn: Callable[[_Ctx, int, Any], str]) -> None:
    """Add the C rendering of an IR op type (used by the misc-op renderers)."""
    _RENDER[op_type] = fn


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
