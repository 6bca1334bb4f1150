"""The artifact's manifest.json: what was chosen, how to run it, and why the rest lost.

``model_file``, ``backend`` and ``runtime_options`` are what :func:`edgeshift.runtime.open_backend`
and the server read to reproduce the chosen variant; the rest documents the search.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeshift.errors import ConfigError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1

Status = Literal["chosen", "accepted", "rejected", "skipped", "failed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HostInfo(_Strict):
    """The host the candidates were measured on."""

    cpu_model: str
    machine: str
    cpu_features: list[str] = Field(default_factory=list)
    openvino_capabilities: list[str] = Field(default_factory=list)
    usable_cpus: int


class CandidateRecord(_Strict):
    """One candidate of the search and its verdict."""

    name: str
    recipe: str  # the recipe module (family) that built it
    backend: str
    precision: str  # of the variant: fp32, bf16, fp16, int8
    status: Status
    reason: str
    size_bytes: int | None = None
    score: float | None = None
    drop: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    mean_ms: float | None = None
    throughput_items_s: float | None = None
    speedup: float | None = None  # over the original on ORT fp32 defaults, by the objective
    runtime_options: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    float_nodes: list[str] = Field(default_factory=list)  # kept in float by accuracy recovery
    recovery_steps: list[dict[str, Any]] = Field(default_factory=list)


class OutsideBudgetDefault(_Strict):
    """A plain runtime default (OpenVINO with no config: bf16 on CPUs that have it) that ran
    faster than the chosen variant but missed the budget: what a user switching runtime gets,
    and what it costs them."""

    candidate: str  # its row in candidates
    runtime: str  # e.g. "OpenVINO's own default (bf16)"
    p50_ms: float
    speedup_over_chosen: float  # by the objective
    speedup_over_original: float
    drop: float
    max_drop: float
    line: str  # the sentence the console prints


class SourceInfo(_Strict):
    path: str
    sha256: str
    size_bytes: int


class MetricInfo(_Strict):
    name: str
    unit: str
    higher_is_better: bool
    output: str
    reason: str
    max_drop: float


class AccuracyInfo(_Strict):
    original: float
    chosen: float
    drop: float
    eval_samples: int
    calibration_samples: int
    labels: str | None  # the labels array used, or None: the original's outputs are the target


class PerformanceInfo(_Strict):
    objective: Literal["latency", "throughput"]
    batch: int
    threads: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    throughput_items_s: float
    original_p50_ms: float
    original_throughput_items_s: float
    speedup: float


class Manifest(_Strict):
    """manifest.json of an optimize artifact."""

    schema_version: int = SCHEMA_VERSION
    edgeshift_version: str
    model_file: str
    backend: str
    precision: str
    runtime_options: dict[str, Any]
    recipe: str
    recipe_params: dict[str, Any] = Field(default_factory=dict)
    float_nodes: list[str] = Field(default_factory=list)
    source: SourceInfo
    source_sha256: str
    artifact_sha256: str
    metric: MetricInfo
    accuracy: AccuracyInfo
    performance: PerformanceInfo
    host: HostInfo
    budget_met: bool
    seed: int
    quick: bool
    repair_notes: list[str] = Field(default_factory=list)
    candidates: list[CandidateRecord]
    # optimize --target: the catalog target the candidates were limited to, and the chosen
    # artifact's `edgeshift verify` on that target's architecture (a VerifyReport as JSON).
    target: str | None = None
    verification: dict[str, Any] | None = None
    # A plain runtime default faster than the chosen variant but outside the budget, or None.
    outside_budget_default: OutsideBudgetDefault | None = None


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path


def read_manifest(directory: str | Path) -> Manifest:
    """Read and validate DIR/manifest.json; ConfigError names the bad field."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ConfigError(f"{path} not found — is {directory} an `edgeshift optimize` artifact?")
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ConfigError(
            f"{path}: field {where}: {first['msg']} — re-run `edgeshift optimize` to rebuild it"
        ) from exc
