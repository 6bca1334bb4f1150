"""`edgeshift optimize` on the zoo models (and MiniLM when installed): the chosen variant's
speed-up over ORT fp32 with default settings and over OpenVINO's default, from one run.

For each model the full search runs (not --quick); then three configurations are timed side
by side on the same held-out inputs, in interleaved rounds so that a noisy neighbour hurts
them all alike: the original on ORT fp32 defaults, the original on OpenVINO with no config
at all (its own default precision, bf16 on CPUs that have it), and the artifact as
`edgeshift bench DIR` opens it. The table reports the median of per-round medians.

Run: ``python benchmarks/optimize.py [--rounds 7] [--iterations 30] [--models minilm-l6]``.
MiniLM goal (seq 128, batch 1): >= 2x over ORT fp32 default with cosine >= 0.99.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import openvino as ov
from rich.console import Console
from rich.table import Table

from edgeshift import zoo
from edgeshift.bench import measure
from edgeshift.model import graph_io, load_model
from edgeshift.optimize import optimize
from edgeshift.optimize.search import evaluation_split
from edgeshift.runtime import open_backend


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


def run(names: list[str], rounds: int, iterations: int) -> None:
    console = Console(width=max(Console().width, 200))
    table = Table(
        title=f"optimize: chosen variant vs defaults (batch 1, {rounds} rounds x {iterations} runs, p50)"
    )
    for column in (
        "model",
        "chosen",
        "metric",
        "original",
        "chosen score",
        "delta",
        "ORT fp32 ms",
        "OV default ms",
        "chosen ms",
        "vs ORT fp32",
        "vs OV default",
        "search s",
    ):
        table.add_column(
            column, justify="left" if column in ("model", "chosen", "metric") else "right"
        )
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            m = zoo.get(name, Path(tmp) / name)
            started = time.perf_counter()
            result = optimize(m.model_path, m.data_path, out=Path(tmp) / f"{name}-art")
            search_s = time.perf_counter() - started
            feeds = _held_out_feeds(m.model_path, m.data_path)
            runners = [
                open_backend(m.model_path, "onnxruntime", "fp32"),
                _OpenVINODefault(m.model_path),
                open_backend(result.artifact_dir),  # type: ignore[arg-type]
            ]
            ort_ms, ov_ms, chosen_ms = _side_by_side(runners, feeds, rounds, iterations)
            acc, metric = result.manifest.accuracy, result.manifest.metric
            table.add_row(
                name,
                result.chosen.name,
                f"{metric.name} (budget {metric.max_drop:.3g})",
                f"{acc.original:.4g}",
                f"{acc.chosen:.4g}",
                f"{-acc.drop if metric.higher_is_better else acc.drop:+.3g}",
                f"{ort_ms:.3f}",
                f"{ov_ms:.3f}",
                f"{chosen_ms:.3f}",
                f"{ort_ms / chosen_ms:.2f}x",
                f"{ov_ms / chosen_ms:.2f}x",
                f"{search_s:.0f}",
            )
            console.print(f"[dim]{name}: {result.message}[/]")
            for c in result.candidates:
                console.print(
                    f"[dim]  {c.name:22} {c.status:9} score={c.score if c.score is None else round(c.score, 5)}"
                    f" p50={c.p50_ms if c.p50_ms is None else round(c.p50_ms, 3)} {c.reason}[/]"
                )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument(
        "--models", nargs="*", default=None, help="zoo names (default: all available)"
    )
    args = parser.parse_args()
    names = args.models or [e.name for e in zoo.list_models() if e.available]
    run(names, args.rounds, args.iterations)


if __name__ == "__main__":
    main()
