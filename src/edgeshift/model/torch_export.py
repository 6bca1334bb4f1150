"""Export a PyTorch module to ONNX and prove the file computes what the module computes.

torch is optional: it is imported inside the functions, never when edgeshift is imported.
The TorchScript-based exporter (``dynamo=False``) is used on purpose: torch 2.13's default
dynamo exporter needs the extra ``onnxscript`` package, and the TorchScript path gives plain
opset-17 graphs that both onnxruntime and OpenVINO load.
"""

from __future__ import annotations

import difflib
import importlib
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeshift.errors import BackendError, ModelError, ShapeError

# fp32 outputs of ORT and torch differ only by summation order and fused kernels: a few ulps
# per accumulation, ~1e-5 relative for reductions over thousands of terms. 1e-3 relative (and
# 1e-4 of the output's scale absolute) leaves margin for that and still catches a wrong graph,
# whose errors are O(1) of the scale.
RTOL = 1e-3
ATOL_SCALE = 1e-4

TORCH_MISSING = "torch is not installed — pip install edgeshift[torch]"


def import_torch() -> Any:
    """The torch module, or a BackendError naming the pip command when it is missing."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise BackendError(TORCH_MISSING) from exc


def _as_tuple(example_inputs: Any, torch: Any) -> tuple[Any, ...]:
    items = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if not isinstance(item, torch.Tensor):
            raise ModelError(
                f"example input {i} is a {type(item).__name__}, not a tensor — pass torch "
                "tensors or numpy arrays"
            )
        out.append(item)
    if not out:
        raise ModelError("no example inputs — pass one tensor per forward() argument")
    return tuple(out)


def _flatten_outputs(value: Any, torch: Any) -> list[np.ndarray]:
    if isinstance(value, torch.Tensor):
        return [value.detach().cpu().numpy()]
    if isinstance(value, tuple | list):
        return [a for v in value for a in _flatten_outputs(v, torch)]
    raise ModelError(
        f"the module returned a {type(value).__name__} — return a tensor or a tuple of tensors"
    )


def _default_names(prefix: str, count: int) -> list[str]:
    return [prefix] if count == 1 else [f"{prefix}_{i}" for i in range(count)]


def _mismatch(name: str, got: np.ndarray, want: np.ndarray) -> str | None:
    if got.shape != want.shape:
        return f"{name}: shape {list(got.shape)} from ORT, {list(want.shape)} from torch"
    if not np.issubdtype(want.dtype, np.floating):
        if not np.array_equal(got, want):
            return f"{name}: integer/bool values differ"
        return None
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    atol = ATOL_SCALE * max(1.0, scale)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if not np.all(diff <= atol + RTOL * np.abs(want)):
        return f"{name}: max |ORT - torch| = {float(diff.max()):.3g} (scale {scale:.3g})"
    return None


_STATIC_HINT = "export with dynamic_batch=False (CLI: --static-batch)"


def _doubled_batch_check(
    module: Any,
    args: tuple[Any, ...],
    reference: list[np.ndarray],
    in_names: Sequence[str],
    out_names: Sequence[str],
) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Feeds at twice the example batch and the module's outputs for them.

    Naming axis 0 ``batch`` is a promise: the module must run at another batch size and every
    output's axis 0 must follow it. A module that breaks it gets a ModelError, not a file
    whose dynamic axis is a lie.
    """
    import torch

    doubled = tuple(torch.cat([a, a], dim=0) for a in args)
    try:
        with torch.no_grad():
            want = _flatten_outputs(module(*doubled), torch)
    except Exception as exc:
        raise ModelError(
            f"the module does not run at batch {doubled[0].shape[0]} ({type(exc).__name__}), so "
            f"its batch axis is not dynamic — {_STATIC_HINT}"
        ) from exc
    for name, before, after in zip(out_names, reference, want, strict=True):
        if before.ndim == 0 or after.ndim == 0 or after.shape[0] != 2 * before.shape[0]:
            raise ModelError(
                f"output {name!r} does not follow the batch (shape {list(before.shape)} at batch "
                f"{args[0].shape[0]}, {list(after.shape)} at {doubled[0].shape[0]}) — {_STATIC_HINT}"
            )
    return {n: a.detach().cpu().numpy() for n, a in zip(in_names, doubled, strict=True)}, want


def _is_tracer(w: warnings.WarningMessage) -> bool:
    return w.category.__name__ == "TracerWarning"


