"""``compile --verify``: build the emitted C, run it under QEMU, hold it against ONNX Runtime.

The firmware is built twice: with the model, and with a stub ``model_infer`` that does
nothing. The difference of their sections is what the model adds to a firmware (its code,
the kernels and the libc/libm pieces they pull in, weights, the arena), so flash and RAM are
the linker's numbers, not a guess. Instructions are counted exactly by a QEMU TCG plugin
between the harness's begin/end marks, over all samples, and divided by the sample count.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeshift.errors import BackendError
from edgeshift.mcu.ir import McuGraph

ARENA_SYMBOL = "model_arena"
STUB_SOURCE = """#include "model.h"
int model_infer(const int8_t *in, int8_t *out) { (void)in; (void)out; return 0; }
"""


def verification_inputs(
    graph: McuGraph,
    proto: onnx.ModelProto,
    arrays: dict[str, np.ndarray] | None,
    samples: int,
    seed: int,
) -> tuple[list[np.ndarray], int]:
    """int8 inputs in the ONNX layout of the compiled region: the data's samples first (float
    data quantized with the input's scale and zero point, as QuantizeLinear does), then
    uniform random int8 up to SAMPLES. Returns them and how many came from the data."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    from_data = 0
    for name in graph.inputs:
        t = graph.tensors[name]
        io = graph.io_onnx.get(name, {})
        # --data is keyed by the model's own input names: the float one for float-I/O models.
        onnx_name = str(io.get("float_name") or io.get("onnx_name", name))
        onnx_shape = [int(d) for d in io.get("onnx_shape", (1, *t.shape))]  # type: ignore[attr-defined]
        rows: list[np.ndarray] = []
        if arrays is not None and onnx_name in arrays:
            x = np.asarray(arrays[onnx_name])[:samples]
            if x.dtype != np.int8:
                q = np.rint(x.astype(np.float32) / np.float32(t.scale)) + t.zero_point
                x = np.clip(q, -128, 127).astype(np.int8)
            rows.append(x.reshape(x.shape[0], *onnx_shape[1:]))
            from_data = max(from_data, x.shape[0])
        have = sum(r.shape[0] for r in rows)
        if have < samples:
            size = (samples - have, *onnx_shape[1:])
            rows.append(rng.integers(-128, 128, size=size, dtype=np.int8))
        out.append(np.concatenate(rows)[:samples])
    return out, from_data


def _sources(out_dir: Path, core: str) -> tuple[list[Path], list[Path]]:
    from edgeshift.mcu import runner

    kernels = sorted((out_dir / "kernels").glob("*.c")) if (out_dir / "kernels").is_dir() else []
    sources = [out_dir / "model.c", *kernels, out_dir / "main.c", *runner.support_sources(core)]
    includes = [out_dir, out_dir / "kernels"]
    return sources, includes


def _build_stub(out_dir: Path, core: str) -> Path:
    from edgeshift.mcu import runner

    stub_dir = out_dir / "build" / "stub"
    stub_dir.mkdir(parents=True, exist_ok=True)
    (stub_dir / "model_stub.c").write_text(STUB_SOURCE)
    sources = [stub_dir / "model_stub.c", out_dir / "main.c", *runner.support_sources(core)]
    return runner.build_firmware(sources, [out_dir], core, out_dir / "build" / "stub")


