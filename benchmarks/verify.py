"""Agreement of every zoo model and variant on arm64 (QEMU user mode) with x86, and what the
verification cost. Run: python benchmarks/verify.py [--samples N] [--cpu neoverse-n1]

Timings under emulation are the cost of verifying, never an Arm CPU's performance.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from edgeshift import zoo
from edgeshift.verify import EMULATION_NOTE, verify_many
from edgeshift.verify.runners import DEFAULT_CPU, QemuUserRunner
from edgeshift.verify.variants import build_variant_artifacts

ZOO = ("digits-mlp", "digits-cnn")
RECIPES = (
    "ort-fp32-opt",
    "openvino-fp32",
    "ort-int8-static",
    "ort-int8-dynamic",
    "openvino-int8",
    "openvino-bf16",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=None, help="default: the whole eval set")
    parser.add_argument("--cpu", default=DEFAULT_CPU, help="QEMU -cpu model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        artifacts, data, keys = [], [], []
        for name in ZOO:
            model = zoo.get(name, out / name)
            built = build_variant_artifacts(
                model.model_path, model.data_path, out / f"{name}-v", RECIPES
            )
            for recipe, path in built.items():
                if isinstance(path, Path):
                    artifacts.append(path)
                    data.append(model.data_path)
                    keys.append((name, recipe))
                else:
                    print(f"{name} {recipe}: not built on this host ({path})")
        start = time.perf_counter()
        runner = QemuUserRunner(cpu=args.cpu)
        reports = verify_many(
            artifacts, ["arm64"], data, samples=args.samples, runners={"arm64": runner}
        )
        wall_s = time.perf_counter() - start
    header = f"{'model':<11} {'variant':<17} {'prec':<5} {'verdict':<6} {'top-1 %':>8} {'cosine':>10} {'max rel':>9} {'run s*':>7}"
    print(f"arm64 (qemu-aarch64 -cpu {args.cpu}) vs x86_64, {reports[0].samples} samples per model")
    print(header)
    print("-" * len(header))
    for (name, recipe), report in zip(keys, reports, strict=True):
        arm = report.result("arm64")
        if not arm.outputs:
            print(
                f"{name:<11} {recipe:<17} {report.precision:<5} {arm.status:<6} {arm.message[:90]}"
            )
            continue
        a = arm.outputs[0].agreement
        top1 = f"{a.top1_agreement_pct:.2f}" if a.top1_agreement_pct is not None else "-"
        print(
            f"{name:<11} {recipe:<17} {report.precision:<5} {arm.status:<6} {top1:>8} "
            f"{a.cosine_mean:>10.7f} {a.max_rel_error:>9.2g} {arm.seconds:>7.2f}"
        )
    print(
        f"\nverification of {len(artifacts)} artifacts (one emulated process): {wall_s:.1f} s wall"
    )
    print(f"* {EMULATION_NOTE}")


if __name__ == "__main__":
    main()
