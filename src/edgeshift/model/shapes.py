"""Tensor specs of a graph's inputs/outputs, and resolving dynamic dims to concrete shapes.

A ``--shape`` override is ``NAME=DIMS`` where NAME is an input name (DIMS is the whole shape,
``1x3x224x224`` or ``1,3,224,224``) or a symbolic dim name (DIMS is one integer, e.g.
``seq=128``). Dims still unresolved after overrides become: the first axis the batch size
(default 1), every other axis ``DEFAULT_DYNAMIC_DIM``; each such guess is reported.

A negative ``dim_value`` (Paddle2ONNX and older exporters write ``-1`` for a dynamic axis,
and ONNX Runtime and OpenVINO read it so) is a dynamic dim without a name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgeshift.errors import DataError, ShapeError

if TYPE_CHECKING:
    import onnx  # the runtime path (TensorSpec, check_tensor) must not load onnx: see serve/

DEFAULT_DYNAMIC_DIM = 128

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and (possibly symbolic) shape of a graph input or output."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32", "int64"; "object" for strings
    shape: tuple[Dim, ...] | None  # None: unknown rank; str: symbolic dim; None inside: unknown

    def shape_text(self) -> str:
        if self.shape is None:
            return "?"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    @property
    def is_dynamic(self) -> bool:
        return self.shape is None or any(not is_fixed(d) for d in self.shape)


def is_fixed(dim: Dim) -> bool:
    """True for a dim the model fixes; a negative int is an exporter's way to say dynamic."""
    return isinstance(dim, int) and dim >= 0


def _elem_dtype(elem_type: int) -> str:
    import onnx
    from onnx import helper

    if elem_type == onnx.TensorProto.STRING:
        return "object"
    if elem_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    try:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def value_info_spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    t = vi.type.tensor_type
    shape: tuple[Dim, ...] | None = None
    if t.HasField("shape"):
        dims: list[Dim] = []
        for d in t.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return TensorSpec(vi.name, _elem_dtype(t.elem_type), shape)


