"""The fleet's wire types: what the control plane, the agents and the operators exchange.

Pure data (pydantic). Every request body is validated against one of these; a bad one gets a
400 whose message names the field. The HTTP routes that carry them are in docs/fleet.md.
"""

from __future__ import annotations

import itertools
import re
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Names a user picks (devices, groups, artifacts, labels) end up in URLs, file names and SQL
# rows: one conservative alphabet keeps them safe in all three.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_NAME = re.compile(NAME_PATTERN)
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
LabelValue = Annotated[str, Field(max_length=128)]
Labels = Annotated[dict[Name, LabelValue], Field(max_length=32)]

# Headers of a signed device request (see fleet/auth.py).
DEVICE_HEADER = "X-Edgeshift-Device"
TIMESTAMP_HEADER = "X-Edgeshift-Timestamp"
NONCE_HEADER = "X-Edgeshift-Nonce"
SIGNATURE_HEADER = "X-Edgeshift-Signature"
# A signed request older or newer than this is refused (clock skew allowance, and how long
# nonces are remembered to refuse a replay).
MAX_CLOCK_SKEW_S = 300.0


def is_name(text: str) -> bool:
    return bool(_NAME.match(text))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- enrolment ---------------------------------------------------------------------------


class EnrolmentTokenSpec(_Strict):
    """An operator asks for a one-time token; the device that uses it joins GROUP with LABELS."""

    group: Name | None = None
    labels: Labels = {}
    ttl_s: float = Field(default=24 * 3600.0, gt=0, le=30 * 24 * 3600.0)


class EnrolmentToken(_Strict):
    token: str  # shown once; the store keeps only its sha256
    expires_at: float


class EnrolRequest(_Strict):
    token: Annotated[str, Field(min_length=16, max_length=128)]
    name: Name  # the device's name; unique in the fleet
    public_key: Annotated[str, Field(min_length=40, max_length=64)]  # raw Ed25519, base64
    labels: Labels = {}
    hardware: Annotated[str, Field(max_length=128)] = ""  # e.g. a targets catalog id


class EnrolResponse(_Strict):
    device_id: Name
    server_time: float


# --- artifacts ---------------------------------------------------------------------------


class ArtifactRef(_Strict):
    """What a device needs to fetch and check one artifact (an `optimize` output directory,
    shipped as one deterministic tar: the TUF target)."""

    artifact_id: Name  # "<name>-v<version>", unique
    name: Name  # the model's name on the device's server
    version: int = Field(ge=1)
    target_path: str  # the TUF target path, e.g. "minilm/3.tar"
    length: int = Field(ge=0)
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ArtifactInfo(_Strict):
    ref: ArtifactRef
    created_at: float
    files: dict[str, str]  # relative path -> sha256 (the signed manifest of file hashes)
    manifest: dict[str, object] = {}  # the optimize manifest.json, for operators


# --- rollouts ----------------------------------------------------------------------------


class Gates(_Strict):
    """A wave passes when every gate holds over the devices of that wave (hawkBit-style
    thresholds; Greengrass' abort criteria). None switches a gate off."""

    min_install_success: float | None = Field(default=0.95, ge=0, le=1)
    max_p95_ratio: float | None = Field(
        default=1.5, gt=0
    )  # candidate p95 / last-good p95, per device
    max_error_rate: float | None = Field(default=0.01, ge=0, le=1)
    min_shadow_agreement: float | None = Field(default=0.99, ge=0, le=1)
    max_output_drift: float | None = Field(default=None, ge=0)  # mean |candidate - last-good|
    min_reporting: float = Field(default=0.9, gt=0, le=1)  # of the wave, to evaluate at all


class ExponentialWaves(_Strict):
    start_percent: float = Field(default=1.0, gt=0, le=100)
    factor: float = Field(default=10.0, gt=1)


class RolloutSpec(_Strict):
    artifact_id: Name
    group: Name | None = None  # a device group; None with no selector = every device
    selector: Labels = {}  # label equality, ANDed with the group's
    waves: list[Annotated[float, Field(gt=0, le=100)]] | ExponentialWaves = [1, 10, 50, 100]
    soak_s: float = Field(default=300.0, ge=0, le=7 * 24 * 3600.0)
    # How long a wave's devices get to install and report before their silence counts as a
    # failed install.
    install_timeout_s: float = Field(default=600.0, gt=0, le=7 * 24 * 3600.0)
    shadow_s: float = Field(default=30.0, ge=0, le=24 * 3600.0)
    shadow_min_requests: int = Field(default=20, ge=0, le=1_000_000)
    trial_s: float = Field(default=30.0, ge=0, le=24 * 3600.0)
    gates: Gates = Gates()
    auto_rollback: bool = True

    @field_validator("waves")
    @classmethod
    def _waves_rise_to_100(
        cls, waves: list[float] | ExponentialWaves
    ) -> list[float] | ExponentialWaves:
        if isinstance(waves, list):
            if not waves:
                raise ValueError("give at least one wave, e.g. [1, 10, 50, 100]")
            if any(b <= a for a, b in itertools.pairwise(waves)):
                raise ValueError(
                    "waves are cumulative percentages and must rise, e.g. [1, 10, 50, 100]"
                )
            if waves[-1] != 100:
                raise ValueError("the last wave must be 100 (percent of the matching devices)")
        return waves