def run_compiled(
    out_dir: Path,
    graph: McuGraph,
    core: str,
    stored_in: list[np.ndarray],
    *,
    timeout_s: float,
    progress: Callable[[str], None],
) -> tuple[Path, list[np.ndarray], Any]:
    """Build OUT_DIR's firmware and run it under QEMU on int8 inputs in stored layout (one
    array per graph input, samples first). Returns the ELF, the int8 outputs in stored layout
    (one array per graph output, samples first) and the runner's FirmwareRun."""
    from edgeshift.mcu import runner

    samples = int(stored_in[0].shape[0]) if stored_in else 0
    sources, includes = _sources(out_dir, core)
    progress(f"building firmware for {core} (arm-none-eabi-gcc)")
    elf = runner.build_firmware(sources, includes, core, out_dir / "build" / "model")
    in_bytes = b"".join(
        b"".join(np.ascontiguousarray(x[i]).tobytes() for x in stored_in) for i in range(samples)
    )
    out_per_sample = sum(graph.tensors[n].size_bytes for n in graph.outputs)
    progress(f"running {samples:,} inferences under QEMU ({runner.CORES[core].qemu_machine})")
    run = runner.run_firmware(
        elf, core, in_bytes, output_bytes_per_sample=out_per_sample, timeout_s=timeout_s
    )
    if run.samples != samples:
        raise BackendError(
            f"the firmware answered {run.samples} of {samples} samples — see {out_dir}/build"
        )
    flat = np.frombuffer(run.outputs, dtype=np.int8).reshape(samples, out_per_sample)
    stored_out, start = [], 0
    for name in graph.outputs:
        t = graph.tensors[name]
        stored_out.append(flat[:, start : start + t.size_bytes].reshape(samples, *t.shape))
        start += t.size_bytes
    return elf, stored_out, run


def verify_compiled(
    out_dir: Path,
    graph: McuGraph,
    proto: onnx.ModelProto,
    core: str,
    arrays: dict[str, np.ndarray] | None,
    *,
    samples: int,
    seed: int,
    timeout_s: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    from edgeshift.mcu import runner
    from edgeshift.mcu.reference import from_stored, ort_reference, to_stored

    runner.check_toolchain(need_qemu=True)
    inputs, from_data = verification_inputs(graph, proto, arrays, samples, seed)
    progress(f"running ONNX Runtime on {samples:,} inputs")
    expected = ort_reference(proto, inputs)
    stored_in = to_stored(graph, inputs)

    elf, stored_out, run = run_compiled(
        out_dir, graph, core, stored_in, timeout_s=timeout_s, progress=progress
    )
    stub = _build_stub(out_dir, core)
    got = np.concatenate([y.reshape(samples, -1) for y in from_stored(graph, stored_out)], axis=1)
    want = np.concatenate([np.asarray(e).reshape(samples, -1) for e in expected], axis=1)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    bad = np.flatnonzero(diff.max(axis=1) > 0)

    sizes = runner.section_sizes(elf)
    stub_sizes = runner.section_sizes(stub)
    delta = {k: sizes[k] - stub_sizes[k] for k in sizes}
    macs = graph.macs()
    per_inference = (run.instructions_marked or 0) / samples
    # Where ORT itself computes in float32, the exact integer result may differ by its rounding.
    allowed = 1 if graph.float_groups else 0
    return {
        "core": core,
        "qemu_machine": runner.CORES[core].qemu_machine,
        "samples": samples,
        "samples_from_data": from_data,
        "mismatched_samples": int(bad.size),
        "mismatched_elements": int((diff > 0).sum()),
        "max_abs_diff": int(diff.max()) if diff.size else 0,
        "allowed_abs_diff": allowed,
        "ort_float_groups": graph.float_groups,
        "within_contract": bool(diff.size == 0 or int(diff.max()) <= allowed),
        "first_mismatch": int(bad[0]) if bad.size else None,
        "instructions_per_inference": per_inference,
        "instructions_per_mac": per_inference / macs if macs else None,
        "sizes": sizes,
        "model_sizes": delta,
        "flash_bytes": delta["text"] + delta["rodata"] + delta["data"],
        "ram_bytes": delta["data"] + delta["bss"],
        "arena_bytes_linker": runner.symbol_size(elf, ARENA_SYMBOL),
        "reference": "onnxruntime "
        + __import__("onnxruntime").__version__
        + " (session.qdqisint8allowed=1)",
    }
