"""The edgeshift exception tree.

Every error a user can cause is an :class:`EdgeshiftError`; its message names what was wrong
and what to do, in one line. The CLI prints that line and exits with ``exit_code``; the server
turns it into a 4xx answer. Anything else that escapes is a bug in edgeshift.

    EdgeshiftError
    ├── ModelError        the model file is missing, not ONNX, truncated or corrupt
    ├── ShapeError        a --shape spec is malformed, names no input, or a dim stays unresolved
    ├── DataError         an .npz / eval set does not match the model's inputs, or is too small
    ├── BackendError      a runtime is unknown, unavailable, or cannot load / run the model
    ├── ConfigError       a YAML / JSON file (catalog, scenario, manifest) fails validation
    ├── TargetError       an unknown hardware target id
    ├── OptimizeError     the search cannot run (unknown metric, metric module fails to import)
    ├── BudgetError       no candidate meets the accuracy budget and --require was given
    ├── PlanError         a scenario cannot be planned (unknown ids, infeasible constraints)
    ├── MismatchError     compiled or verified outputs disagree with the reference (exit 3)
    ├── ProtocolError     a request the server refuses, with its HTTP status (400, 404, 413, 503)
    └── FleetError        the fleet control plane or an agent refuses an operation
        └── ArtifactVerificationError  an artifact or its TUF metadata fails verification
"""

from __future__ import annotations


class EdgeshiftError(Exception):
    """Base of every error a user can cause. ``str(err)`` is a one-line message with the fix."""

    exit_code = 2


class ModelError(EdgeshiftError):
    """The model file is missing, is not ONNX, or is truncated or corrupt."""


class ShapeError(EdgeshiftError):
    """A shape override is malformed, names no input, or a dynamic dim stays unresolved."""


class DataError(EdgeshiftError):
    """Input data (.npz) does not match the model, or there is too little of it."""


class BackendError(EdgeshiftError):
    """A runtime is unknown or unavailable, or cannot load or run the model."""


class ConfigError(EdgeshiftError):
    """A configuration file (catalog entry, scenario, manifest) is malformed or invalid."""


class TargetError(EdgeshiftError):
    """An unknown hardware target id."""


class OptimizeError(EdgeshiftError):
    """The optimization search cannot run as asked."""


class BudgetError(EdgeshiftError):
    """No candidate met the accuracy budget and the user required one."""

    exit_code = 3


class PlanError(EdgeshiftError):
    """A scenario cannot be planned."""


class MismatchError(EdgeshiftError):
    """Outputs of a compiled or verified model disagree with the reference beyond tolerance."""

    exit_code = 3


class ProtocolError(EdgeshiftError):
    """A request the server refuses; it answers with ``status`` (400 bad request, 404 unknown
    model or version, 413 body too large, 503 overloaded or not ready)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class FleetError(EdgeshiftError):
    """The fleet refuses an operation: a bad enrolment token, an unknown device or rollout, a
    rollout spec that cannot run, a control plane that cannot be reached. ``status`` is the
    HTTP status the control plane answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ArtifactVerificationError(FleetError):
    """An artifact, its manifest of file hashes or its TUF metadata fails verification
    (tampered, unsigned, expired, rolled back); the device keeps serving its last-good model."""

    exit_code = 3