class RolloutState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"  # a gate failed; the fleet was rolled back (when auto_rollback)
    CANCELLED = "cancelled"  # an operator stopped it; devices keep what they run
    ROLLED_BACK = "rolled_back"  # an operator rolled it back


class GateResult(_Strict):
    wave: int
    at: float
    passed: bool
    failures: list[str]  # one line per failed gate, e.g. "p95 ratio 2.10 > 1.50"
    metrics: dict[str, float | None]  # install_success, p95_ratio, error_rate, ...
    devices: int
    reporting: int


class WaveInfo(_Strict):
    index: int
    percent: float
    devices: int
    started_at: float | None = None
    soak_until: float | None = None
    finished_at: float | None = None


class RolloutInfo(_Strict):
    rollout_id: Name
    spec: RolloutSpec
    state: RolloutState
    wave: int  # the current wave's index (-1 before the first)
    waves: list[WaveInfo]
    gates: list[GateResult]  # every evaluation, oldest first (the dashboard plots them)
    reason: str = ""  # why it stopped, when it did
    created_at: float
    updated_at: float


# --- devices -----------------------------------------------------------------------------


class Phase(str, Enum):
    """Where a device is with its desired state (the agent's journal states, as reported)."""

    IDLE = "idle"  # serving what is desired (or nothing desired)
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    SHADOW = "shadow"
    TRIAL = "trial"
    COMMITTED = "committed"  # serving the desired artifact as last-good
    FAILED = "failed"  # could not install it; serving last-good
    ROLLED_BACK = "rolled_back"  # it failed its trial or a shadow check; serving last-good


class DesiredState(_Strict):
    """What the control plane wants a device to serve. ``generation`` rises with every change;
    a device acts on the highest it has seen and echoes it in its reports."""

    generation: int = Field(ge=0)
    artifact: ArtifactRef | None = None
    rollout_id: Name | None = None
    shadow_s: float = 30.0
    shadow_min_requests: int = 20
    trial_s: float = 30.0
    server_time: float = 0.0


class ServingStats(_Strict):
    """Counts over the report interval (a device resets them after each accepted report)."""

    requests: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    p50_ms: float | None = None
    p95_ms: float | None = None
    baseline_p95_ms: float | None = None  # last-good's p95 before the update began
    shadow_samples: int = Field(default=0, ge=0)
    shadow_agreement: float | None = Field(default=None, ge=0, le=1)  # outputs that match last-good
    shadow_drift: float | None = Field(default=None, ge=0)  # mean |candidate - last-good|


class TelemetryRecord(_Strict):
    at: float
    kind: Literal["serving", "event"]
    stats: ServingStats | None = None
    event: Annotated[str, Field(max_length=500)] = ""


class DeviceReport(_Strict):
    generation: int = Field(ge=0)  # of the desired state this reports on
    phase: Phase
    active: Name | None = None  # artifact id serving now
    last_good: Name | None = None
    target: Name | None = None  # artifact id being installed
    error: Annotated[str, Field(max_length=1000)] = ""
    stats: ServingStats = ServingStats()
    agent_version: Annotated[str, Field(max_length=64)] = ""
    sent_at: float
    # The spooled telemetry, carried by the report once per report interval: one request where
    # a report and a telemetry POST were two (the control plane stores it apart from the report).
    telemetry: Annotated[list[TelemetryRecord], Field(max_length=1000)] = []


class TelemetryBatch(_Strict):
    records: Annotated[list[TelemetryRecord], Field(max_length=1000)]


class DeviceInfo(_Strict):
    device_id: Name
    labels: dict[str, str]
    groups: list[str]
    hardware: str
    enrolled_at: float
    last_seen: float | None
    online: bool  # seen within the control plane's online window
    revoked: bool
    desired: DesiredState
    reported: DeviceReport | None


class GroupSpec(_Strict):
    name: Name
    selector: Labels = {}  # a device belongs when its labels include every pair


class GroupInfo(_Strict):
    name: Name
    selector: dict[str, str]
    devices: int


class ActionResult(_Strict):
    """Answer to pause / resume / cancel / roll back."""

    rollout_id: Name
    state: RolloutState
    message: str


class ApiError(_Strict):
    error: str
