"""How close is ``edgeshift estimate --target host`` to ``edgeshift bench``, over the corpus?

One run: every model of the corpus (``benchmarks/corpus.py``; MiniLM at seq 32, 128 and 256)
on ONNX Runtime fp32 and int8 and OpenVINO fp32, bf16 and int8, at batch 1 and 8. The int8
variant of a float model is a static QDQ model built by edgeshift's ``ort-int8-static``
recipe on the model's eval data; OpenVINO runs that same QDQ file (its low-precision
transformations execute it in int8); the MLPerf Tiny models are int8 already and run as
they are (no float rows). A model whose graph fixes the batch at 1 skips batch 8.

Rounds interleave the host calibration passes and the bench runs: each row keeps its best
p50 ("measured"), each microbenchmark its best time, so a busy neighbour hurts neither side
more than the other. Per row: the estimate, its 80% interval, the measurement, the error
(estimate / measured - 1), and whether the interval covered the measurement. The interval
of a row is fitted leave-one-model-out (on the other models' rows only), so the coverage is
what a new model would see. The summary checks the goals: median |error| <= 10%, worst <=
30%, coverage >= 80%. ``--write-error-model`` stores the run's errors as the package's
``targets/estimate_error.yaml`` (what ``estimate`` states as its interval).

Run: ``python benchmarks/estimate_accuracy.py [--models a,b] [--configs ort-fp32,ov-int8]
[--batches 1,8] [--seqs 32,128,256] [--duration 1.5] [--rounds 3] [--cached]
[--write-error-model]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import Case, cases, materialize

from edgeshift.bench import bench
from edgeshift.model.analysis import analyze
from edgeshift.model.load import load_model
from edgeshift.runtime.openvino import cpu_capabilities
from edgeshift.targets.estimate import estimate
from edgeshift.targets.host import (
    build_host_target,
    detect_host,
    load_calibration,
    new_calibrator,
    save_calibration,
)
from edgeshift.targets.interval import (
    COVERAGE,
    ERROR_MODEL_PATH,
    ErrorSample,
    covered,
    error_model_to_yaml,
    fit_error_model,
    leave_one_model_out,
)

# config -> (runtime, precision): what bench runs and what the estimate is asked for
CONFIGS: dict[str, tuple[str, str]] = {
    "ort-fp32": ("onnxruntime", "fp32"),
    "ort-int8": ("onnxruntime", "int8"),
    "ov-fp32": ("openvino", "fp32"),
    "ov-bf16": ("openvino", "bf16"),
    "ov-int8": ("openvino", "int8"),
}
MINILM_SEQS = (32, 128, 256)
GOAL_MEDIAN, GOAL_WORST = 0.10, 0.30


@dataclass
class Row:
    case: str  # the corpus model (leave-one-model-out drops all its rows together)
    config: str
    batch: int
    seq: int | None
    model_path: Path  # the file bench loads and the estimate analyses
    data_path: Path | None
    p50s: list[float] = field(default_factory=list)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.case}@{self.seq}" if self.seq else self.case


def fixed_batch(model_path: Path) -> int | None:
    """The batch the graph fixes (its first input's first dim), or None when it is dynamic."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    for value in graph.input:
        if value.name in init:
            continue
        dims = value.type.tensor_type.shape.dim
        return dims[0].dim_value if dims and dims[0].dim_value > 0 else None
    return None


def build_int8(model_path: Path, data_path: Path, out: Path) -> Path | str:
    """A static QDQ int8 model of a float model (edgeshift's ort-int8-static recipe)."""
    from edgeshift.verify.variants import build_variant_artifacts

    if (out / "ort-int8-static" / "model.onnx").exists():  # a --workdir of an earlier run
        return out / "ort-int8-static" / "model.onnx"
    try:
        built = build_variant_artifacts(model_path, data_path, out, ["ort-int8-static"])
    except Exception as exc:  # a recipe failure is a skip reason here, not the end of the run
        return f"ort-int8-static failed: {str(exc).splitlines()[0][:120]}"
    result = built["ort-int8-static"]
    return result / "model.onnx" if isinstance(result, Path) else result


def plan_rows(
    chosen: list[tuple[Case, str | None]],
    configs: list[str],
    batches: list[int],
    seqs: list[int],
    tmp: Path,
    console: Console,
) -> tuple[list[Row], list[str]]:
    """The rows to measure, and one line per skipped (case, config, batch) with the reason."""
    rows: list[Row] = []
    skipped: list[str] = []
    bf16 = "BF16" in cpu_capabilities()
    for case, reason in chosen:
        if reason:
            skipped.append(f"{case.name}: unavailable — {reason}")
            continue
        model_path, data_path = materialize(case, tmp / case.name)
        stored_int8 = case.family == "int8"
        int8_path: Path | str = model_path if stored_int8 else ""
        if not stored_int8 and {"ort-int8", "ov-int8"} & set(configs):
            t0 = time.perf_counter()
            int8_path = build_int8(model_path, data_path, tmp / f"{case.name}-int8")
            console.print(
                f"built {case.name} int8 in {time.perf_counter() - t0:.0f} s", style="dim"
            )
        fixed = fixed_batch(model_path)
        for config in configs:
            precision = CONFIGS[config][1]
            if precision == "bf16" and not bf16:
                skipped.append(f"{case.name} {config}: this CPU has no bf16")
                continue
            if precision == "int8":
                if isinstance(int8_path, str):
                    skipped.append(f"{case.name} {config}: no int8 model — {int8_path}")
                    continue
                path = int8_path
            elif stored_int8:
                skipped.append(f"{case.name} {config}: an int8 QDQ export, no float graph")
                continue
            else:
                path = model_path
            for batch in batches:
                if fixed is not None and batch != fixed:
                    skipped.append(
                        f"{case.name} {config} batch {batch}: the graph fixes batch {fixed}"
                    )
                    continue
                if case.family == "transformer":
                    for seq in seqs:  # synthesized token ids: the eval data has one seq
                        rows.append(Row(case.name, config, batch, seq, path, None))
                else:
                    rows.append(Row(case.name, config, batch, None, path, data_path))
    return rows, skipped


def bench_row(row: Row, duration_s: float) -> None:
    runtime, precision = CONFIGS[row.config]
    # ORT runs the stored graph; OpenVINO takes the precision hint (f32 for the QDQ file: its
    # low-precision transformations run the quantized ops in int8 under any hint).
    hint = None if runtime == "onnxruntime" else ("fp32" if precision == "int8" else precision)
    shapes = {"seq": (row.seq,)} if row.seq else None
    # After the first round a row whose calls are long runs a fixed count of them (at least
    # 3) instead of the harness's minimum of 10, so MiniLM at seq 256, batch 8 stays in budget.
    count = None
    if row.p50s and 10 * min(row.p50s) / 1e3 > duration_s:
        count = max(3, int(duration_s * 1e3 / min(row.p50s)))
    r = bench(row.model_path, backend=runtime, precision=hint, batch=row.batch, shapes=shapes,
              data=row.data_path, duration_s=None if count else duration_s, iterations=count,
              warmup=2)  # fmt: skip
    row.p50s.append(r.p50_ms)
    row.input_shapes = dict(r.input_shapes)


def _row_key(row: Row) -> str:
    return f"{row.label}|{row.config}|{row.batch}"


def save_measured(path: Path, rows: list[Row]) -> None:
    """Every row's p50s and input shapes as JSON: ``--measured`` re-estimates them later
    (another version of the estimate, the same measurements) without timing anything."""
    data = {_row_key(r): {"p50s": r.p50s, "input_shapes": {k: list(v) for k, v in
                                                          r.input_shapes.items()}}
            for r in rows}  # fmt: skip
    path.write_text(json.dumps(data, indent=1))


def load_measured(path: Path, rows: list[Row]) -> int:
    """Fill ROWS' measurements from a ``--save-measured`` file; returns how many were found."""
    data = json.loads(path.read_text())
    found = 0
    for row in rows:
        saved = data.get(_row_key(row))
        if saved:
            row.p50s = list(saved["p50s"])
            row.input_shapes = {k: tuple(v) for k, v in saved["input_shapes"].items()}
            found += 1
    return found


def estimate_row(row: Row, target: Any, analyses: dict[Any, Any]) -> Any:
    runtime, precision = CONFIGS[row.config]
    key = (row.model_path, tuple(sorted(row.input_shapes.items())), row.batch)
    if key not in analyses:
        analyses[key] = analyze(
            load_model(row.model_path), shapes=row.input_shapes, batch=row.batch
        )
    # The manifest names the runtime the row ran on (the estimate's default on the host is ORT
    # except at bf16/fp16), so its error is counted for that runtime.
    manifest = {"backend": runtime, "precision": precision}
    return estimate(analyses[key], target, batch=row.batch, precision=precision, manifest=manifest)


def run(args: argparse.Namespace) -> int:
    console = Console(width=160)
    host = detect_host()
    names = args.models.split(",") if args.models else None
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config(s) {', '.join(unknown)}: use {', '.join(CONFIGS)}")
    batches = [int(b) for b in args.batches.split(",")]
    seqs = [int(s) for s in args.seqs.split(",")]
    if args.measured and args.write_error_model:
        raise SystemExit("--write-error-model needs this run's own measurements, not --measured")
    cached = load_calibration(host) if args.cached else None
    if args.cached and cached is None:
        raise SystemExit("no cached calibration: run `edgeshift targets host` first")
    calibrator = None if args.cached else new_calibrator(host)
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    workdir = (
        contextlib.nullcontext(args.workdir)
        if args.workdir
        else tempfile.TemporaryDirectory(prefix="estimate-accuracy-")
    )
    with workdir as tmp_dir:
        rows, skipped = plan_rows(cases(names), configs, batches, seqs, Path(tmp_dir), console)
        per_round = args.duration / args.rounds
        reused = load_measured(args.measured, rows) if args.measured else 0
        if reused:
            console.print(f"{reused} rows' measurements read from {args.measured}", style="dim")
        for i in range(args.rounds if reused < len(rows) else 0):
            if calibrator is not None:
                calibrator.run_pass(progress=False)
            for row in rows:
                if not (reused and row.p50s):
                    bench_row(row, per_round)
            console.print(f"round {i + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s)",
                          style="dim")  # fmt: skip
        if args.save_measured:
            save_measured(args.save_measured, rows)
        cal = calibrator.result() if calibrator is not None else cached
        assert cal is not None
        if calibrator is not None:
            save_calibration(cal, host)
            calibrator.close()
        target = build_host_target(host, cal)
        analyses: dict[Any, Any] = {}
        estimates = [estimate_row(row, target, analyses) for row in rows]
    samples = [
        ErrorSample(row.case, e.runtime, e.precision, e.latency_ms, min(row.p50s))
        for row, e in zip(rows, estimates, strict=True)
    ]
    loo = leave_one_model_out(samples, COVERAGE)
    console.print(
        f"host: {cal.cpu_model}, {cal.threads} threads; calibration {cal.seconds:.1f} s over "
        f"{calibrator.passes if calibrator else cal.passes} passes "
        f"({'cached' if args.cached else 'this run, interleaved'}); {len(rows)} rows, "
        f"{args.rounds} rounds of {per_round:.2g} s each"
    )
    table = Table(title="estimate vs bench on this host (p50 ms per call; 80% interval fitted "
                  "leave-one-model-out)")  # fmt: skip
    for col in ("model", "runtime", "prec", "batch", "estimate", "80% interval", "measured",
                "error", "covered", "spread"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("model", "runtime", "prec") else "right")
    for row, s, f in zip(rows, samples, loo, strict=True):
        interval = "—" if f is None else f"{s.estimated_ms * f[0]:.3g}-{s.estimated_ms * f[1]:.3g}"
        err = s.estimated_ms / s.measured_ms - 1
        table.add_row(
            row.label, s.runtime, s.precision, str(row.batch), f"{s.estimated_ms:.3g}", interval,
            f"{s.measured_ms:.3g}", f"{err:+.0%}", "yes" if covered(s, f) else "[red]no[/]",
            f"{max(row.p50s) / min(row.p50s):.2f}",
        )  # fmt: skip
    console.print(table)
    for line in skipped:
        console.print(f"  skipped: {line}", style="dim", markup=False)
    errors = [abs(s.estimated_ms / s.measured_ms - 1) for s in samples]
    hits = sum(covered(s, f) for s, f in zip(samples, loo, strict=True))
    if not errors:
        console.print("no rows measured")
        return 1
    med, worst = statistics.median(errors), max(errors)
    worst_row = rows[errors.index(worst)]
    console.print(
        f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
        f"{time.perf_counter() - t_start:.0f} s in all"
    )

    def verdict(ok: bool) -> str:
        return "[green]meets[/]" if ok else "[red]misses[/]"

    console.print(f"median |error| {med:.1%} over {len(errors)} rows "
                  f"({verdict(med <= GOAL_MEDIAN)} the {GOAL_MEDIAN:.0%} goal)")  # fmt: skip
    console.print(f"worst |error| {worst:.1%} ({worst_row.label} {worst_row.config} batch "
                  f"{worst_row.batch}; {verdict(worst <= GOAL_WORST)} the {GOAL_WORST:.0%} goal)")  # fmt: skip
    unfitted = sum(f is None for f in loo)  # counted as not covered
    console.print(f"coverage {hits}/{len(samples)} = {hits / len(samples):.0%} of the 80% interval, "
                  f"leave one model out ({verdict(hits >= COVERAGE * len(samples))} the 80% goal)"
                  + (f"; {unfitted} rows had too few other cases for an interval" if unfitted else ""))  # fmt: skip
    by_group: dict[tuple[str, str], list[float]] = {}
    for s, e in zip(samples, errors, strict=True):
        by_group.setdefault((s.runtime, s.precision), []).append(e)
    for (runtime, precision), errs in sorted(by_group.items()):
        console.print(f"  {runtime} {precision}: median |error| {statistics.median(errs):.0%}, "
                      f"worst {max(errs):.0%}, {len(errs)} rows", markup=False)  # fmt: skip
    if args.write_error_model:
        run_info = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": f"{cal.cpu_model}, {cal.threads} threads",
            "runtime_versions": dict(cal.runtime_versions),
            "corpus": sorted({row.label for row in rows}),
            "configs": configs,
            "batches": batches,
            "n": len(samples),
            "loo_coverage": f"{hits}/{len(samples)}",
            "median_abs_error": round(med, 4),
            "worst_abs_error": round(worst, 4),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "command": "python benchmarks/estimate_accuracy.py " + " ".join(sys.argv[1:]),
        }
        model = fit_error_model(samples, COVERAGE, run_info)
        ERROR_MODEL_PATH.write_text(error_model_to_yaml(model))
        console.print(f"wrote {ERROR_MODEL_PATH} ({len(model.groups)} groups)")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default="", help="corpus cases, comma-separated (default all)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--seqs", default=",".join(map(str, MINILM_SEQS)), help="MiniLM seqs")
    parser.add_argument(
        "--duration", type=float, default=1.5, help="bench seconds per row, all rounds"
    )
    parser.add_argument("--rounds", type=int, default=3, help="bench rounds per row (best p50)")
    parser.add_argument("--cached", action="store_true", help="reuse the cached calibration")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the models (and int8 builds) here, not in a temp dir",
    )
    parser.add_argument(
        "--save-measured",
        type=Path,
        default=None,
        help="write every row's measurements to this JSON file",
    )
    parser.add_argument(
        "--measured",
        type=Path,
        default=None,
        help="re-estimate the rows of a --save-measured file, timing only "
        "rows it lacks (a model change checked on the same measurements)",
    )
    parser.add_argument("--write-error-model", action="store_true",
                        help=f"write the run's errors to {ERROR_MODEL_PATH.name}")  # fmt: skip
    raise SystemExit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
