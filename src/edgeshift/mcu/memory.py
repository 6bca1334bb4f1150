"""The static memory plan: one activation arena, every offset decided at compile time.

Pure: an :class:`~edgeshift.mcu.ir.McuGraph` plus what each op's kernel needs (scratch bytes,
whether it may write over its input) in, a :class:`MemoryPlan` out.

1. **Buffers.** Each tensor needs a buffer from the step that writes it to the step of its
   last reader (graph inputs from step 0: ``model_infer`` copies them in; graph outputs to the
   last step: it copies them out). A ``Reshape`` is a view, so its output joins its input's
   buffer. An op allowed to run in place joins its output to its input's buffer when that
   input dies at this op. A joined buffer is as large as its largest tensor and lives as long
   as all of them. Kernel scratch is a buffer that lives for its one step.
2. **Offsets.** Greedy by size, largest first, each at the lowest offset that overlaps no
   placed buffer alive at the same time (TFLM's greedy planner does the same). The largest
   sum of live sizes at any step is a lower bound; when greedy reaches it the plan is
   optimal. Otherwise, for small graphs, an exact MILP (HiGHS) gets a chance to do better.

Offsets are aligned to ``ALIGN_BYTES`` so kernels may use 32-bit loads and int16 scratch.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from edgeshift.mcu.ir import McuGraph, Reshape, op_inputs

ALIGN_BYTES = 8
# The MILP has one binary per pair of buffers alive together; past this it is not tried.
MILP_MAX_BUFFERS = 40
MILP_TIME_LIMIT_S = 10.0


def _align(n: int) -> int:
    return (n + ALIGN_BYTES - 1) // ALIGN_BYTES * ALIGN_BYTES


@dataclass
class Buffer:
    """A region of the arena: the tensors (or one op's scratch) that share it, and when."""

    name: str
    tensors: list[str]
    size_bytes: int
    first_step: int
    last_step: int
    offset: int = -1
    # Where each tensor starts inside the buffer (0 but for outputs placed below their input).
    rel: dict[str, int] = field(default_factory=dict)

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.first_step <= other.last_step and other.first_step <= self.last_step

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "tensors": {t: self.offset + self.rel.get(t, 0) for t in self.tensors},
            "offset": self.offset,
            "size_bytes": self.size_bytes,
            "first_step": self.first_step,
            "last_step": self.last_step,
        }


@dataclass
class MemoryPlan:
    """Where every tensor and every op's scratch lives in the arena."""

    arena_bytes: int
    lower_bound_bytes: int
    method: str  # "greedy (optimal)", "greedy", "milp (optimal)", "milp"
    buffers: list[Buffer]
    tensor_offsets: dict[str, int]
    scratch_offsets: dict[int, int] = field(default_factory=dict)
    inplace_steps: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "arena_bytes": self.arena_bytes,
            "lower_bound_bytes": self.lower_bound_bytes,
            "method": self.method,
            "inplace_steps": self.inplace_steps,
            "buffers": [b.to_json() for b in sorted(self.buffers, key=lambda b: b.offset)],
        }


def _buffers(
    graph: McuGraph,
    scratch: Mapping[int, int],
    inplace: Set[int],
    below: Mapping[int, int],
) -> tuple[list[Buffer], dict[str, Buffer], list[int]]:
    last_use: dict[str, int] = {}
    for step, op in enumerate(graph.ops):
        for name in op_inputs(op):
            last_use[name] = step
    end = max(len(graph.ops) - 1, 0)
    for name in graph.outputs:
        last_use[name] = end

    of_tensor: dict[str, Buffer] = {}
    buffers: list[Buffer] = []
    joined: list[int] = []

    def new(name: str, step: int) -> None:
        size = graph.tensors[name].size_bytes
        buf = Buffer(name, [name], size, step, last_use.get(name, step), rel={name: 0})
        buffers.append(buf)
        of_tensor[name] = buf

    def join(buf: Buffer, name: str, step: int, rel: int = 0) -> None:
        if rel < 0:  # the new tensor starts below the buffer: shift what is there up
            buf.rel = {t: r - rel for t, r in buf.rel.items()}
            rel = 0
        buf.tensors.append(name)
        buf.rel[name] = rel
        buf.size_bytes = max(buf.rel.get(t, 0) + graph.tensors[t].size_bytes for t in buf.tensors)
        buf.last_step = max(buf.last_step, last_use.get(name, step))
        of_tensor[name] = buf

    for name in graph.inputs:
        new(name, 0)
    for step, op in enumerate(graph.ops):
        src = op_inputs(op)[0]
        dies_here = src not in graph.outputs and last_use.get(src) == step
        if isinstance(op, Reshape):
            join(of_tensor[src], op.out, step, of_tensor[src].rel.get(src, 0))
        elif step in inplace and dies_here:
            join(of_tensor[src], op.out, step, of_tensor[src].rel.get(src, 0))
            joined.append(step)
        elif step in below and dies_here:
            # The kernel writes output rows in order and never again reads the input rows
            # its outputs land on when the output starts `below[step]` bytes lower.
            buf = of_tensor[src]
            join(buf, op.out, step, buf.rel.get(src, 0) - _align(below[step]))
            joined.append(step)
        else:
            new(op.out, step)
        if scratch.get(step, 0) > 0:
            buffers.append(Buffer(f"scratch@{step}", [], scratch[step], step, step))
    return buffers, of_tensor, joined


