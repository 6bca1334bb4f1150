"""Export a PyTorch module to ONNX and prove the file computes what the module computes.

torch is optional: it is imported inside the functions, never when edgeshift is imported.
The TorchScript-based exporter (``dynamo=False``) is used on purpose: torch 2.13's default
dynamo exporter needs the extra ``onnxscript`` package, and the TorchScript path gives plain
opset-17 graphs that both onnxruntime and OpenVINO load.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeshift.errors import BackendError, ModelError

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
    BackendError when torch is not installed.
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
        checks = [(feeds, reference)]
        if dynamic_batch and all(a.ndim > 0 for a in args):
            doubled = tuple(torch.cat([a, a], dim=0) for a in args)
            try:
                with torch.no_grad():
                    want_doubled = _flatten_outputs(module(*doubled), torch)
            except Exception:  # the module itself needs its example batch: nothing to compare
                want_doubled = None
            if want_doubled is not None:
                feeds_doubled = {n: a.numpy() for n, a in zip(in_names, doubled, strict=True)}
                checks.append((feeds_doubled, want_doubled))
        for check_feeds, want in checks:
            got = _run_ort(out_path, check_feeds, out_names)
            for name, g, w in zip(out_names, got, want, strict=True):
                problem = _mismatch(name, np.asarray(g), w)
                if problem:
                    tracer = [str(w.message).splitlines()[0] for w in caught if _is_tracer(w)]
                    hint = f"; the tracer warned: {tracer[0][:200]}" if tracer else ""
                    raise ModelError(
                        f"the exported ONNX disagrees with the module ({problem}{hint}) — the "
                        "module may depend on a fixed batch size; try dynamic_batch=False"
                    )
    except onnx.checker.ValidationError as exc:
        out_path.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid graph"
        raise ModelError(f"the exported graph fails onnx.checker ({first[:300]})") from exc
    except ModelError:
        out_path.unlink(missing_ok=True)
        raise
    return out_path
