"""The search: build every candidate, score it on held-out data, recover accuracy where it
falls short, time the survivors side by side, keep the fastest within budget, write the artifact.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

import edgeshift
from edgeshift.errors import BackendError, BudgetError, DataError, MismatchError, OptimizeError
from edgeshift.model.load import LoadedModel, load_model, sha256_file
from edgeshift.model.repair import repair_for_quantization
from edgeshift.model.shapes import graph_io
from edgeshift.optimize.candidates import Candidate, try_candidate
from edgeshift.optimize.data import EvalData, fixed_batch, load_eval_data, split_indices
from edgeshift.optimize.evaluate import eval_batches, run_outputs
from edgeshift.optimize.host import detect_host
from edgeshift.optimize.isa import recipe_skip_reason, target_arch
from edgeshift.optimize.manifest import (
    AccuracyInfo,
    CandidateRecord,
    Manifest,
    MetricInfo,
    PerformanceInfo,
    SourceInfo,
    write_manifest,
)
from edgeshift.optimize.metrics import Metric, check_metric_name, resolve_metric
from edgeshift.optimize.recipes import BuildContext, HeldOut, Recipe, Variant, all_recipes
from edgeshift.optimize.result import OptimizeResult
from edgeshift.optimize.selection import (
    choose,
    measure_candidates,
    objective_key,
    outside_budget_default,
    reject_slow_recoveries,
    rejected_defaults,
    set_speedups,
)
from edgeshift.runtime import BACKENDS, open_backend, usable_cpus
from edgeshift.runtime.base import Backend
from edgeshift.targets.catalog import get_target
from edgeshift.targets.schema import Target

ARTIFACT_MODEL = "model.onnx"
ORIGINAL = "original"
ProgressFn = Callable[[str, int, int], None]  # (what is happening, steps done, steps in all)


@dataclass
class _Settings:
    max_calibration: int
    max_eval: int | None
    bench_seconds: float
    min_iterations: int
    warmup: int
    rounds: int
    bisect: bool

    @classmethod
    def for_mode(cls, quick: bool, bench_seconds: float | None) -> _Settings:
        if quick:
            return cls(16, 64, bench_seconds or 0.2, 5, 2, 1, False)
        return cls(64, None, bench_seconds or 2.0, 20, 5, 3, True)


def evaluation_split(samples: int, seed: int, quick: bool) -> tuple[np.ndarray, np.ndarray]:
    """The (calibration, held-out) sample indices a search with SEED and QUICK uses."""
    settings = _Settings.for_mode(quick, None)
    return split_indices(samples, seed, settings.max_calibration, settings.max_eval)


def optimize(
    model: str | Path | LoadedModel,
    data: str | Path | EvalData,
    *,
    labels: str | None = None,
    metric: str = "auto",
    max_drop: float | None = None,
    objective: str = "latency",
    batch: int = 1,
    backends: Sequence[str] | None = None,
    recipes: Sequence[str] | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    quick: bool = False,
    threads: int | None = None,
    recovery: bool = True,
    require: bool = False,
    bench_seconds: float | None = None,
    progress: ProgressFn | None = None,
    target: str | None = None,
    force: bool = False,
) -> OptimizeResult:
    """Find the fastest variant of MODEL whose accuracy on DATA stays within ``max_drop``.

    DATA is an .npz with one array per model input (first axis = samples) and optionally
    labels (``labels`` names the array; default ``labels``). It is split by ``seed`` into a
    calibration part and a held-out part; only the held-out part is scored. ``metric`` is
    ``auto``, ``top1``, ``sequence`` (CTC), ``cosine``, ``rmse``, ``max-abs``, ``iou`` or
    ``module:function``;
    ``max_drop`` is in its unit (see :mod:`edgeshift.optimize.metrics`). When ``out`` is given
    the chosen model and ``manifest.json`` are written there; when no candidate meets the
    budget the original is kept, and ``require=True`` then raises BudgetError. An ``out``
    directory that already holds files is refused unless ``force`` is True.
    """
    if out is not None:
        check_out_dir(out, force)  # before the search: minutes of work must not end refused
    chosen_recipes = _select_recipes(backends, recipes)
    target_spec = get_target(target) if target is not None else None
    _check_arguments(metric, max_drop, objective, batch, threads)
    settings = _Settings.for_mode(quick, bench_seconds)
    threads = threads or usable_cpus()
    report = progress or (lambda message, done, total: None)
    total_steps = len(chosen_recipes) + 3

    # 1. The model and the data, matched to each other and split.
    report("loading the model and data", 0, total_steps)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    inputs, outputs = graph_io(loaded.proto)
    dataset = data if isinstance(data, EvalData) else load_eval_data(data, inputs, labels)
    fixed = fixed_batch(inputs)
    if fixed is not None and fixed != batch:
        raise DataError(f"the model fixes its batch axis at {fixed}: use --batch {fixed}")
    calib_idx, eval_idx = evaluation_split(dataset.samples, seed, quick)
    calibration, held_out = dataset.take(calib_idx), dataset.take(eval_idx)
    feeds = eval_batches(held_out, batch, fixed)
    calib_feeds = list(calibration.batches(fixed or 1))

    with tempfile.TemporaryDirectory(prefix="edgeshift-optimize-") as tmp:
        workdir = Path(tmp)

        # 2. Repair a copy for the quantizers; the float recipes use the model as given (in one
        # file: weights an exporter wrote beside it are inlined, see _single_file).
        single = _single_file(loaded, workdir)
        repaired = repair_for_quantization(loaded.proto)
        repaired_path = workdir / "repaired.onnx"
        _save(repaired.model, repaired_path)
        ctx = BuildContext(
            source_path=single,
            repaired_path=repaired_path,
            repaired=repaired.model,
            workdir=workdir,
            calibration=calib_feeds,
            host=detect_host(),
            seed=seed,
            quick=quick,
            is_transformer=_looks_like_transformer(repaired.model),
        )

        # 3. The reference: the original on ORT fp32 with default settings.
        report("running the original (onnxruntime fp32)", 1, total_steps)
        original_backend, original_reason = _open_reference(single, threads)
        reference, original_spr = run_outputs(original_backend, feeds)
        chosen_metric = resolve_metric(metric, reference, outputs[0].name, held_out.labels)
        original_score = chosen_metric.score(reference, reference, held_out.labels)
        budget = (
            max_drop
            if max_drop is not None
            else chosen_metric.default_max_drop(reference, held_out.labels, original_score)
        )
        original = Candidate(
            CandidateRecord(
                name=ORIGINAL,
                recipe="none",
                backend=original_backend.name,
                precision="fp32",
                status="accepted",
                reason=original_reason,
                params={"reference": original_reason},
                size_bytes=loaded.path.stat().st_size,
                score=original_score,
                drop=0.0,
                runtime_options=original_backend.runtime_options(),
            ),
            backend=original_backend,
            seconds_per_run=original_spr,
        )

        def evaluate(variant: Variant) -> tuple[float, float, Backend, float]:
            backend = open_backend(
                variant.model_path,
                variant.backend,
                variant.runtime_precision,
                threads,
                variant.options,
            )
            got, seconds_per_run = run_outputs(backend, feeds)
            score = chosen_metric.score(got, reference, held_out.labels)
            return score, chosen_metric.drop(original_score, score), backend, seconds_per_run

        ctx.held_out = _held_out_check(
            feeds, reference, held_out.labels, chosen_metric, original_score, budget, threads
        )

        # 4. Every candidate: build, score, recover accuracy where it falls short.
        candidates = [original]
        for step, recipe in enumerate(chosen_recipes, start=2):
            report(f"building {recipe.name}", step, total_steps)
            skip = _target_skip(recipe, target_spec)
            if skip is not None:
                candidates.append(skip)
                continue
            candidates.append(
                try_candidate(
                    recipe, ctx, evaluate, chosen_metric, budget, recovery, threads, settings.bisect
                )
            )

        # 5. Time the survivors side by side at the requested batch.
        report("measuring the candidates", total_steps - 1, total_steps)
        survivors = [c for c in candidates if c.record.status == "accepted" and c.backend]
        # Met means accurate enough; a variant that then loses on speed still met it.
        budget_met = len(survivors) > 1
        # A plain runtime default the budget rejected is timed too: the report names it when
        # it is faster than the choice (it is never chosen).
        defaults = rejected_defaults(candidates, ctx.host.openvino_capabilities)
        for c in defaults:
            assert c.variant is not None
            v = c.variant
            c.backend = open_backend(v.model_path, v.backend, v.runtime_precision, threads)
        measure_candidates(
            survivors + defaults,
            feeds,
            settings.bench_seconds,
            settings.min_iterations,
            settings.warmup,
            settings.rounds,
        )
        set_speedups(survivors + defaults, objective)
        reject_slow_recoveries(survivors, objective)

        # 6. Choose, explain, write the artifact.
        winner = choose(candidates, objective)
        manifest = _manifest(
            loaded,
            winner,
            original,
            candidates,
            chosen_metric,
            budget,
            objective,
            batch,
            threads,
            ctx,
            repaired.notes,
            budget_met,
            seed,
            quick,
            len(calib_idx),
            held_out,
        )
        manifest.outside_budget_default = outside_budget_default(
            winner, defaults, chosen_metric.name, chosen_metric.unit, budget, objective
        )
        message = _message(winner, original, chosen_metric, budget, budget_met, objective)
        if target_spec is not None:
            manifest.target = target_spec.id
        if out is not None and target_spec is not None:
            # Verified on the target's architecture before it is written: a staging directory
            # beside OUT becomes OUT only when the verification passes.
            check_out_dir(Path(out), force)
            staging = Path(out).parent / f".{Path(out).name}.verifying"
            shutil.rmtree(staging, ignore_errors=True)
            _write_artifact(staging, winner, single, manifest, True)
            try:
                _verify_on_target(staging, manifest, target_spec, dataset)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            shutil.rmtree(out, ignore_errors=True)
            artifact_dir: Path | None = Path(staging.rename(out))
        else:
            artifact_dir = (
                _write_artifact(out, winner, single, manifest, force) if out is not None else None
            )
        report("done", total_steps, total_steps)
        for c in candidates:
            if c.backend is not None:
                c.backend.close()
    result = OptimizeResult(manifest, artifact_dir, message)
    if require and not budget_met:
        raise BudgetError(f"{message} — raise --max-drop or add data; the original was kept")
    return result


def _held_out_check(
    feeds: list[dict[str, np.ndarray]],
    reference: dict[str, np.ndarray],
    labels: np.ndarray | None,
    metric: Metric,
    original_score: float,
    budget: float,
    threads: int,
) -> HeldOut:
    """The search's metric on any subset of the held-out batches (NNCF's accuracy control
    validates on all of them and ranks layers on single ones)."""
    sizes = [next(iter(f.values())).shape[0] for f in feeds]
    starts = np.concatenate([[0], np.cumsum(sizes)])

    def score(outputs: dict[str, np.ndarray], indices: Sequence[int]) -> float:
        rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in indices])
        ref = {k: v[rows] for k, v in reference.items()}
        return metric.score(outputs, ref, None if labels is None else labels[rows])

    return HeldOut(feeds, score, original_score, metric.higher_is_better, budget, threads)


def _target_skip(recipe: Recipe, target: Target | None) -> Candidate | None:
    reason = recipe_skip_reason(recipe.backend, recipe.precision, target) if target else None
    if reason is None:
        return None
    record = CandidateRecord(
        name=recipe.name,
        recipe=recipe.family,
        backend=recipe.backend,
        precision=recipe.precision,
        status="skipped",
        reason=f"not on --target: {reason}",
    )
    return Candidate(record)


def _verify_on_target(
    artifact_dir: Path, manifest: Manifest, target: Target, dataset: EvalData
) -> None:
    """Run the written artifact on the target's architecture; record it; exit 3 on a miss."""
    from edgeshift.verify import verify
    from edgeshift.verify.report import record_for_manifest

    report = verify(artifact_dir, [target_arch(target)], dataset.inputs)
    manifest.verification = record_for_manifest(report)
    write_manifest(artifact_dir, manifest)
    if not report.passed:
        bad = (report.failed or report.errors)[0]
        raise MismatchError(
            f"the chosen artifact does not hold on {target.id}, so it was not written: "
            f"{bad.message}"
        )


