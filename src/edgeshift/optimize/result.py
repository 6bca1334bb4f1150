"""What `edgeshift optimize` and :func:`edgeshift.optimize` return."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeshift.optimize.manifest import CandidateRecord, Manifest, OutsideBudgetDefault


@dataclass
class OptimizeResult:
    """The search's outcome: the manifest (every candidate with its verdict) and the artifact."""

    manifest: Manifest
    artifact_dir: Path | None  # None when no --out was given to the Python API
    message: str  # one line: what was chosen and why, or that the budget was not met

    @property
    def budget_met(self) -> bool:
        return self.manifest.budget_met

    @property
    def candidates(self) -> list[CandidateRecord]:
        return self.manifest.candidates

    @property
    def chosen(self) -> CandidateRecord:
        return next(c for c in self.manifest.candidates if c.status == "chosen")

    @property
    def outside_budget_default(self) -> OutsideBudgetDefault | None:
        """A plain runtime default faster than the chosen variant but outside the budget."""
        return self.manifest.outside_budget_default
