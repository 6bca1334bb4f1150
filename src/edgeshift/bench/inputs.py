"""Inputs for measurement: synthesized from the model's specs, or read from an .npz.

Synthesized inputs: floats are standard normal; integer inputs that index an embedding table
(directly or through Cast/Reshape/Unsqueeze…) stay below that table's size; other integer
inputs named like masks are ones, like token types zeros, and otherwise lie in [0, 2) — a safe
range for flags and small indices; bools are random; strings are short words.

An .npz holds one array per model input, keyed by the input's name, whose first axis is the
sample axis (= the batch axis of the input). Arrays of other names (e.g. ``labels``) are
ignored. Samples are cut into consecutive batches of ``batch``; a trailing partial batch is
dropped so every measured call has the same size.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from edgeshift.errors import DataError
from edgeshift.model.shapes import TensorSpec, check_tensor

_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}


def index_ranges(model: onnx.ModelProto) -> dict[str, int]:
    """Upper bound (exclusive) of each integer input used as Gather indices into a weight."""
    graph = model.graph
    init_dims = {i.name: tuple(i.dims) for i in graph.initializer}
    for node in graph.node:  # weights kept in Constant nodes count too
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    init_dims[node.output[0]] = tuple(attr.t.dims)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ranges: dict[str, int] = {}
    for vi in graph.input:
        frontier, seen = [vi.name], set()
        while frontier:
            tensor = frontier.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            for node in consumers.get(tensor, []):
                if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == tensor:
                    dims = init_dims.get(node.input[0])
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if dims:
                        bound = dims[axis]
                        ranges[vi.name] = min(ranges.get(vi.name, bound), bound)
                elif node.op_type in _PASS_THROUGH and node.input[0] == tensor:
                    frontier.extend(node.output)
    return ranges


def synthesize_inputs(
    inputs: list[TensorSpec],
    shapes: Mapping[str, tuple[int, ...]],
    seed: int = 0,
    int_ranges: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    int_ranges = int_ranges or {}
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = shapes[spec.name]
        lowered = spec.name.lower()
        if spec.dtype == "object":
            feeds[spec.name] = np.array(
                rng.choice(["edge", "shift", "infer"], size=shape), dtype=object
            )
        elif spec.dtype == "bool":
            feeds[spec.name] = rng.random(shape) < 0.5
        elif np.issubdtype(np.dtype(spec.dtype), np.integer):
            if spec.name in int_ranges:
                high = max(1, int_ranges[spec.name])
                values = rng.integers(0, high, size=shape)
            elif "mask" in lowered:
                values = np.ones(shape, dtype=np.int64)
            elif "type" in lowered or "segment" in lowered:
                values = np.zeros(shape, dtype=np.int64)
            else:
                values = rng.integers(0, 2, size=shape)
            feeds[spec.name] = values.astype(spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p} — pass an .npz with one array per model input")
    try:
        with np.load(p, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"{p} is not a readable .npz ({exc}) — save it with numpy.savez(path, name=array, …)"
        ) from exc


def match_inputs(arrays: Mapping[str, np.ndarray], inputs: list[TensorSpec], source: str) -> int:
    """Check arrays against the inputs (names, dtypes, ranks, fixed dims); return sample count."""
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(
            f"{source} has no array {missing[0]!r} — it needs one array per input "
            f"({', '.join(names)}); it has {', '.join(arrays) or 'none'}"
        )
    counts = set()
    for spec in inputs:
        arr = arrays[spec.name]
        check_tensor(spec, arr, f"{source}: array {spec.name!r}", samples_first=True)
        counts.add(arr.shape[0] if arr.ndim else 1)
    if len(counts) != 1:
        raise DataError(f"{source}: inputs have different sample counts {sorted(counts)}")
    return counts.pop()


def load_npz_batches(
    path: str | Path, inputs: list[TensorSpec], batch: int = 1
) -> list[dict[str, np.ndarray]]:
    """Consecutive batches of ``batch`` samples from an .npz, one feed dict each."""
    arrays = load_npz(path)
    samples = match_inputs(arrays, inputs, str(path))
    fixed_batch = [
        s.name for s in inputs if s.shape and isinstance(s.shape[0], int) and s.shape[0] != batch
    ]
    if fixed_batch:
        raise DataError(
            f"input {fixed_batch[0]!r} has a fixed first axis, so --batch {batch} cannot apply — "
            "use the model's own batch size"
        )
    if samples < batch:
        raise DataError(f"{path} has {samples} samples, fewer than --batch {batch}")
    return [
        {s.name: arrays[s.name][start : start + batch] for s in inputs}
        for start in range(0, samples - batch + 1, batch)
    ]