def _lower_bound(buffers: list[Buffer]) -> int:
    steps = {b.first_step for b in buffers} | {b.last_step for b in buffers}
    return max(
        (sum(_align(b.size_bytes) for b in buffers if b.first_step <= s <= b.last_step)
         for s in steps),
        default=0,
    )  # fmt: skip


def _greedy(buffers: list[Buffer]) -> int:
    placed: list[Buffer] = []
    for buf in sorted(buffers, key=lambda b: (-b.size_bytes, b.first_step)):
        busy = sorted(
            (p.offset, p.offset + _align(p.size_bytes)) for p in placed if p.overlaps_in_time(buf)
        )
        offset = 0
        for start, stop in busy:
            if offset + _align(buf.size_bytes) <= start:
                break
            offset = max(offset, stop)
        buf.offset = offset
        placed.append(buf)
    return max((b.offset + _align(b.size_bytes) for b in buffers), default=0)


def _milp(buffers: list[Buffer], upper: int) -> int | None:
    """Exact offsets by MILP (HiGHS): minimise the arena; None when no better plan is proven."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    n = len(buffers)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)
             if buffers[i].overlaps_in_time(buffers[j])]  # fmt: skip
    # Variables: n offsets (in ALIGN_BYTES units), one binary per pair, the arena size.
    nv = n + len(pairs) + 1
    sizes = [_align(b.size_bytes) // ALIGN_BYTES for b in buffers]
    big = upper // ALIGN_BYTES
    rows, lo, hi = [], [], []
    for k, (i, j) in enumerate(pairs):
        # y=1: i below j (o_i + s_i <= o_j); y=0: j below i. Big-M on the arena bound.
        r = np.zeros(nv)
        r[i], r[j], r[n + k] = 1, -1, big
        rows.append(r)
        lo.append(-np.inf)
        hi.append(big - sizes[i])
        r = np.zeros(nv)
        r[j], r[i], r[n + k] = 1, -1, -big
        rows.append(r)
        lo.append(-np.inf)
        hi.append(-sizes[j])
    for i in range(n):
        r = np.zeros(nv)
        r[i], r[-1] = 1, -1
        rows.append(r)
        lo.append(-np.inf)
        hi.append(-sizes[i])
    c = np.zeros(nv)
    c[-1] = 1
    integrality = np.ones(nv)
    bounds = Bounds(np.zeros(nv), np.array([big] * n + [1] * len(pairs) + [big], dtype=float))
    res = milp(
        c,
        constraints=LinearConstraint(np.array(rows), lo, hi),
        integrality=integrality,
        bounds=bounds,
        options={"time_limit": MILP_TIME_LIMIT_S},
    )
    if res.x is None:
        return None
    offsets = [round(v) * ALIGN_BYTES for v in res.x[:n]]
    arena = max(o + _align(b.size_bytes) for o, b in zip(offsets, buffers, strict=True))
    if arena >= upper:
        return None
    for o, b in zip(offsets, buffers, strict=True):
        b.offset = o
    return arena


def plan_memory(
    graph: McuGraph,
    *,
    scratch_bytes: Mapping[int, int] | None = None,
    inplace_steps: Set[int] = frozenset(),
    below_input_bytes: Mapping[int, int] | None = None,
    exact: bool = True,
) -> MemoryPlan:
    """The arena plan for GRAPH. SCRATCH_BYTES maps an op's step to the scratch its kernel
    needs; INPLACE_STEPS are the steps whose kernel may write its output over its (first)
    input; BELOW_INPUT_BYTES maps a step to how far below its input's start its output may
    start and still overlap it safely. EXACT tries the MILP when greedy is not provably
    optimal and the graph is small."""
    buffers, of_tensor, joined = _buffers(
        graph, scratch_bytes or {}, inplace_steps, below_input_bytes or {}
    )
    bound = _lower_bound(buffers)
    arena = _greedy(buffers)
    method = "greedy"
    if arena > bound and exact and len(buffers) <= MILP_MAX_BUFFERS:
        better = _milp(buffers, arena)
        if better is not None:
            arena, method = better, "milp"
    if arena == bound:
        method += " (optimal)"
    return MemoryPlan(
        arena_bytes=arena,
        lower_bound_bytes=bound,
        method=method,
        buffers=buffers,
        tensor_offsets={name: buf.offset + buf.rel.get(name, 0) for name, buf in of_tensor.items()},
        scratch_offsets={
            int(b.name.split("@")[1]): b.offset for b in buffers if b.name.startswith("scratch@")
        },
        inplace_steps=joined,
    )
