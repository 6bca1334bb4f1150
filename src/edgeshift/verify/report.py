"""The verification report: per artifact, per architecture, per output (pure data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from edgeshift.verify.agreement import OutputAgreement

Status = Literal["pass", "fail", "error", "unavailable", "reference"]
EMULATION_NOTE = (
    "timings under emulation (QEMU) are the cost of verifying, not the speed of an Arm CPU: "
    "never read them as performance"
)


@dataclass(frozen=True)
class OutputCheck:
    agreement: OutputAgreement
    passed: bool
    criterion: str  # the tolerance with the measured figure, e.g. "rel error 0 <= 0.0001"


@dataclass
class ArchResult:
    """One architecture's verdict on one artifact."""

    arch: str
    status: Status
    emulated: bool
    message: str = ""  # why it failed, errored or is unavailable
    seconds: float = 0.0  # inference time of the run; under emulation not a performance figure
    outputs: list[OutputCheck] = field(default_factory=list)

    def worst_line(self) -> str:
        """The failing outputs with their worst elements, in one line."""
        parts = []
        for check in self.outputs:
            if check.passed:
                continue
            worst = ", ".join(
                f"{list(w.index)}: x86 {w.reference:.6g} vs {self.arch} {w.got:.6g}"
                for w in check.agreement.worst[:3]
            )
            parts.append(f"{check.agreement.name}: {check.criterion}; worst {worst}")
        return "; ".join(parts)


@dataclass
class VerifyReport:
    """Every requested architecture's verdict on one artifact against the x86 reference."""

    artifact: str
    backend: str
    precision: str
    tolerance: str  # the policy that applied, in words
    reference_arch: str
    samples: int
    results: list[ArchResult] = field(default_factory=list)

    @property
    def failed(self) -> list[ArchResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def errors(self) -> list[ArchResult]:
        return [r for r in self.results if r.status == "error"]

    @property
    def passed(self) -> bool:
        """No architecture failed or errored (unavailable ones are reported, not failed)."""
        return not self.failed and not self.errors

    @property
    def emulated(self) -> bool:
        return any(r.emulated and r.status in ("pass", "fail") for r in self.results)

    def result(self, arch: str) -> ArchResult:
        return next(r for r in self.results if r.arch == arch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "backend": self.backend,
            "precision": self.precision,
            "tolerance": self.tolerance,
            "reference_arch": self.reference_arch,
            "samples": self.samples,
            "passed": self.passed,
            "note": EMULATION_NOTE if self.emulated else "",
            "results": [_arch_dict(r) for r in self.results],
        }


def _arch_dict(r: ArchResult) -> dict[str, Any]:
    return {
        "arch": r.arch,
        "status": r.status,
        "emulated": r.emulated,
        "message": r.message,
        "seconds": r.seconds,
        "outputs": [
            {
                "name": c.agreement.name,
                "shape": list(c.agreement.shape),
                "passed": c.passed,
                "criterion": c.criterion,
                "identical": c.agreement.identical,
                "max_abs_error": c.agreement.max_abs_error,
                "max_rel_error": c.agreement.max_rel_error,
                "rms_error": c.agreement.rms_error,
                "cosine_mean": c.agreement.cosine_mean,
                "cosine_min": c.agreement.cosine_min,
                "top1_agreement_pct": c.agreement.top1_agreement_pct,
                "worst": [
                    {"index": list(w.index), "reference": w.reference, "got": w.got}
                    for w in c.agreement.worst
                ],
            }
            for c in r.outputs
        ],
    }


def record_for_manifest(report: VerifyReport) -> dict[str, Any]:
    """What an optimize manifest keeps of a verification: verdicts and figures, no elements."""
    full = report.to_dict()
    for result in full["results"]:
        for output in result["outputs"]:
            output.pop("worst")
    return full
