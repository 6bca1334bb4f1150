"""`edgeshift optimize` over the benchmark corpus: the chosen variant's speed-up over ORT fp32
with default settings and over the fastest plain runtime default inside the budget, from one run.

For each case of ``benchmarks/corpus.py`` the full search runs (not --quick) with the case's
metric and its default budget; then three configurations are timed side by side on the same
held-out inputs, in interleaved rounds so that a noisy neighbour hurts them all alike: the
original on ORT fp32 defaults, the original on OpenVINO with no config at all (its own default
precision, bf16 on CPUs that have it), and the artifact as `edgeshift bench DIR` opens it
(shapes fixed to the inputs'). The table reports the median of per-round medians.

"best default" is the faster of ORT's default and OpenVINO's default *when the latter stays
inside the budget* (the search scored that very configuration: its openvino-<precision>
candidate); when OpenVINO's default is faster but outside the budget, the line under the table
says so. The openvino-int8-ac column is NNCF's accuracy control beside edgeshift's own recovery
(openvino-int8 row): status and drop of each.

Goals (issue #12; batch 1 on the CPUs this process may use): every float conv, recurrent and
transformer model >= 2.5x ORT fp32 default and >= 1.1x the best default; MiniLM seq 128 <= 3 ms.

Run: ``python benchmarks/optimize.py [--rounds 7] [--iterations 30] [--models minilm-l6 ...]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import openvino as ov
from corpus import Case, cases, materialize
from rich.console import Console
from rich.table import Table

from edgeshift.bench import measure
from edgeshift.model import graph_io, load_model
from edgeshift.optimize import optimize
from edgeshift.optimize.manifest import CandidateRecord
from edgeshift.optimize.recipes import all_recipes
from edgeshift.optimize.result import OptimizeResult
from edgeshift.optimize.search import evaluation_split
from edgeshift.optimize.selection import openvino_default_precision
from edgeshift.runtime import open_backend

MINILM_GOAL_MS = 3.0
ORT_GOAL = 2.5
DEFAULT_GOAL = 1.1
# The default search plus NNCF's accuracy control, the anchor its recovery is compared with.
RECIPES = [r.name for r in all_recipes() if r.default] + ["openvino-int8-ac"]


class _OpenVINODefault:
    """OpenVINO exactly as a user's first try: compile_model(path, "CPU"), no config."""

    name = "openvino"
    precision = "default"

    def __init__(self, path: Path) -> None:
        self._request = ov.Core().compile_model(str(path), "CPU").create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> dict:
        return dict(enumerate(self._request.infer(feeds).values()))


def _held_out_feeds(model: Path, data: Path, count: int = 8) -> list[dict[str, np.ndarray]]:
    inputs, _ = graph_io(load_model(model).proto)
    arrays = dict(np.load(data))
    n = len(arrays[inputs[0].name])
    _, held = evaluation_split(n, seed=0, quick=False)
    return [{i.name: arrays[i.name][j : j + 1] for i in inputs} for j in held[:count]]


def _side_by_side(runners: list, feeds: list, rounds: int, iterations: int) -> list[float]:
    per_round: list[list[float]] = [[] for _ in runners]
    for _ in range(rounds):
        for i, runner in enumerate(runners):
            times = measure(runner, feeds, iterations=iterations, warmup=3)  # type: ignore[arg-type]
            per_round[i].append(statistics.median(times) * 1e3)
    return [statistics.median(r) for r in per_round]


def _record(result: OptimizeResult, name: str) -> CandidateRecord | None:
    return next((c for c in result.candidates if c.name == name), None)


def _verdict(record: CandidateRecord | None) -> str:
    if record is None:
        return "—"
    drop = "" if record.drop is None else f" {record.drop:+.3g}"
    return f"{record.status}{drop}"


def _goals(case: Case, chosen_ms: float, vs_ort: float, vs_default: float) -> str:
    if case.name == "minilm-l6":
        return "met" if chosen_ms <= MINILM_GOAL_MS and vs_ort >= ORT_GOAL else "missed"
    if not case.float_model:
        return "n/a"
    return "met" if vs_ort >= ORT_GOAL and vs_default >= DEFAULT_GOAL else "missed"


