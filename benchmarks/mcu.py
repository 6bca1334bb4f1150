"""edgeshift compile on the MLPerf Tiny reference models and the zoo: RAM, flash, instructions.

Compiles each model for Cortex-M4 and Cortex-M7, runs it under QEMU (exact instruction
counts from a TCG plugin), checks it bit for bit against ONNX Runtime, and prints one table:

    model | MACs | RAM (arena + .data + .bss) | vs TFLM arena | flash | flash - weights |
    instr/inference M4 | instr/MAC M4 | instr/MAC M7 | ms @120 MHz, 1 IPC | bit-exact

TFLM's smallest arenas were measured on these machines (shared/mcu-bench/README.md): the
tflite-micro host interpreter, binary search at 16 B. Instruction counts are exact and
repeatable; milliseconds are counts / 120 MHz at one instruction per cycle, the issue's yardstick
(the MLPerf reference board is a 120 MHz Cortex-M4), not a measurement of time.

    python benchmarks/mcu.py [--samples 1000] [--models kws,vww,ic,ad,digits-mlp,digits-cnn] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "mcu" / "fixtures" / "mlperf_tiny"
MLPERF = {
    # name: (file, TFLM smallest arena in bytes, TFLM 2.3.1 reference latency on a 120 MHz M4)
    "kws": ("kws_ref_model.onnx", 24_282, 181.9),
    "vww": ("vww_96_int8.onnx", 103_686, 600.6),
    "ic": ("pretrainedResnet_quant.onnx", 55_986, 704.0),
    "ad": ("ad01_int8.onnx", 4_639, 10.05),
}
ZOO = ("digits-mlp", "digits-cnn")
CLOCK_HZ = 120e6
GOALS = "RAM >= 30% below TFLM; flash <= weights + 12 KB; <= 2.5 instr/MAC on M4; KWS <= 110 ms"


def _model(name: str, work: Path) -> tuple[Path, Path | None]:
    if name in MLPERF:
        return FIXTURES / MLPERF[name][0], None
    from edgeshift import zoo

    got = zoo.get(name, work / name)
    return got.model_path, got.data_path


def _compile(name: str, core: str, samples: int, work: Path) -> dict:
    from edgeshift.mcu.compile import compile_model

    model, data = _model(name, work)
    start = time.perf_counter()
    result = compile_model(
        model, core, data=data, out=work / f"{name}-{core}", force=True, verify=True,
        samples=samples,
    )  # fmt: skip
    v = result.manifest["verification"]
    return {
        "macs": result.manifest["macs"],
        "weight_bytes": result.manifest["weight_bytes"],
        "arena": result.manifest["memory_plan"]["arena_bytes"],
        "ram": v["ram_bytes"],
        "flash": v["flash_bytes"],
        "instructions": v["instructions_per_inference"],
        "per_mac": v["instructions_per_mac"],
        "mismatched": v["mismatched_samples"],
        "samples": v["samples"],
        "seconds": time.perf_counter() - start,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--models", default=",".join([*MLPERF, *ZOO]))
    parser.add_argument("--cores", default="cortex-m4,cortex-m7")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    cores = [c.strip() for c in args.cores.split(",") if c.strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeshift-mcu-bench-") as tmp:
        for name in names:
            per_core = {}
            for core in cores:
                print(f"{name} on {core} ...", file=sys.stderr, flush=True)
                per_core[core] = _compile(name, core, args.samples, Path(tmp))
            rows.append((name, per_core))
    if args.json:
        print(json.dumps({name: r for name, r in rows}, indent=2))
        return 0

    first = cores[0]
    header = (
        f"{'model':<11} {'MACs':>10} {'RAM B':>8} {'TFLM B':>8} {'RAM/TFLM':>9} {'params B':>9} "
        f"{'flash B':>9} {'flash-par':>9} "
        + " ".join(f"{'i/MAC ' + c[7:]:>9}" for c in cores)
        + f" {'instr/inf ' + first[7:]:>14} {'ms@120MHz':>10} {'TFLM ms':>8} {'exact':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, per_core in rows:
        r = per_core[first]
        tflm = MLPERF.get(name, (None, None, None))
        ram_ratio = f"{r['ram'] / tflm[1]:.2f}x" if tflm[1] else "—"
        exact = all(p["mismatched"] == 0 for p in per_core.values())
        n = min(p["samples"] for p in per_core.values())
        print(
            f"{name:<11} {r['macs']:>10,} {r['ram']:>8,} {tflm[1] or '—':>8} {ram_ratio:>9} "
            f"{r['weight_bytes']:>9,} {r['flash']:>9,} {r['flash'] - r['weight_bytes']:>9,} "
            + " ".join(f"{per_core[c]['per_mac']:>9.2f}" for c in cores)
            + f" {r['instructions']:>14,.0f} {r['instructions'] / CLOCK_HZ * 1e3:>10.1f} "
            f"{tflm[2] or '—':>8} {('yes' if exact else 'NO') + f' ({n})':>11}"
        )
    print(
        "\nRAM: what the model adds to a firmware's .data + .bss (the arena; weights are const)."
        "\nparams: int8 weights + int32 biases + float32 multipliers; flash-par: the rest of the"
        "\nflash the model adds (kernels, model_infer, parameter structs, softmax tables)."
        f"\ngoals: {GOALS}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