def _open_reference(model_path: Path, threads: int) -> tuple[Backend, str]:
    """The original on ORT fp32 defaults; on OpenVINO fp32 when ORT cannot load it."""
    try:
        return open_backend(model_path, "onnxruntime", "fp32", threads), (
            "the reference: ORT fp32, default settings"
        )
    except BackendError as ort_error:
        try:
            backend = open_backend(model_path, "openvino", "fp32", threads)
        except BackendError:
            raise ort_error from None
        return backend, f"the reference: OpenVINO fp32 ({ort_error})"


def _select_recipes(backends: Sequence[str] | None, names: Sequence[str] | None) -> list[Recipe]:
    recipes = all_recipes()
    known = [r.name for r in recipes]
    for name in names or ():
        if name not in known:
            raise OptimizeError(f"unknown recipe {name!r} — use one of {', '.join(known)}")
    for backend in backends or ():
        if backend not in BACKENDS:
            raise OptimizeError(f"unknown backend {backend!r} — use one of {', '.join(BACKENDS)}")
    if names:
        selected = [r for r in recipes if r.name in names]
    else:
        selected = [r for r in recipes if r.default]
    if backends:
        selected = [r for r in selected if r.backend in backends]
    if not selected:
        raise OptimizeError("--backends and --recipes leave no candidate — widen one of them")
    return selected


