"""The control plane's state: SQLAlchemy 2 over SQLite (WAL, the embedded default) or
PostgreSQL (``postgresql+psycopg://…``), schema by Alembic migrations (fleet/migrations).

CONTRACT (owned by the store helper; the API, the rollout engine and the benchmark call
exactly these methods). Every method is synchronous and runs one transaction; the async API
calls them in a thread. Times are UNIX seconds passed in by the caller (``now``), so tests
and the rollout engine control the clock. Unknown ids raise FleetError(…, 404); a conflict
(name taken, token used) FleetError(…, 409); bad values FleetError(…, 400).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from edgeshift.fleet.schema import (
    ArtifactInfo,
    ArtifactRef,
    DesiredState,
    DeviceInfo,
    DeviceReport,
    EnrolmentToken,
    EnrolmentTokenSpec,
    EnrolRequest,
    EnrolResponse,
    GroupInfo,
    GroupSpec,
    RolloutInfo,
    TelemetryBatch,
)

DEFAULT_URL = "sqlite:///fleet.db"
# A device is "online" when it was seen within this many seconds (its long poll renews it).
ONLINE_WINDOW_S = 90.0


class Store:
    """One database. ``Store.open(url)`` migrates it to the current schema first."""

    @classmethod
    def open(cls, url: str = DEFAULT_URL, *, migrate: bool = True) -> Store:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # --- operators ---
    def add_operator_token(self, name: str, token: str, now: float) -> None:
        """Keep sha256(TOKEN) under NAME (replacing NAME's previous token)."""
        raise NotImplementedError

    def operator_for_token(self, token: str) -> str | None:
        """The operator's name for a valid TOKEN (constant-time compare of hashes), else None."""
        raise NotImplementedError

    # --- enrolment and device auth ---
    def create_enrolment_token(self, spec: EnrolmentTokenSpec, now: float) -> EnrolmentToken:
        raise NotImplementedError

    def enrol(self, request: EnrolRequest, now: float) -> EnrolResponse:
        """Consume the one-time token atomically (two racing enrolments: one wins) and add the
        device with its public key, the token's group and labels merged with the request's.
        401 for an unknown, used or expired token; 409 when the name is taken."""
        raise NotImplementedError

    def device_public_key(self, device_id: str) -> str | None:
        """The device's base64 Ed25519 public key; None when unknown or revoked."""
        raise NotImplementedError

    def remember_nonce(self, device_id: str, nonce: str, now: float) -> bool:
        """False when NONCE was already used by DEVICE_ID (a replay); forgets nonces older than
        schema.MAX_CLOCK_SKEW_S * 2."""
        raise NotImplementedError

    def touch(self, device_id: str, now: float) -> None:
        """Mark the device seen (last_seen = now)."""
        raise NotImplementedError

    # --- devices and groups ---
    def list_devices(
        self, now: float, group: str | None = None, selector: Mapping[str, str] | None = None
    ) -> list[DeviceInfo]:
        raise NotImplementedError

    def get_device(self, device_id: str, now: float) -> DeviceInfo:
        raise NotImplementedError

    def set_labels(self, device_id: str, labels: Mapping[str, str]) -> None:
        raise NotImplementedError

    def revoke_device(self, device_id: str) -> None:
        raise NotImplementedError

    def put_group(self, spec: GroupSpec) -> GroupInfo:
        raise NotImplementedError

    def list_groups(self) -> list[GroupInfo]:
        raise NotImplementedError

    def matching_devices(
        self, group: str | None, selector: Mapping[str, str] | None
    ) -> list[str]:
        """Ids of the enrolled, unrevoked devices in GROUP (None: all) whose labels include
        SELECTOR, sorted."""
        raise NotImplementedError

    # --- desired and reported state ---
    def desired(self, device_id: str) -> DesiredState:
        raise NotImplementedError

    def set_desired(
        self,
        device_ids: Sequence[str],
        artifact: ArtifactRef | None,
        rollout_id: str | None,
        *,
        shadow_s: float,
        shadow_min_requests: int,
        trial_s: float,
        now: float,
    ) -> dict[str, int]:
        """Point every device at ARTIFACT (None: leave what it serves) and bump each one's
        generation; returns device id -> new generation. Remembers each device's previous
        desired artifact so previous_artifact() can roll it back."""
        raise NotImplementedError

    def previous_artifact(self, device_id: str, rollout_id: str) -> ArtifactRef | None:
        """What DEVICE_ID was desired to serve before ROLLOUT_ID moved it."""
        raise NotImplementedError

    def record_report(self, device_id: str, report: DeviceReport, now: float) -> None:
        """Keep the latest report per device (and touch it); a report for an older
        generation than the latest one kept is kept only in the history."""
        raise NotImplementedError

    def reports(self, device_ids: Sequence[str]) -> dict[str, DeviceReport | None]:
        raise NotImplementedError

    def record_telemetry(self, device_id: str, batch: TelemetryBatch, now: float) -> int:
        """Append the records; returns how many were kept. Keeps at most the newest 10,000
        records per device."""
        raise NotImplementedError

    # --- artifacts ---
    def add_artifact(self, info: ArtifactInfo) -> None:
        raise NotImplementedError

    def get_artifact(self, artifact_id: str) -> ArtifactInfo:
        raise NotImplementedError

    def list_artifacts(self) -> list[ArtifactInfo]:
        raise NotImplementedError

    # --- rollouts ---
    def add_rollout(self, info: RolloutInfo) -> None:
        raise NotImplementedError

    def save_rollout(self, info: RolloutInfo) -> None:
        """Replace the stored rollout (state, waves, gate results, reason)."""
        raise NotImplementedError

    def get_rollout(self, rollout_id: str) -> RolloutInfo:
        raise NotImplementedError

    def list_rollouts(self, active_only: bool = False) -> list[RolloutInfo]:
        raise NotImplementedError

    def rollout_devices(self, rollout_id: str) -> dict[str, int]:
        """Device id -> the wave index it was assigned in, for ROLLOUT_ID."""
        raise NotImplementedError

    def assign_wave(self, rollout_id: str, device_ids: Sequence[str], wave: int) -> None:
        raise NotImplementedError
