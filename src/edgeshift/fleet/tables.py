"""The control plane's tables (SQLAlchemy 2 ORM models; the schema itself is made by the
Alembic migrations in fleet/migrations, and a test checks the two agree).

Pydantic wire types are kept whole in JSON columns (``model_dump(mode="json")`` in,
``model_validate`` out); only what a query filters, joins or orders on gets its own column.
Times are UNIX seconds (double precision). Below the tables: how rows become wire types,
and the hot calls' statements, built once (building one costs more than running it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from edgeshift.fleet.schema import ArtifactRef, DesiredState, DeviceInfo, DeviceReport, RolloutInfo

# Fixed constraint names, so a migration written today can drop or alter them tomorrow on
# both SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME_LEN = 63  # schema.NAME_PATTERN allows 63 characters
SHA256_LEN = 64
NONCE_LEN = 128
KEY_LEN = 64


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON(none_as_null=True),
        float: Double,
    }


def _device_fk() -> ForeignKey:
    return ForeignKey("devices.device_id", ondelete="CASCADE")


class Operator(Base):
    __tablename__ = "operators"
    name: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(SHA256_LEN), unique=True)
    created_at: Mapped[float]


class EnrolmentTokenRow(Base):
    __tablename__ = "enrolment_tokens"
    token_sha256: Mapped[str] = mapped_column(String(SHA256_LEN), primary_key=True)
    group_name: Mapped[str | None] = mapped_column(String(NAME_LEN))
    labels: Mapped[dict[str, Any]]
    created_at: Mapped[float]
    expires_at: Mapped[float]
    used_at: Mapped[float | None]
    used_by: Mapped[str | None] = mapped_column(String(NAME_LEN))


class Device(Base):
    __tablename__ = "devices"
    device_id: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(KEY_LEN))
    labels: Mapped[dict[str, Any]]
    # The group its enrolment token named (groups also gather devices by label selector).
    group_name: Mapped[str | None] = mapped_column(String(NAME_LEN))
    hardware: Mapped[str] = mapped_column(String(128))
    enrolled_at: Mapped[float]
    last_seen: Mapped[float | None]
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Group(Base):
    __tablename__ = "groups"
    name: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    selector: Mapped[dict[str, Any]]


class Nonce(Base):
    __tablename__ = "nonces"
    device_id: Mapped[str] = mapped_column(String(NAME_LEN), _device_fk(), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(NONCE_LEN), primary_key=True)
    at: Mapped[float] = mapped_column(index=True)


class Desired(Base):
    """One row per device, made at enrolment with generation 0 (so a change is one UPDATE)."""

    __tablename__ = "desired"
    device_id: Mapped[str] = mapped_column(String(NAME_LEN), _device_fk(), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    artifact: Mapped[dict[str, Any] | None]  # ArtifactRef
    rollout_id: Mapped[str | None] = mapped_column(String(NAME_LEN))
    shadow_s: Mapped[float]
    shadow_min_requests: Mapped[int] = mapped_column(Integer)
    trial_s: Mapped[float]
    updated_at: Mapped[float]


class DesiredPrevious(Base):
    """What a device was desired to serve before a rollout first moved it (its rollback)."""

    __tablename__ = "desired_previous"
    device_id: Mapped[str] = mapped_column(String(NAME_LEN), _device_fk(), primary_key=True)
    rollout_id: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    artifact: Mapped[dict[str, Any] | None]  # ArtifactRef


class LatestReport(Base):
    __tablename__ = "reports"
    device_id: Mapped[str] = mapped_column(String(NAME_LEN), _device_fk(), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    report: Mapped[dict[str, Any]]  # DeviceReport
    received_at: Mapped[float]


class ReportHistory(Base):
    __tablename__ = "report_history"
    __table_args__ = (Index("ix_report_history_device_id_id", "device_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(NAME_LEN), _device_fk())
    generation: Mapped[int] = mapped_column(Integer)
    report: Mapped[dict[str, Any]]
    received_at: Mapped[float]


class Telemetry(Base):
    __tablename__ = "telemetry"
    __table_args__ = (Index("ix_telemetry_device_id_id", "device_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(NAME_LEN), _device_fk())
    at: Mapped[float]
    record: Mapped[dict[str, Any]]  # TelemetryRecord


class Artifact(Base):
    __tablename__ = "artifacts"
    artifact_id: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    created_at: Mapped[float]
    info: Mapped[dict[str, Any]]  # ArtifactInfo


class Rollout(Base):
    __tablename__ = "rollouts"
    rollout_id: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    info: Mapped[dict[str, Any]]  # RolloutInfo
    created_at: Mapped[float]
    updated_at: Mapped[float]


class RolloutDevice(Base):
    __tablename__ = "rollout_devices"
    rollout_id: Mapped[str] = mapped_column(
        String(NAME_LEN), ForeignKey("rollouts.rollout_id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(String(NAME_LEN), _device_fk(), primary_key=True)
    wave: Mapped[int] = mapped_column(Integer)


# --- rows <-> wire types, and the hot calls' statements (built once) ---------------------

DESIRED_COLUMNS = (
    Desired.generation,
    Desired.artifact,
    Desired.rollout_id,
    Desired.shadow_s,
    Desired.shadow_min_requests,
    Desired.trial_s,
)


def initial_desired(device_id: str, now: float) -> dict[str, Any]:
    defaults = DesiredState(generation=0)
    return {
        "device_id": device_id,
        "generation": 0,
        "artifact": None,
        "rollout_id": None,
        "shadow_s": defaults.shadow_s,
        "shadow_min_requests": defaults.shadow_min_requests,
        "trial_s": defaults.trial_s,
        "updated_at": now,
    }


def desired_state(row: Any) -> DesiredState:
    return DesiredState(
        generation=row.generation,
        artifact=None if row.artifact is None else ArtifactRef.model_validate(row.artifact),
        rollout_id=row.rollout_id,
        shadow_s=row.shadow_s,
        shadow_min_requests=row.shadow_min_requests,
        trial_s=row.trial_s,
    )


PUBLIC_KEY = select(Device.public_key).where(
    Device.device_id == bindparam("device_id"), Device.revoked.is_(False)
)
DESIRED_ONE = select(*DESIRED_COLUMNS).where(Desired.device_id == bindparam("device_id"))
TOUCH = (
    update(Device)
    .where(Device.device_id == bindparam("b_device_id"))
    .values(last_seen=bindparam("b_now"))
)
LIVE_DEVICES = select(Device.device_id).where(
    Device.device_id.in_(bindparam("device_ids", expanding=True)), Device.revoked.is_(False)
)
TOUCH_LIVE_MANY = (  # device requests (fleet.nonces): the devices marked seen, none revoked
    update(Device)
    .where(Device.device_id.in_(bindparam("device_ids", expanding=True)))
    .where(Device.revoked.is_(False))
    .values(last_seen=bindparam("b_now"))
    .returning(Device.device_id)
)
INSERT_HISTORY = insert(ReportHistory)
REPORTS_FOR = select(LatestReport.device_id, LatestReport.report).where(
    LatestReport.device_id.in_(bindparam("device_ids", expanding=True))
)


def member_of(
    labels: Mapping[str, str], group_name: str | None, groups: Mapping[str, Mapping[str, str]]
) -> list[str]:
    """A device belongs to the group its token named, and to every group whose (non-empty)
    selector its labels include."""
    return [
        name
        for name, selector in groups.items()
        if name == group_name or (selector and all(labels.get(k) == v for k, v in selector.items()))
    ]


def device_query() -> Any:
    return (
        select(
            Device.device_id,
            Device.labels,
            Device.group_name,
            Device.hardware,
            Device.enrolled_at,
            Device.last_seen,
            Device.revoked,
            *DESIRED_COLUMNS,
            LatestReport.report,
        )
        .join(Desired, Desired.device_id == Device.device_id)
        .outerjoin(LatestReport, LatestReport.device_id == Device.device_id)
        .order_by(Device.device_id)
    )


def device_info(
    row: Any, groups: Mapping[str, Mapping[str, str]], now: float, online_window_s: float
) -> DeviceInfo:
    return DeviceInfo(
        device_id=row.device_id,
        labels=row.labels,
        groups=sorted(member_of(row.labels, row.group_name, groups)),
        hardware=row.hardware,
        enrolled_at=row.enrolled_at,
        last_seen=row.last_seen,
        online=row.last_seen is not None and now - row.last_seen <= online_window_s,
        revoked=row.revoked,
        desired=desired_state(row),
        reported=None if row.report is None else DeviceReport.model_validate(row.report),
    )


def rollout_row(info: RolloutInfo) -> dict[str, Any]:
    return {
        "rollout_id": info.rollout_id,
        "state": info.state.value,
        "info": info.model_dump(mode="json"),
        "created_at": info.created_at,
        "updated_at": info.updated_at,
    }


def _trim(table: Any) -> Any:
    """DELETE a device's rows older than its newest :b_keep (by id)."""
    cutoff = (
        select(table.id)
        .where(table.device_id == bindparam("b_device_id"))
        .order_by(table.id.desc())
        .limit(1)
        .offset(bindparam("b_keep"))
        .scalar_subquery()
    )
    return delete(table).where(table.device_id == bindparam("b_device_id"), table.id <= cutoff)


TRIM_HISTORY = _trim(ReportHistory)
TRIM_TELEMETRY = _trim(Telemetry)
