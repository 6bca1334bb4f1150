"""verify: run artifacts on other architectures and compare them with this host's run."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeshift.bench.inputs import load_npz, synthesize_inputs
from edgeshift.errors import BackendError, DataError
from edgeshift.model.load import load_model
from edgeshift.model.shapes import TensorSpec, graph_io
from edgeshift.optimize.data import match_eval_data
from edgeshift.verify.agreement import compare_output
from edgeshift.verify.report import ArchResult, OutputCheck, Status, VerifyReport
from edgeshift.verify.runners import Job, JobResult, Runner, native_arch, runner_for
from edgeshift.verify.tolerance import Tolerance, judge

# Without --data: enough random samples that one top-1 flip is visible (1/256 < 0.5%).
SYNTHETIC_SAMPLES = 256
# Ops that make a plain .onnx a quantized graph (QDQ, QOperator or integer-op form).
QUANTIZED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv"}
    | {"QLinearMatMul", "ConvInteger", "MatMulInteger"}
)


@dataclass
class _Prepared:
    job: Job
    artifact: str
    backend: str
    precision: str
    tolerance: Tolerance
    samples: int


def tolerance_from_manifest(manifest: Mapping[str, Any] | None) -> Tolerance:
    """The precision and accuracy budget an artifact was chosen under (fp32 for plain ONNX)."""
    if not manifest:
        return Tolerance("fp32")
    metric = manifest.get("metric") or {}
    return Tolerance(
        precision=str(manifest.get("precision", "fp32")),
        metric=metric.get("name"),
        max_drop=metric.get("max_drop"),
        metric_output=metric.get("output"),
    )


def tolerance_for_plain_model(proto: onnx.ModelProto) -> Tolerance:
    """A .onnx without a manifest: fp32, or int8 (the default criteria) for a quantized graph,
    whose requantization may round one step apart on another ISA."""
    quantized = any(node.op_type in QUANTIZED_OPS for node in proto.graph.node)
    return Tolerance("int8" if quantized else "fp32")


def _inputs(
    specs: list[TensorSpec], data: str | Path | Mapping[str, np.ndarray] | None, samples: int | None
) -> dict[str, np.ndarray]:
    if data is None:
        n = samples or SYNTHETIC_SAMPLES
        shapes = {
            s.name: (n, *(d if isinstance(d, int) else 1 for d in (s.shape or ())[1:]))
            for s in specs
        }
        return synthesize_inputs(specs, shapes, seed=0)
    arrays = load_npz(data) if isinstance(data, str | Path) else dict(data)
    source = str(data) if isinstance(data, str | Path) else "eval data"
    matched = match_eval_data(arrays, specs, None, source).inputs
    if samples is not None:
        if samples < 1:
            raise DataError(f"--samples must be >= 1, not {samples}")
        matched = {k: v[:samples] for k, v in matched.items()}
    return matched


def _prepare(
    index: int,
    artifact: str | Path,
    data: str | Path | Mapping[str, np.ndarray] | None,
    samples: int | None,
    workdir: Path,
) -> _Prepared:
    loaded = load_model(artifact, check=False)
    specs, _ = graph_io(loaded.proto)
    inputs = _inputs(specs, data, samples)
    inputs_path = workdir / f"inputs-{index}.npz"
    np.savez(inputs_path, **inputs)  # type: ignore[arg-type]  # numpy's stub: allow_pickle
    manifest = loaded.manifest or {}
    backend = str(manifest.get("backend") or "onnxruntime")
    tolerance = (
        tolerance_from_manifest(manifest) if manifest else tolerance_for_plain_model(loaded.proto)
    )
    target = loaded.artifact_dir if loaded.artifact_dir is not None else loaded.path
    job = Job(
        id=f"m{index}",
        model=str(Path(target).resolve()),
        inputs=str(inputs_path.resolve()),
        backend=None if manifest else backend,
    )
    n = int(next(iter(inputs.values())).shape[0]) if inputs else 0
    return _Prepared(job, str(artifact), backend, tolerance.precision, tolerance, n)


def _compare(
    arch: str, runner: Runner, prepared: _Prepared, reference: JobResult, got: JobResult
) -> ArchResult:
    if got.error is not None or got.outputs is None:
        return ArchResult(arch, "error", runner.emulated, f"{arch}: {got.error}", got.seconds)
    assert reference.outputs is not None
    checks = []
    for name, ref in reference.outputs.items():
        agreement = compare_output(name, got.outputs[name], ref)
        ok, criterion = judge(agreement, prepared.tolerance)
        checks.append(OutputCheck(agreement, ok, criterion))
    status: Status = "pass" if all(c.passed for c in checks) else "fail"
    result = ArchResult(arch, status, runner.emulated, "", got.seconds, checks)
    if status == "fail":
        result.message = f"{arch} disagrees with {native_arch()}: {result.worst_line()}"
    return result


def verify_many(
    artifacts: Sequence[str | Path],
    arches: Sequence[str] = ("arm64",),
    data: str | Path | Mapping[str, np.ndarray] | Sequence[Any] | None = None,
    *,
    samples: int | None = None,
    runners: Mapping[str, Runner] | None = None,
) -> list[VerifyReport]:
    """Verify every artifact on every architecture, one process per architecture.

    DATA is one .npz (or dict of arrays) for all artifacts, a list with one per artifact, or
    None for synthesized inputs. Each artifact's reference is its own run on this host.
    ``runners`` overrides the registry per arch (tests, a userland elsewhere).
    """
    per_artifact: list[Any] = (
        list(data)
        if isinstance(data, list | tuple) and len(data) == len(artifacts)
        else [data] * len(artifacts)
    )
    host = native_arch()
    chosen = {a: (runners or {}).get(a) or runner_for(a) for a in dict.fromkeys(arches)}
    with tempfile.TemporaryDirectory(prefix="edgeshift-verify-") as tmp:
        workdir = Path(tmp)
        prepared = [
            _prepare(i, a, d, samples, workdir)
            for i, (a, d) in enumerate(zip(artifacts, per_artifact, strict=True))
        ]
        reports = [
            VerifyReport(
                p.artifact, p.backend, p.precision, p.tolerance.describe(), host, p.samples
            )
            for p in prepared
        ]
        references = runner_for(host).run([p.job for p in prepared], workdir / host)
        for ref, report in zip(references, reports, strict=True):
            if ref.error is not None:
                raise BackendError(f"{report.artifact} does not run on this host: {ref.error}")
        for arch, runner in chosen.items():
            _run_arch(arch, runner, host, prepared, references, reports, workdir)
    return reports


def _run_arch(
    arch: str,
    runner: Runner,
    host: str,
    prepared: list[_Prepared],
    references: list[JobResult],
    reports: list[VerifyReport],
    workdir: Path,
) -> None:
    if arch == host:
        for ref, report in zip(references, reports, strict=True):
            report.results.append(ArchResult(arch, "reference", False, "", ref.seconds))
        return
    reason = runner.unavailable()
    if reason is not None:
        for report in reports:
            report.results.append(ArchResult(arch, "unavailable", runner.emulated, reason))
        return
    runnable = [p for p in prepared if p.backend in runner.backends]
    results = dict(
        zip(
            (p.job.id for p in runnable),
            runner.run([p.job for p in runnable], workdir / arch) if runnable else [],
            strict=True,
        )
    )
    for p, ref, report in zip(prepared, references, reports, strict=True):
        if p.job.id not in results:
            message = f"{arch}: {p.backend} has no {arch} build — re-run optimize with --backends onnxruntime"
            report.results.append(ArchResult(arch, "error", runner.emulated, message))
            continue
        report.results.append(_compare(arch, runner, p, ref, results[p.job.id]))


def verify(
    artifact: str | Path,
    arches: Sequence[str] = ("arm64",),
    data: str | Path | Mapping[str, np.ndarray] | None = None,
    *,
    samples: int | None = None,
    runners: Mapping[str, Runner] | None = None,
) -> VerifyReport:
    """Run ARTIFACT (an optimize artifact dir or a .onnx) on each of ARCHES over DATA and
    compare every output with this host's run of the same artifact.

    Returns the report; it does not raise on a failed tolerance (``report.passed`` says,
    the CLI turns it into exit 3). Raises BackendError when QEMU or the userland is missing.
    """
    return verify_many([artifact], arches, data, samples=samples, runners=runners)[0]
