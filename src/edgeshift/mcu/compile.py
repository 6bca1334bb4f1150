"""``edgeshift compile``: an int8 model in, a C library for a Cortex-M out, measured when asked.

The pipeline is the package's layout: ``quantize`` (float models only) → ``lower`` (ONNX QDQ →
integer IR) → ``memory`` (the arena plan) → ``emit`` (C sources + manifest) → with ``verify``,
``runner`` builds the firmware with arm-none-eabi-gcc and runs it under qemu-system-arm,
compares every output with ONNX Runtime and counts instructions exactly. Only this module and
the runner do I/O.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeshift.errors import DataError, TargetError
from edgeshift.mcu import feedback
from edgeshift.mcu.cores import CORE_IDS, resolve_core
from edgeshift.mcu.ir import McuGraph

DEFAULT_VERIFY_SAMPLES = 1000
MANIFEST_KIND = "mcu-compile"
SOURCE_MODEL_NAME = "model.onnx"

Progress = Callable[[str], None]


@dataclass
class CompileResult:
    """What ``compile`` wrote and measured; ``manifest`` is ``out_dir/manifest.json``."""

    out_dir: Path
    manifest: dict[str, Any]
    graph: McuGraph | None = None  # the lowered IR (not serialised)

    @property
    def verified(self) -> bool:
        return self.manifest.get("verification") is not None

    @property
    def bit_exact(self) -> bool | None:
        v = self.manifest.get("verification")
        return None if v is None else v["mismatched_samples"] == 0

    @property
    def within_contract(self) -> bool | None:
        """Bit-exact, or within 1 LSB only where ORT itself runs a group in float32."""
        v = self.manifest.get("verification")
        return None if v is None else bool(v["within_contract"])


def default_out_dir(model: Path, core: str) -> Path:
    """``<model>-<core>-c``: named after the model, so two compiles never share a directory."""
    stem = model.parent.name if model.stem == "model" and model.parent.name else model.stem
    return Path(f"{stem}-{core}-c")


def _is_quantized(proto: onnx.ModelProto) -> bool:
    ops = {n.op_type for n in proto.graph.node}
    return bool(ops & {"QuantizeLinear", "DequantizeLinear"})


def _load_data(path: Path | None, proto: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    if path is None:
        return None
    from edgeshift.bench.inputs import load_npz

    arrays = load_npz(path)
    names = [i.name for i in proto.graph.input]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(
            f"{path} has no array for input {missing[0]!r} (it has {', '.join(arrays) or 'none'}) "
            "— save one array per model input, keyed by the input's name, samples first"
        )
    rows = {arrays[n].shape[0] if arrays[n].ndim else 0 for n in names}
    if len(rows) != 1 or 0 in rows:
        raise DataError(f"{path}: every input array needs the same number of samples (first axis)")
    return {n: arrays[n] for n in names}


def _prepare(
    model: str | Path, data: Path | None, progress: Progress
) -> tuple[Path, onnx.ModelProto, dict[str, np.ndarray] | None, bool]:
    from edgeshift.model.load import load_model

    loaded = load_model(model)
    proto = loaded.proto
    arrays = _load_data(data, proto)
    quantized_here = False
    if not _is_quantized(proto):
        if arrays is None:
            raise DataError(
                f"{loaded.path.name} is a float model: pass --data CALIB.npz (a few hundred samples "
                "of each input, keyed by input name) so it can be quantized to int8 for the MCU"
            )
        from edgeshift.mcu.quantize import quantize_for_mcu

        progress("quantizing to int8 (per-channel weights, int8 activations)")
        proto = quantize_for_mcu(proto, arrays)
        quantized_here = True
    return loaded.path, proto, arrays, quantized_here


def compile_model(
    model: str | Path,
    target: str,
    *,
    data: str | Path | None = None,
    out: str | Path | None = None,
    force: bool = False,
    verify: bool = False,
    samples: int = DEFAULT_VERIFY_SAMPLES,
    seed: int = 0,
    timeout_s: float = 600.0,
    progress: Progress | None = None,
) -> CompileResult:
    """Compile MODEL (int8 QDQ ONNX, or float + DATA for calibration) to C for TARGET.

    TARGET is a catalog MCU (``stm32h7``, ``stm32f4``, ``nrf52840``) or a core
    (``cortex-m4``, ``cortex-m7``, ``cortex-m55``). Writes ``OUT/`` (default
    ``<model>-<core>-c``; an existing directory needs FORCE). With VERIFY, builds with
    arm-none-eabi-gcc, runs SAMPLES inputs under qemu-system-arm and compares every output
    with ONNX Runtime, recording instruction counts and section sizes in the manifest.
    """
    from edgeshift.mcu.emit import emit_sources
    from edgeshift.mcu.kernel_plan import kernel_plan
    from edgeshift.mcu.lower import lower
    from edgeshift.mcu.memory import plan_memory

    say = progress or (lambda _msg: None)
    core, catalog_target = resolve_core(target)
    if samples < 1:
        raise DataError(f"--samples must be >= 1, not {samples}")
    src_path, proto, arrays, quantized_here = _prepare(model, Path(data) if data else None, say)
    out_dir = Path(out) if out is not None else default_out_dir(src_path, core.id)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise DataError(
            f"{out_dir} already exists and is not empty — pass --force to overwrite it, or --out DIR"
        )

    say("lowering to the integer IR")
    graph = lower(proto, name=_c_name(src_path))
    kplan = kernel_plan(graph, core.id)
    say("planning the activation arena")
    plan = plan_memory(
        graph,
        scratch_bytes=kplan.scratch_bytes,
        inplace_steps=kplan.inplace_steps,
        below_input_bytes=kplan.below_input_bytes,
    )
    _check_fits(graph, plan.arena_bytes, catalog_target)

    say(f"emitting C for {core.id}")
    files = emit_sources(graph, plan, kplan, core.id)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for rel, text in files.items():
        dest = out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    onnx.save(proto, str(out_dir / SOURCE_MODEL_NAME))

    from edgeshift.model.load import sha256_file

    manifest: dict[str, Any] = {
        "kind": MANIFEST_KIND,
        "model_file": SOURCE_MODEL_NAME,
        "source": {
            "path": str(src_path),
            "sha256": sha256_file(src_path),
            "quantized_by_edgeshift": quantized_here,
        },
        "target": {"id": target, "core": core.id, "catalog": catalog_target is not None},
        "arithmetic": "ONNX Runtime QLinear kernels (session.qdqisint8allowed=1): int32 "
        "accumulation, float32 requantization, round half to even, saturation",
        "api": {
            "function": "int model_infer(const int8_t *in, int8_t *out)",
            "inputs": [_io_json(graph, n) for n in graph.inputs],
            "outputs": [_io_json(graph, n) for n in graph.outputs],
        },
        "ort_float_groups": graph.float_groups,
        "ops": [
            _op_json(graph, i, op, kplan, plan.inplace_steps) for i, op in enumerate(graph.ops)
        ],
        "macs": graph.macs(),
        "weight_bytes": graph.weight_bytes(),
        "memory_plan": plan.to_json(),
        "predicted": {"arena_bytes": plan.arena_bytes, "ram_bytes": plan.arena_bytes},
        "verification": None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
    }
    if verify:
        from edgeshift.mcu.verify_run import verify_compiled

        manifest["verification"] = verify_compiled(
            out_dir, graph, proto, core.id, arrays,
            samples=samples, seed=seed, timeout_s=timeout_s, progress=say,
        )  # fmt: skip
        feedback.record(manifest, out_dir)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return CompileResult(out_dir, manifest, graph)


def _c_name(path: Path) -> str:
    stem = path.parent.name if path.stem == "model" and path.parent.name else path.stem
    return "".join(c if c.isalnum() else "_" for c in stem) or "model"


def _io_json(graph: McuGraph, name: str) -> dict[str, Any]:
    t = graph.tensors[name]
    info = dict(graph.io_onnx.get(name, {}))
    return {
        "name": name,
        "stored_shape": list(t.shape),
        "bytes": t.size_bytes,
        "scale": t.scale,
        "zero_point": t.zero_point,
        **{k: v for k, v in info.items() if k in ("onnx_name", "onnx_shape", "perm")},
    }


def _op_json(graph: McuGraph, step: int, op: Any, kplan: Any, joined: list[int]) -> dict[str, Any]:
    from edgeshift.mcu.ir import op_inputs

    out = graph.tensors[op.out]
    entry: dict[str, Any] = {
        "step": step,
        "op": type(op).__name__,
        "inputs": op_inputs(op),
        "output": op.out,
        "output_shape": list(out.shape),
        "kernel": kplan.kernels.get(step, ""),
        "scratch_bytes": kplan.scratch_bytes.get(step, 0),
        # what the planner did: the output shares its input's buffer (same start or below it)
        "in_place": step in joined,
    }
    weights = getattr(op, "weights", None)
    if isinstance(weights, np.ndarray):
        entry["weights_shape"] = list(weights.shape)
    return entry


def _check_fits(graph: McuGraph, arena_bytes: int, target: Any) -> None:
    """A catalog MCU's RAM and flash against the plan; the numbers and by how much."""
    if target is None:
        return
    ram = target.ram_bytes
    if arena_bytes > ram:
        raise TargetError(
            f"the model needs {arena_bytes:,} B of RAM for activations but {target.id} has "
            f"{ram:,} B ({arena_bytes - ram:,} B over) — pick a larger MCU or a smaller model"
        )
    flash = target.flash_bytes
    need = graph.weight_bytes()
    if flash is not None and need > flash:
        raise TargetError(
            f"the model's weights need {need:,} B of flash but {target.id} has {flash:,} B "
            f"({need - flash:,} B over) — pick a larger MCU or a smaller model"
        )


__all__ = ["CORE_IDS", "MANIFEST_KIND", "CompileResult", "compile_model", "default_out_dir"]