def _run_ort(path: Path, feeds: dict[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return list(session.run(list(names), feeds))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"onnxruntime cannot run the exported {path.name}: {first[:300]} — the module uses "
            "an op the exporter maps badly; try another opset"
        ) from exc


def from_torch(
    module: Any,
    example_inputs: Any,
    path: str | Path,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    opset: int = 17,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> Path:
    """Export MODULE to ONNX at PATH, check the graph, and verify it with onnxruntime.

    ``example_inputs`` is a tensor (or numpy array) or a tuple of them, one per ``forward``
    argument. With ``dynamic_batch`` the first axis of every input and output is named
    ``batch``; the export is then also verified at twice the example batch, which catches
    batch sizes baked into reshapes. ``dynamic_axes`` names further dynamic axes per tensor,
    e.g. ``{"input_ids": {1: "seq"}}``. Raises ModelError when export, the checker or the
    comparison with the module's own outputs fails (the bad file is removed), and
    BackendError when torch is not installed. The module is put in eval mode.
    """
    torch = import_torch()
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got a {type(module).__name__}")
    args = _as_tuple(example_inputs, torch)
    out_path = Path(path)
    if out_path.is_dir():
        raise ModelError(f"{out_path} is a directory — give the .onnx file to write")
    out_path.parent.mkdir(parents=True, exist_ok=True)

    module.eval()
    with torch.no_grad():
        try:
            reference = _flatten_outputs(module(*args), torch)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(
                f"the module fails on the example inputs ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}) — check their shapes "
                "and dtypes"
            ) from exc
    in_names = list(input_names) if input_names else _default_names("input", len(args))
    out_names = list(output_names) if output_names else _default_names("output", len(reference))
    if len(in_names) != len(args):
        raise ModelError(f"{len(in_names)} input names for {len(args)} example inputs")
    if len(out_names) != len(reference):
        raise ModelError(f"{len(out_names)} output names for {len(reference)} module outputs")
    axes: dict[str, dict[int, str]] = {}
    if dynamic_batch:
        axes = {n: {0: "batch"} for n in [*in_names, *out_names]}
    for name, extra in (dynamic_axes or {}).items():
        if name not in in_names and name not in out_names:
            raise ModelError(
                f"dynamic_axes names {name!r}, which is no input or output — "
                f"known: {', '.join([*in_names, *out_names])}"
            )
        axes.setdefault(name, {}).update(extra)
    doubled_check = []
    if dynamic_batch and all(a.ndim > 0 for a in args):
        doubled_check.append(_doubled_batch_check(module, args, reference, in_names, out_names))

    with warnings.catch_warnings(record=True) as caught:
        # The TorchScript exporter announces its own deprecation (we chose it: module doc) and
        # the tracer warns about Python values it froze; the ORT check below tests the result,
        # and a mismatch quotes the tracer's first warning.
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                module,
                args,
                str(out_path),
                input_names=in_names,
                output_names=out_names,
                dynamic_axes=axes or None,
                opset_version=opset,
                dynamo=False,
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"torch.onnx.export failed: {first[:300]}") from exc

    try:
        onnx.checker.check_model(str(out_path))
        feeds = {n: a.detach().cpu().numpy() for n, a in zip(in_names, args, strict=True)}
        checks = [(feeds, reference), *doubled_check]
        for check_feeds, want in checks:
            got = _run_ort(out_path, check_feeds, out_names)
            for name, g, w in zip(out_names, got, want, strict=True):
                problem = _mismatch(name, np.asarray(g), w)
                if problem:
                    tracer = [str(m.message).splitlines()[0] for m in caught if _is_tracer(m)]
                    hint = f"; the tracer warned: {tracer[0][:200]}" if tracer else ""
                    raise ModelError(
                        f"the exported ONNX disagrees with the module ({problem}{hint}) — if "
                        f"it depends on a fixed batch size, {_STATIC_HINT}"
                    )
    except onnx.checker.ValidationError as exc:
        out_path.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid graph"
        raise ModelError(f"the exported graph fails onnx.checker ({first[:300]})") from exc
    except ModelError:
        out_path.unlink(missing_ok=True)
        raise
    return out_path


_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")


@dataclass(frozen=True)
class InputSpec:
    """One example input for the CLI form: ``NAME=DIMS[:dtype]``."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


def parse_input_spec(spec: str) -> InputSpec:
    """Parse ``NAME=DIMS[:dtype]`` (DIMS like ``1x64`` or ``1,3,8,8``; dtype default float32)."""
    name, sep, rest = spec.partition("=")
    dims_text, _, dtype = rest.partition(":")
    dtype = dtype.strip() or "float32"
    usage = "write NAME=DIMS[:dtype], e.g. input=1x64 or input_ids=1x128:int64"
    if not sep or not name.strip() or not re.fullmatch(r"\s*\d+(\s*[x,]\s*\d+)*\s*", dims_text):
        raise ShapeError(f"bad --input {spec!r} — {usage}")
    if dtype not in _DTYPES:
        raise ShapeError(
            f"bad --input {spec!r}: unknown dtype {dtype!r} — use {', '.join(_DTYPES)}"
        )
    shape = tuple(int(v) for v in re.split(r"[x,]", dims_text.replace(" ", "")))
    if any(v <= 0 for v in shape):
        raise ShapeError(f"bad --input {spec!r} — every dim must be a positive integer")
    return InputSpec(name.strip(), shape, dtype)


def example_arrays(specs: Sequence[InputSpec], seed: int = 0) -> list[np.ndarray]:
    """Example values: floats ~ N(0, 1); integers and bools 0/1 (valid ids, masks, indices)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for s in specs:
        if np.issubdtype(np.dtype(s.dtype), np.floating):
            arrays.append(rng.standard_normal(s.shape).astype(s.dtype))
        else:
            arrays.append(rng.integers(0, 2, size=s.shape).astype(s.dtype))
    return arrays


def load_factory(spec: str) -> Any:
    """Import ``package.module:callable`` and call it; the result must be a torch nn.Module."""
    torch = import_torch()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise ModelError(
            f"bad model factory {spec!r} — write MODULE:FACTORY, e.g. mypkg.models:make_model"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(
            f"cannot import {module_name!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            " — run from its directory or add it to PYTHONPATH"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        near = difflib.get_close_matches(attr, public, n=1)
        hint = f" — did you mean {module_name}:{near[0]}?" if near else ""
        raise ModelError(f"{module_name} has no callable {attr!r}{hint}")
    try:
        model = factory()
    except Exception as exc:
        raise ModelError(
            f"{spec}() failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
            " — it must build the model with no arguments"
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model