def _check_arguments(
    metric: str, max_drop: float | None, objective: str, batch: int, threads: int | None
) -> None:
    if objective not in ("latency", "throughput"):
        raise OptimizeError(f"unknown objective {objective!r} — use latency or throughput")
    if batch < 1:
        raise OptimizeError(f"--batch must be >= 1, not {batch}")
    if threads is not None and threads < 1:
        raise OptimizeError(f"--threads must be >= 1, not {threads}")
    if max_drop is not None and (not math.isfinite(max_drop) or max_drop < 0):
        raise OptimizeError(f"--max-drop must be a finite number >= 0, not {max_drop}")
    check_metric_name(metric)


def _save(model: onnx.ModelProto, path: Path) -> None:
    # Past protobuf's 2 GB limit the weights must live beside the graph.
    large = model.ByteSize() > 1_900_000_000
    onnx.save(model, str(path), save_as_external_data=large, location=f"{path.name}.data")


def _looks_like_transformer(model: onnx.ModelProto) -> bool:
    ops = [n.op_type for n in model.graph.node]
    if any(op in ("Attention", "MultiHeadAttention") for op in ops):
        return True
    return "Softmax" in ops and ops.count("MatMul") >= 4


def _manifest(
    loaded: LoadedModel,
    winner: Candidate,
    original: Candidate,
    candidates: list[Candidate],
    metric: Metric,
    budget: float,
    objective: str,
    batch: int,
    threads: int,
    ctx: BuildContext,
    repair_notes: list[str],
    budget_met: bool,
    seed: int,
    quick: bool,
    calibration_samples: int,
    held_out: EvalData,
) -> Manifest:
    w, o = winner.record, original.record
    model_path = winner.variant.model_path if winner.variant else ctx.source_path
    source_sha = sha256_file(loaded.path)
    assert winner.timing is not None and original.timing is not None
    speedup = objective_key(original, objective) / objective_key(winner, objective)
    return Manifest(
        edgeshift_version=edgeshift.__version__,
        model_file=ARTIFACT_MODEL,
        backend=w.backend,
        precision=w.precision,
        runtime_options=w.runtime_options,
        recipe=w.recipe if w.name != ORIGINAL else "none",
        recipe_params={"candidate": w.name, **w.params},
        float_nodes=w.float_nodes,
        source=SourceInfo(
            path=str(loaded.path.resolve()),
            sha256=source_sha,
            size_bytes=loaded.path.stat().st_size,
        ),
        source_sha256=source_sha,
        artifact_sha256=sha256_file(model_path),
        metric=MetricInfo(
            name=metric.name,
            unit=metric.unit,
            higher_is_better=metric.higher_is_better,
            output=metric.output,
            reason=metric.reason,
            max_drop=budget,
        ),
        accuracy=AccuracyInfo(
            original=o.score or 0.0,
            chosen=w.score or 0.0,
            drop=w.drop or 0.0,
            eval_samples=held_out.samples,
            calibration_samples=calibration_samples,
            labels=held_out.labels_key,
        ),
        performance=PerformanceInfo(
            objective=objective,  # type: ignore[arg-type]  # checked in _check_arguments
            batch=batch,
            threads=threads,
            p50_ms=winner.timing.p50_ms,
            p90_ms=winner.timing.p90_ms,
            mean_ms=winner.timing.mean_ms,
            throughput_items_s=winner.timing.throughput_items_s,
            original_p50_ms=original.timing.p50_ms,
            original_throughput_items_s=original.timing.throughput_items_s,
            speedup=speedup,
        ),
        host=ctx.host,
        budget_met=budget_met,
        seed=seed,
        quick=quick,
        repair_notes=repair_notes,
        candidates=[c.record for c in candidates],
    )