def run(names: list[str] | None, rounds: int, iterations: int) -> None:
    console = Console(width=max(Console().width, 220))
    table = Table(
        title=f"optimize: chosen variant vs defaults (batch 1, {rounds} rounds x {iterations} "
        "runs, p50 ms)"
    )
    columns = (
        "model",
        "chosen",
        "metric (budget)",
        "delta",
        "ORT fp32",
        "OV default",
        "chosen ms",
        "vs ORT fp32",
        "best default",
        "vs best",
        "goal",
        "int8 (recovery)",
        "int8-ac (NNCF)",
        "search s",
    )
    for column in columns:
        left = column in ("model", "chosen", "metric (budget)", "best default")
        table.add_column(column, justify="left" if left else "right")
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, missing in cases(names):
            if missing is not None:
                notes.append(f"{case.name}: not run ({missing})")
                continue
            if case.family == "int8":  # the goals are for float models; estimate covers these
                notes.append(f"{case.name}: not run (already int8: nothing for optimize to choose)")
                continue
            model, data = materialize(case, Path(tmp) / case.name)
            started = time.perf_counter()
            result = optimize(
                model, data, metric=case.metric, recipes=RECIPES, out=Path(tmp) / f"{case.name}-art"
            )
            search_s = time.perf_counter() - started
            feeds = _held_out_feeds(model, data)
            artifact = open_backend(result.artifact_dir)  # type: ignore[arg-type]
            artifact.fix_input_shapes(
                {k: tuple(v.shape) for k, v in feeds[0].items()}
            )  # as bench does
            runners = [
                open_backend(model, "onnxruntime", "fp32"),
                _OpenVINODefault(model),
                artifact,
            ]
            ort_ms, ov_ms, chosen_ms = _side_by_side(runners, feeds, rounds, iterations)
            m = result.manifest
            ov_default = _record(
                result, f"openvino-{openvino_default_precision(m.host.openvino_capabilities)}"
            )
            ov_inside = ov_default is not None and ov_default.status in ("accepted", "chosen")
            best_ms, best = (
                (ov_ms, "OV default") if ov_inside and ov_ms < ort_ms else (ort_ms, "ORT fp32")
            )
            vs_ort, vs_best = ort_ms / chosen_ms, best_ms / chosen_ms
            acc, metric = m.accuracy, m.metric
            table.add_row(
                case.name,
                result.chosen.name,
                f"{metric.name} ({metric.max_drop:.3g})",
                f"{-acc.drop if metric.higher_is_better else acc.drop:+.3g}",
                f"{ort_ms:.3f}",
                f"{ov_ms:.3f}" + ("" if ov_inside else " (out)"),
                f"{chosen_ms:.3f}",
                f"{vs_ort:.2f}x",
                best,
                f"{vs_best:.2f}x",
                _goals(case, chosen_ms, vs_ort, vs_best),
                _verdict(_record(result, "openvino-int8")),
                _verdict(_record(result, "openvino-int8-ac")),
                f"{search_s:.0f}",
            )
            console.print(f"[dim]{case.name}: {result.message}[/]")
            if m.outside_budget_default is not None:
                notes.append(f"{case.name}: {m.outside_budget_default.line}")
            elif not ov_inside and ov_ms < chosen_ms:
                notes.append(
                    f"{case.name}: OpenVINO's own default is {chosen_ms / ov_ms:.2f}x faster than "
                    f"the chosen variant here but outside the budget "
                    f"({metric.name} drop {ov_default.drop if ov_default else float('nan'):.3g})"
                )
            for c in result.candidates:
                console.print(
                    f"[dim]  {c.name:22} {c.status:9} score={c.score if c.score is None else round(c.score, 5)}"
                    f" p50={c.p50_ms if c.p50_ms is None else round(c.p50_ms, 3)} {c.reason}[/]"
                )
    console.print(table)
    for note in notes:
        console.print(note, soft_wrap=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument(
        "--models", nargs="*", default=None, help="corpus case names (default: all)"
    )
    args = parser.parse_args()
    run(args.models or None, args.rounds, args.iterations)


if __name__ == "__main__":
    main()