def graph_io(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The real inputs (initializers excluded, as old exporters list them) and the outputs."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value_info_spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [value_info_spec(v) for v in model.graph.output]
    return inputs, outputs


_DIMS_RE = re.compile(r"^\s*(\d+)(\s*[x,]\s*\d+)*\s*$")


def parse_shape_overrides(specs: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME=DIMS`` strings; DIMS separated by ``x`` or ``,``."""
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.partition("=")
        name = name.strip()
        if not sep or not name or not _DIMS_RE.match(dims):
            raise ShapeError(
                f"bad --shape {spec!r} — write NAME=DIMS, e.g. input=1x3x224x224 or seq=128"
            )
        values = tuple(int(v) for v in re.split(r"[x,]", dims.replace(" ", "")))
        if any(v <= 0 for v in values):
            raise ShapeError(f"bad --shape {spec!r} — every dim must be a positive integer")
        out[name] = values
    return out


@dataclass
class ResolvedShapes:
    shapes: dict[str, tuple[int, ...]]
    assumed: list[str] = field(default_factory=list)  # human-readable notes on guessed dims


def resolve_input_shapes(
    inputs: list[TensorSpec],
    overrides: Mapping[str, tuple[int, ...]] | None = None,
    batch: int | None = None,
) -> ResolvedShapes:
    """Concrete shapes for every input. Overrides name inputs or symbolic dims."""
    overrides = dict(overrides or {})
    input_names = {i.name for i in inputs}
    symbols = {d for i in inputs if i.shape for d in i.shape if isinstance(d, str)}
    for key, dims in overrides.items():
        if key in input_names:
            continue
        if key in symbols:
            if len(dims) != 1:
                raise ShapeError(f"--shape {key}=… names a symbolic dim: give one integer")
            continue
        import difflib  # only for this message

        known = sorted(input_names | symbols)
        near = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ShapeError(
            f"--shape names {key!r}, which is no input or symbolic dim of this model — "
            f"{hint}known: {', '.join(known)}"
        )
    resolved = ResolvedShapes(shapes={})
    for spec in inputs:
        if spec.name in overrides:
            dims = overrides[spec.name]
            if spec.shape is not None:
                if len(dims) != len(spec.shape):
                    raise ShapeError(
                        f"--shape {spec.name} has {len(dims)} dims but the input has rank "
                        f"{len(spec.shape)} {spec.shape_text()}"
                    )
                for axis, (want, have) in enumerate(zip(dims, spec.shape, strict=True)):
                    if is_fixed(have) and have != want:
                        raise ShapeError(
                            f"--shape {spec.name}: axis {axis} is fixed at {have} in the model, "
                            f"not {want}"
                        )
            if batch is not None and dims and spec.shape and not is_fixed(spec.shape[0]):
                dims = (batch, *dims[1:])
            resolved.shapes[spec.name] = tuple(dims)
            continue
        if spec.shape is None:
            raise ShapeError(
                f"input {spec.name!r} has unknown rank — give its shape with "
                f"--shape {spec.name}=D1xD2…"
            )
        dims_out: list[int] = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int) and is_fixed(d):
                dims_out.append(d)
            elif isinstance(d, str) and d in overrides:
                dims_out.append(overrides[d][0])
            elif axis == 0:
                dims_out.append(batch or 1)
                if batch is None:
                    resolved.assumed.append(f"{spec.name}[0] ({d or '?'}) = 1 (batch)")
            else:
                dims_out.append(DEFAULT_DYNAMIC_DIM)
                resolved.assumed.append(
                    f"{spec.name}[{axis}] ({d or '?'}) = {DEFAULT_DYNAMIC_DIM}; "
                    f"set it with --shape {d if isinstance(d, str) else spec.name}=…"
                )
        resolved.shapes[spec.name] = tuple(dims_out)
    return resolved


def check_tensor(
    spec: TensorSpec, arr: np.ndarray, label: str, *, samples_first: bool = False
) -> None:
    """Raise DataError unless ARR can feed SPEC: its dtype, its rank and every fixed dim.

    ``label`` names the array in messages (``input 'x'``, ``eval.npz: array 'x'``). With
    ``samples_first`` the first axis is a sample axis and may have any length.
    """
    if spec.dtype != "object" and arr.dtype != np.dtype(spec.dtype):
        raise DataError(
            f"{label} has dtype {arr.dtype}, the model wants {spec.dtype} — "
            f"convert it with .astype('{spec.dtype}')"
        )
    if spec.shape is None:
        return
    if arr.ndim != len(spec.shape):
        hint = " — the first axis is samples, the rest the input's dims" if samples_first else ""
        raise DataError(
            f"{label} has shape {list(arr.shape)} (rank {arr.ndim}); the model wants rank "
            f"{len(spec.shape)} {spec.shape_text()}{hint}"
        )
    for axis in range(1 if samples_first else 0, arr.ndim):
        want = spec.shape[axis]
        if is_fixed(want) and arr.shape[axis] != want:
            raise DataError(
                f"{label} has shape {list(arr.shape)}; axis {axis} must be {want} "
                f"{spec.shape_text()}"
            )


@dataclass(frozen=True)
class DynamicDim:
    """A dim the model leaves open, by the name a user gives it, at its resolved value."""

    label: str  # the symbolic name (``seq``), or ``input[axis]`` for an unnamed dim
    value: int


def dynamic_dims(
    inputs: list[TensorSpec], shapes: Mapping[str, tuple[int, ...]]
) -> list[DynamicDim]:
    """The open dims of INPUTS at SHAPES, one per symbolic name, in input order."""
    seen: dict[str, DynamicDim] = {}
    for spec in inputs:
        resolved = shapes.get(spec.name)
        if resolved is None:
            continue
        declared: tuple[Dim, ...] = spec.shape or (None,) * len(resolved)
        for axis, (have, value) in enumerate(zip(declared, resolved, strict=False)):
            if is_fixed(have):
                continue
            label = have if isinstance(have, str) else f"{spec.name}[{axis}]"
            seen.setdefault(label, DynamicDim(label, int(value)))
    return list(seen.values())


def itemsize_bytes(dtype: str) -> int:
    """Bytes per element of a TensorSpec dtype (strings count as one pointer)."""
    if dtype == "bfloat16":
        return 2
    try:
        return np.dtype(dtype).itemsize if dtype != "object" else 8
    except TypeError:
        return 8


def input_bytes(inputs: list[TensorSpec], shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Bytes of one feed of every input at SHAPES (exact Python ints: no overflow)."""
    total = 0
    for spec in inputs:
        numel = 1
        for d in shapes.get(spec.name, ()):
            numel *= int(d)
        total += numel * itemsize_bytes(spec.dtype)
    return total


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"


def check_fits_memory(
    inputs: list[TensorSpec],
    shapes: Mapping[str, tuple[int, ...]],
    needed_bytes: int,
    available_bytes: int,
    what: str,
) -> None:
    """Raise ShapeError, naming the largest open dim, when NEEDED_BYTES exceed the memory.

    WHAT says what needs the bytes (``the inputs alone``, ``the activations``).
    """
    if needed_bytes <= available_bytes:
        return
    dims = dynamic_dims(inputs, shapes)
    if not dims:
        raise ShapeError(
            f"{what} need {_gib(needed_bytes)} at the model's fixed shapes, more than the "
            f"{_gib(available_bytes)} of memory available — run it on a machine with more memory"
        )
    largest = max(dims, key=lambda d: d.value)
    raise ShapeError(
        f"{largest.label}={largest.value} is too large: {what} need {_gib(needed_bytes)}, "
        f"more than the {_gib(available_bytes)} of memory available — give a smaller "
        f"{largest.label} with --shape"
    )