def _message(
    winner: Candidate,
    original: Candidate,
    metric: Metric,
    budget: float,
    budget_met: bool,
    objective: str,
) -> str:
    w = winner.record
    if not budget_met:
        return (
            f"no candidate met the budget ({metric.name} drop <= {budget:.4g}); "
            "kept the original model"
        )
    if w.name == ORIGINAL:
        return "no candidate within budget was faster than the original; kept the original model"
    speedup = objective_key(original, objective) / objective_key(winner, objective)
    return (
        f"chose {w.name} ({w.backend} {w.precision}): {speedup:.2f}x the original's "
        f"{objective}, {metric.name} {w.score:.4g} (drop {w.drop:.3g} <= {budget:.3g})"
    )


def check_out_dir(out: str | Path, force: bool) -> None:
    """Refuse an artifact directory that is a file, or that holds files, unless FORCE."""
    directory = Path(out)
    if directory.exists() and not directory.is_dir():
        raise OptimizeError(f"--out {directory} is a file — give a directory for the artifact")
    if not force and directory.is_dir() and any(directory.iterdir()):
        raise OptimizeError(
            f"--out {directory} already holds files (an earlier artifact?) — pass --force to "
            "overwrite it, or give another --out"
        )


def _single_file(loaded: LoadedModel, workdir: Path) -> Path:
    """LOADED as one .onnx file: the user's own file, or, when its weights live in external
    data files (torch's dynamo exporter writes ``model.onnx.data``), a copy in WORKDIR with them
    inlined, so that every candidate and the artifact are a single self-contained model."""
    if not _has_external(loaded.path):
        return loaded.path
    try:
        data = loaded.proto.SerializeToString()
    except ValueError as exc:  # protobuf's 2 GB limit
        raise OptimizeError(
            f"{loaded.path.name}: its weights are over 2 GB, kept in external files, and optimize "
            "writes single-file artifacts — quantize it with onnxruntime/NNCF directly"
        ) from exc
    path = workdir / "source.onnx"
    path.write_bytes(data)
    return path


def _has_external(path: Path) -> bool:
    """Whether the file on disk refers to external data (load_model inlined it in memory)."""
    graph_only = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph_only.graph.initializer)


def _write_artifact(
    out: str | Path, winner: Candidate, single: Path, manifest: Manifest, force: bool
) -> Path:
    directory = Path(out)
    check_out_dir(directory, force)
    directory.mkdir(parents=True, exist_ok=True)
    source = winner.variant.model_path if winner.variant else single
    shutil.copyfile(source, directory / ARTIFACT_MODEL)
    write_manifest(directory, manifest)
    return directory
