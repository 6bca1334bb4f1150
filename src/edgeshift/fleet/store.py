"""The control plane's state: SQLAlchemy 2 over SQLite (WAL, the embedded default) or
PostgreSQL (``postgresql+psycopg://…``), schema by Alembic migrations (fleet/migrations).

CONTRACT (owned by the store helper; the API, the rollout engine and the benchmark call
exactly these methods). Every method is synchronous and runs one transaction; the async API
calls them in a thread. Times are UNIX seconds passed in by the caller (``now``), so tests
and the rollout engine control the clock. Unknown ids raise FleetError(…, 404); a conflict
(name taken, token used) FleetError(…, 409); bad values FleetError(…, 400).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, delete, insert, literal, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from edgeshift.errors import FleetError
from edgeshift.fleet import migrations
from edgeshift.fleet.migrations import make_engine, one_line
from edgeshift.fleet.nonces import NonceAsk, NonceBatcher
from edgeshift.fleet.schema import (
    MAX_CLOCK_SKEW_S,
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
    RolloutState,
    TelemetryBatch,
    TelemetryRecord,
    is_name,
)
from edgeshift.fleet.tables import (
    DESIRED_COLUMNS,
    DESIRED_ONE,
    INSERT_HISTORY,
    LIVE_DEVICES,
    NONCE_LEN,
    PUBLIC_KEY,
    REPORTS_FOR,
    TOUCH,
    TOUCH_LIVE_MANY,
    TRIM_HISTORY,
    TRIM_TELEMETRY,
    Artifact,
    Desired,
    DesiredPrevious,
    Device,
    EnrolmentTokenRow,
    Group,
    LatestReport,
    Nonce,
    Operator,
    ReportHistory,
    Rollout,
    RolloutDevice,
    Telemetry,
    desired_state,
    device_info,
    device_query,
    initial_desired,
    member_of,
    rollout_row,
)

DEFAULT_URL = "sqlite:///fleet.db"
# A device is "online" when it was seen within this many seconds (its long poll renews it).
ONLINE_WINDOW_S = 90.0
TELEMETRY_PER_DEVICE = 10_000
KEY_CACHE_S = 60.0  # device public keys kept in memory this long
KEY_CACHE_MAX = 100_000
REPORT_HISTORY_PER_DEVICE = 100
# Forgetting old nonces is a range delete over every device: once a minute keeps it off the
# hot path of 1,000 signed requests a second.
PRUNE_EVERY_S = 60.0
NONCE_KEEP_S = MAX_CLOCK_SKEW_S * 2
_ACTIVE = (RolloutState.PENDING.value, RolloutState.RUNNING.value, RolloutState.PAUSED.value)
_MIN_OPERATOR_TOKEN_LEN = 16


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > 32:
        raise FleetError(f"{len(labels)} labels: a device carries at most 32", 400)
    for key, value in labels.items():
        if not is_name(key) or not isinstance(value, str) or len(value) > 128:
            raise FleetError(
                f"label {key!r}: keys are names (A-Z a-z 0-9 . _ -), values at most 128 chars",
                400,
            )
    return dict(labels)


class Store:
    """One database. ``Store.open(url)`` migrates it to the current schema first."""

    def __init__(self, engine: Any, url_shown: str) -> None:
        self._engine = engine
        self.url = url_shown  # the password hidden; for messages and logs
        self._postgres = engine.dialect.name == "postgresql"
        # SQLite has one writer at a time. Its busy handler makes a waiting writer sleep (1 ms
        # up to 100 ms a try), so under load the lock sat free while writers slept, each
        # holding a pooled connection (the pool then opened and closed overflow connections).
        # Writers of this process queue here instead and are handed the lock at once; other
        # processes still wait on busy_timeout.
        self._write_lock = threading.RLock() if engine.dialect.name == "sqlite" else None
        self._nonces = NonceBatcher(self._remember_nonces)
        self._nonces_pruned_at = float("-inf")
        self._keys: dict[str, tuple[str, float]] = {}  # device id -> (public key, read at)
        # The hot calls' statements, built once: building one costs more than running it.
        nonce = self._insert(Nonce)
        self._insert_nonces = nonce.on_conflict_do_nothing(
            index_elements=[Nonce.device_id, Nonce.nonce]
        ).returning(Nonce.device_id, Nonce.nonce)  # the rows inserted: the fresh nonces
        latest = self._insert(LatestReport)
        self._upsert_report = latest.on_conflict_do_update(
            index_elements=[LatestReport.device_id],
            set_={
                "generation": latest.excluded.generation,
                "report": latest.excluded.report,
                "received_at": latest.excluded.received_at,
            },
            where=LatestReport.generation <= latest.excluded.generation,
        )

    @classmethod
    def open(cls, url: str = DEFAULT_URL, *, migrate: bool = True) -> Store:
        engine, shown = make_engine(url)
        try:
            with engine.connect() as connection:
                current = migrations.current_revision(connection)
            head = migrations.head_revision()
            if current is not None and current not in migrations.known_revisions():
                raise FleetError(
                    f"the fleet database {shown} is at schema revision {current}, newer than "
                    f"this edgeshift knows ({head}): upgrade edgeshift, or use another --db"
                )
            if current != head:
                if not migrate:
                    raise FleetError(
                        f"the fleet database {shown} is at schema revision {current or 'none'}"
                        f", not {head}: open it with migrations on (edgeshift fleet serve does)"
                    )
                migrations.upgrade(engine)
        except DBAPIError as err:
            engine.dispose()
            fix = (
                "check the path (its directory must exist and be writable) and that it is a "
                "fleet database, or fix --db"
                if engine.dialect.name == "sqlite"
                else "start the database server, create the database, or fix --db"
            )
            raise FleetError(
                f"cannot use the fleet database {shown}: {one_line(err, url)}; {fix}", 503
            ) from None
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, shown)

    def close(self) -> None:
        self._nonces.close()
        self._engine.dispose()

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[Connection]:
        try:
            with (
                self._write_lock if write and self._write_lock is not None else nullcontext(),
                self._engine.connect() as connection,
            ):
                if write:
                    # SQLite: BEGIN IMMEDIATE (migrations.make_engine), so writers queue on
                    # busy_timeout instead of failing when a read turns into a write.
                    connection.execution_options(edgeshift_write=True)
                with connection.begin():
                    yield connection
        except OperationalError as err:
            raise FleetError(
                f"the fleet database {self.url} failed: {one_line(err, self.url)}; check that "
                "it is running and has space",
                503,
            ) from None

    def _insert(self, table: Any) -> Any:
        """INSERT with ON CONFLICT, in the dialect's own words."""
        if self._postgres:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    # --- operators ---
    def add_operator_token(self, name: str, token: str, now: float) -> None:
        """Keep sha256(TOKEN) under NAME (replacing NAME's previous token)."""
        if not is_name(name):
            raise FleetError(f"operator name {name!r}: use A-Z a-z 0-9 . _ - (max 63)", 400)
        if len(token) < _MIN_OPERATOR_TOKEN_LEN:
            raise FleetError("operator token too short: use at least 16 random characters", 400)
        stmt = self._insert(Operator).values(name=name, token_sha256=_sha256(token), created_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=[Operator.name],
            set_={"token_sha256": stmt.excluded.token_sha256, "created_at": now},
        )
        try:
            with self._tx(write=True) as db:
                db.execute(stmt)
        except IntegrityError:
            raise FleetError("that operator token is in use: make a new random one", 409) from None

    def operator_for_token(self, token: str) -> str | None:
        """The operator's name for a valid TOKEN (constant-time compare of hashes), else None."""
        wanted = _sha256(token)
        with self._tx() as db:
            rows = db.execute(select(Operator.name, Operator.token_sha256)).all()
        found = None
        for name, digest in rows:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(digest, wanted):
                found = name
        return found

    # --- enrolment and device auth ---
    def create_enrolment_token(self, spec: EnrolmentTokenSpec, now: float) -> EnrolmentToken:
        token = secrets.token_urlsafe(32)
        expires_at = now + spec.ttl_s
        with self._tx(write=True) as db:
            if spec.group is not None:
                # A token may name a group before anyone defined it: it gathers by membership.
                db.execute(
                    self._insert(Group)
                    .values(name=spec.group, selector={})
                    .on_conflict_do_nothing(index_elements=[Group.name])
                )
            db.execute(
                insert(EnrolmentTokenRow).values(
                    token_sha256=_sha256(token),
                    group_name=spec.group,
                    labels=dict(spec.labels),
                    created_at=now,
                    expires_at=expires_at,
                )
            )
        return EnrolmentToken(token=token, expires_at=expires_at)

    def enrol(self, request: EnrolRequest, now: float) -> EnrolResponse:
        """Consume the one-time token atomically (two racing enrolments: one wins) and add the
        device with its public key, the token's group and labels merged with the request's.
        401 for an unknown, used or expired token; 409 when the name is taken."""
        try:
            key_ok = len(base64.b64decode(request.public_key, validate=True)) == 32
        except (binascii.Error, ValueError):
            key_ok = False
        if not key_ok:
            raise FleetError("public_key: give the raw 32-byte Ed25519 key in base64", 400)
        name = request.name
        try:
            with self._tx(write=True) as db:
                # One UPDATE both checks and consumes the token: a racing enrolment waits on
                # the row (PostgreSQL) or the write lock (SQLite) and then matches nothing.
                token = db.execute(
                    update(EnrolmentTokenRow)
                    .where(
                        EnrolmentTokenRow.token_sha256 == _sha256(request.token),
                        EnrolmentTokenRow.used_at.is_(None),
                        EnrolmentTokenRow.expires_at > now,
                    )
                    .values(used_at=now, used_by=name)
                    .returning(EnrolmentTokenRow.group_name, EnrolmentTokenRow.labels)
                ).first()
                if token is None:
                    raise FleetError(
                        "enrolment token unknown, used or expired: ask an operator for a new "
                        "one (edgeshift fleet device token)",
                        401,
                    )
                if db.execute(select(Device.device_id).where(Device.device_id == name)).first():
                    raise _name_taken(name)  # rolls back: the token stays usable
                # The operator's labels (on the token) win over what the device claims.
                labels = {**request.labels, **token.labels}
                db.execute(
                    insert(Device).values(
                        device_id=name,
                        public_key=request.public_key,
                        labels=labels,
                        group_name=token.group_name,
                        hardware=request.hardware,
                        enrolled_at=now,
                        last_seen=now,
                        revoked=False,
                    )
                )
                db.execute(insert(Desired).values(initial_desired(name, now)))
        except IntegrityError:
            raise _name_taken(name) from None
        return EnrolResponse(device_id=name, server_time=now)

    def device_public_key(self, device_id: str) -> str | None:
        """The device's base64 Ed25519 public key; None when unknown or revoked.

        Kept in memory for KEY_CACHE_S (a device's key never changes): every device request
        read it, one transaction of its three. A revocation applies at once all the same:
        ``remember_nonce`` refuses a revoked device in its own write, and a revocation in
        this process also drops the cached key."""
        now = time.monotonic()
        cached = self._keys.get(device_id)
        if cached is not None and now - cached[1] < KEY_CACHE_S:
            return cached[0]
        with self._tx() as db:
            key = db.execute(PUBLIC_KEY, {"device_id": device_id}).scalar()
        if key is not None:
            if len(self._keys) >= KEY_CACHE_MAX:
                self._keys.clear()
            self._keys[device_id] = (key, now)
        return key

    def remember_nonce(self, device_id: str, nonce: str, now: float) -> bool:
        """False when NONCE was already used by DEVICE_ID (a replay); forgets nonces older than
        schema.MAX_CLOCK_SKEW_S * 2. A fresh nonce also marks the device seen, in the same
        transaction. 404 for an unknown or revoked device (nothing is kept). Committed before
        it returns, in a transaction shared with the other requests' nonces waiting at that
        moment (fleet.nonces: group commit)."""
        if not nonce or len(nonce) > NONCE_LEN:
            raise FleetError(f"nonce: give 1 to {NONCE_LEN} characters", 400)
        return self._nonces.remember(device_id, nonce, now)

    def _remember_nonces(self, asks: list[NonceAsk]) -> None:
        """One transaction for a batch of nonces: the live devices among them, their fresh
        nonces inserted (a nonce already there, or twice in the batch, is a replay), and the
        devices of fresh ones touched (the UPDATE rechecks revocation, so one revoked since
        the first read is refused too)."""
        first: dict[tuple[str, str], NonceAsk] = {}
        for ask in asks:
            if (ask.device_id, ask.nonce) in first:
                ask.result = False  # the same nonce twice in one batch: the second is a replay
            else:
                first[(ask.device_id, ask.nonce)] = ask
        device_ids = sorted({ask.device_id for ask in first.values()})
        now = max(ask.now for ask in asks)
        with self._tx(write=True) as db:
            live = set(db.execute(LIVE_DEVICES, {"device_ids": device_ids}).scalars())
            rows = [
                {"device_id": a.device_id, "nonce": a.nonce, "at": a.now}
                for a in first.values()
                if a.device_id in live
            ]
            fresh = {(d, n) for d, n in db.execute(self._insert_nonces, rows)} if rows else set()
            seen = sorted({device_id for device_id, _ in fresh})
            touched = (
                set(db.execute(TOUCH_LIVE_MANY, {"device_ids": seen, "b_now": now}).scalars())
                if seen
                else set()
            )
            if now - self._nonces_pruned_at >= PRUNE_EVERY_S:
                self._nonces_pruned_at = now
                db.execute(delete(Nonce).where(Nonce.at < now - NONCE_KEEP_S))
        for key, ask in first.items():
            if ask.device_id not in live or (key in fresh and ask.device_id not in touched):
                ask.result = _unknown_device(ask.device_id)
            else:
                ask.result = key in fresh

    def touch(self, device_id: str, now: float) -> None:
        """Mark the device seen (last_seen = now)."""
        with self._tx(write=True) as db:
            _touch(db, device_id, now)

    # --- devices and groups ---
    def list_devices(
        self, now: float, group: str | None = None, selector: Mapping[str, str] | None = None
    ) -> list[DeviceInfo]:
        with self._tx() as db:
            groups = _groups(db)
            if group is not None and group not in groups:
                raise _unknown_group(group)
            rows = db.execute(device_query()).all()
        infos = [device_info(row, groups, now, ONLINE_WINDOW_S) for row in rows]
        return [
            info
            for info in infos
            if (group is None or group in info.groups)
            and all(info.labels.get(k) == v for k, v in (selector or {}).items())
        ]

    def get_device(self, device_id: str, now: float) -> DeviceInfo:
        with self._tx() as db:
            groups = _groups(db)
            row = db.execute(device_query().where(Device.device_id == device_id)).first()
        if row is None:
            raise _unknown_device(device_id)
        return device_info(row, groups, now, ONLINE_WINDOW_S)

    def set_labels(self, device_id: str, labels: Mapping[str, str]) -> None:
        self._update_device(device_id, labels=_check_labels(labels))

    def revoke_device(self, device_id: str) -> None:
        self._update_device(device_id, revoked=True)
        self._keys.pop(device_id, None)

    def _update_device(self, device_id: str, **values: object) -> None:
        with self._tx(write=True) as db:
            done = db.execute(update(Device).where(Device.device_id == device_id).values(**values))
            if done.rowcount == 0:
                raise _unknown_device(device_id)

    def put_group(self, spec: GroupSpec) -> GroupInfo:
        stmt = self._insert(Group).values(name=spec.name, selector=dict(spec.selector))
        stmt = stmt.on_conflict_do_update(
            index_elements=[Group.name], set_={"selector": stmt.excluded.selector}
        )
        with self._tx(write=True) as db:
            db.execute(stmt)
        return next(info for info in self.list_groups() if info.name == spec.name)

    def list_groups(self) -> list[GroupInfo]:
        with self._tx() as db:
            groups = _groups(db)
            members = db.execute(
                select(Device.labels, Device.group_name).where(Device.revoked.is_(False))
            ).all()
        counts = dict.fromkeys(groups, 0)
        for labels, group_name in members:
            for name in member_of(labels, group_name, groups):
                counts[name] += 1
        return [
            GroupInfo(name=name, selector=selector, devices=counts[name])
            for name, selector in sorted(groups.items())
        ]

    def matching_devices(self, group: str | None, selector: Mapping[str, str] | None) -> list[str]:
        """Ids of the enrolled, unrevoked devices in GROUP (None: all) whose labels include
        SELECTOR, sorted."""
        with self._tx() as db:
            groups = _groups(db)
            if group is not None and group not in groups:
                raise _unknown_group(group)
            rows = db.execute(
                select(Device.device_id, Device.labels, Device.group_name).where(
                    Device.revoked.is_(False)
                )
            ).all()
        wanted = dict(selector or {})
        return sorted(
            device_id
            for device_id, labels, group_name in rows
            if (group is None or group in member_of(labels, group_name, groups))
            and all(labels.get(k) == v for k, v in wanted.items())
        )

    # --- desired and reported state ---
    def desired(self, device_id: str) -> DesiredState:
        with self._tx() as db:
            row = db.execute(DESIRED_ONE, {"device_id": device_id}).first()
        if row is None:
            raise _unknown_device(device_id)
        return desired_state(row)

    def desired_many(self, device_ids: Sequence[str] | None = None) -> dict[str, DesiredState]:
        """Device id -> desired state for DEVICE_IDS (None: every device), in one query;
        unknown ids are left out."""
        query = select(Desired.device_id, *DESIRED_COLUMNS)
        if device_ids is not None:
            query = query.where(Desired.device_id.in_(list(device_ids)))
        with self._tx() as db:
            rows = db.execute(query).all()
        return {row.device_id: desired_state(row) for row in rows}

    def generations(self, device_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Device id -> desired generation for DEVICE_IDS (None: every device), in one small
        query (no JSON decoded): for a long poll re-checking many waiting devices."""
        query = select(Desired.device_id, Desired.generation)
        if device_ids is not None:
            query = query.where(Desired.device_id.in_(list(device_ids)))
        with self._tx() as db:
            return {device_id: generation for device_id, generation in db.execute(query)}

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
        ids = sorted(set(device_ids))
        if not ids:
            return {}
        artifact_json = None if artifact is None else artifact.model_dump(mode="json")
        with self._tx(write=True) as db:
            # Lock the rows first (PostgreSQL; SQLite holds the write lock already) so the
            # "previous" kept below is what this very update replaces. In id order: two
            # overlapping moves then queue instead of deadlocking.
            locked = db.execute(
                select(Desired.device_id)
                .where(Desired.device_id.in_(ids))
                .order_by(Desired.device_id)
                .with_for_update()
            ).all()
            if len(locked) != len(ids):
                missing = sorted(set(ids) - {row[0] for row in locked})
                raise _unknown_device(", ".join(missing[:5]))
            if rollout_id is not None:
                # Only the first move by a rollout is its rollback point.
                db.execute(
                    self._insert(DesiredPrevious)
                    .from_select(
                        ["device_id", "rollout_id", "artifact"],
                        select(Desired.device_id, literal(rollout_id), Desired.artifact).where(
                            Desired.device_id.in_(ids)
                        ),
                    )
                    .on_conflict_do_nothing(
                        index_elements=[DesiredPrevious.device_id, DesiredPrevious.rollout_id]
                    )
                )
            rows = db.execute(
                update(Desired)
                .where(Desired.device_id.in_(ids))
                .values(
                    generation=Desired.generation + 1,
                    artifact=artifact_json,
                    rollout_id=rollout_id,
                    shadow_s=shadow_s,
                    shadow_min_requests=shadow_min_requests,
                    trial_s=trial_s,
                    updated_at=now,
                )
                .returning(Desired.device_id, Desired.generation)
            ).all()
        return {device_id: generation for device_id, generation in rows}

    def previous_artifact(self, device_id: str, rollout_id: str) -> ArtifactRef | None:
        """What DEVICE_ID was desired to serve before ROLLOUT_ID moved it."""
        with self._tx() as db:
            body = db.execute(
                select(DesiredPrevious.artifact).where(
                    DesiredPrevious.device_id == device_id,
                    DesiredPrevious.rollout_id == rollout_id,
                )
            ).scalar()
        return None if body is None else ArtifactRef.model_validate(body)

    def record_report(self, device_id: str, report: DeviceReport, now: float) -> None:
        """Keep the latest report per device (and touch it); a report for an older
        generation than the latest one kept is kept only in the history. The telemetry the
        report carries is appended as ``record_telemetry`` would, in the same transaction."""
        row = {
            "device_id": device_id,
            "generation": report.generation,
            "report": report.model_dump(mode="json", exclude={"telemetry"}),
            "received_at": now,
        }
        with self._tx(write=True) as db:
            _touch(db, device_id, now)
            if report.telemetry:
                _append_telemetry(db, device_id, report.telemetry)
            db.execute(INSERT_HISTORY, row)
            db.execute(self._upsert_report, row)
            # Trimmed per device on each report: one index seek, where a table-wide trim once
            # a minute held SQLite's write lock for ~0.4 s at 1,000 devices.
            db.execute(
                TRIM_HISTORY, {"b_device_id": device_id, "b_keep": REPORT_HISTORY_PER_DEVICE}
            )

    def reports(self, device_ids: Sequence[str]) -> dict[str, DeviceReport | None]:
        found: dict[str, DeviceReport | None] = dict.fromkeys(device_ids)
        if not found:
            return found
        with self._tx() as db:
            rows = db.execute(REPORTS_FOR, {"device_ids": list(found)}).all()
        for device_id, body in rows:
            found[device_id] = DeviceReport.model_validate(body)
        return found

    def report_history(
        self, device_id: str, limit: int = REPORT_HISTORY_PER_DEVICE
    ) -> list[DeviceReport]:
        """The device's recent reports, oldest first (at most REPORT_HISTORY_PER_DEVICE kept)."""
        with self._tx() as db:
            bodies = db.execute(
                select(ReportHistory.report)
                .where(ReportHistory.device_id == device_id)
                .order_by(ReportHistory.id.desc())
                .limit(limit)
            ).scalars()
            return [DeviceReport.model_validate(body) for body in reversed(list(bodies))]

    def record_telemetry(self, device_id: str, batch: TelemetryBatch, now: float) -> int:
        """Append the records; returns how many were kept. Keeps at most the newest 10,000
        records per device."""
        with self._tx(write=True) as db:
            _touch(db, device_id, now)
            _append_telemetry(db, device_id, batch.records)
        return min(len(batch.records), TELEMETRY_PER_DEVICE)

    def telemetry(self, device_id: str, limit: int = 1000) -> list[TelemetryRecord]:
        """The device's newest LIMIT telemetry records, oldest first."""
        with self._tx() as db:
            bodies = db.execute(
                select(Telemetry.record)
                .where(Telemetry.device_id == device_id)
                .order_by(Telemetry.id.desc())
                .limit(limit)
            ).scalars()
            return [TelemetryRecord.model_validate(body) for body in reversed(list(bodies))]

    # --- artifacts ---
    def add_artifact(self, info: ArtifactInfo) -> None:
        artifact_id = info.ref.artifact_id
        try:
            with self._tx(write=True) as db:
                db.execute(
                    insert(Artifact).values(
                        artifact_id=artifact_id,
                        created_at=info.created_at,
                        info=info.model_dump(mode="json"),
                    )
                )
        except IntegrityError:
            raise FleetError(
                f"artifact {artifact_id} exists: publish the model as a new version", 409
            ) from None

    def get_artifact(self, artifact_id: str) -> ArtifactInfo:
        with self._tx() as db:
            body = db.execute(
                select(Artifact.info).where(Artifact.artifact_id == artifact_id)
            ).scalar()
        if body is None:
            raise FleetError(
                f"unknown artifact {artifact_id!r}: see edgeshift fleet artifact list", 404
            )
        return ArtifactInfo.model_validate(body)

    def list_artifacts(self) -> list[ArtifactInfo]:
        with self._tx() as db:
            bodies = db.execute(
                select(Artifact.info).order_by(Artifact.created_at, Artifact.artifact_id)
            ).scalars()
            return [ArtifactInfo.model_validate(body) for body in bodies]

    # --- rollouts ---
    def add_rollout(self, info: RolloutInfo) -> None:
        try:
            with self._tx(write=True) as db:
                db.execute(insert(Rollout).values(rollout_row(info)))
        except IntegrityError:
            raise FleetError(
                f"rollout {info.rollout_id} exists: give the new one another id", 409
            ) from None

    def save_rollout(self, info: RolloutInfo) -> None:
        """Replace the stored rollout (state, waves, gate results, reason)."""
        row = rollout_row(info)
        del row["created_at"]
        with self._tx(write=True) as db:
            done = db.execute(
                update(Rollout).where(Rollout.rollout_id == info.rollout_id).values(row)
            )
            if done.rowcount == 0:
                raise _unknown_rollout(info.rollout_id)

    def get_rollout(self, rollout_id: str) -> RolloutInfo:
        with self._tx() as db:
            body = db.execute(select(Rollout.info).where(Rollout.rollout_id == rollout_id)).scalar()
        if body is None:
            raise _unknown_rollout(rollout_id)
        return RolloutInfo.model_validate(body)

    def list_rollouts(self, active_only: bool = False) -> list[RolloutInfo]:
        query = select(Rollout.info).order_by(Rollout.created_at, Rollout.rollout_id)
        if active_only:
            query = query.where(Rollout.state.in_(_ACTIVE))
        with self._tx() as db:
            return [RolloutInfo.model_validate(body) for body in db.execute(query).scalars()]

    def rollout_devices(self, rollout_id: str) -> dict[str, int]:
        """Device id -> the wave index it was assigned in, for ROLLOUT_ID."""
        with self._tx() as db:
            _require_rollout(db, rollout_id)
            rows = db.execute(
                select(RolloutDevice.device_id, RolloutDevice.wave)
                .where(RolloutDevice.rollout_id == rollout_id)
                .order_by(RolloutDevice.device_id)
            ).all()
        return {device_id: wave for device_id, wave in rows}

    def assign_wave(self, rollout_id: str, device_ids: Sequence[str], wave: int) -> None:
        ids = sorted(set(device_ids))
        try:
            with self._tx(write=True) as db:
                _require_rollout(db, rollout_id)
                if not ids:
                    return
                stmt = self._insert(RolloutDevice)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[RolloutDevice.rollout_id, RolloutDevice.device_id],
                    set_={"wave": stmt.excluded.wave},
                )
                db.execute(
                    stmt, [{"rollout_id": rollout_id, "device_id": d, "wave": wave} for d in ids]
                )
        except IntegrityError:
            raise _unknown_device("one of " + ", ".join(ids[:5])) from None


# --- helpers (pure, or one statement on a connection) ---------------------------------------


def _touch(db: Connection, device_id: str, now: float) -> None:
    done = db.execute(TOUCH, {"b_device_id": device_id, "b_now": now})
    if done.rowcount == 0:
        raise _unknown_device(device_id)


def _append_telemetry(db: Connection, device_id: str, records: Sequence[TelemetryRecord]) -> None:
    rows = [
        {"device_id": device_id, "at": record.at, "record": record.model_dump(mode="json")}
        for record in records
    ]
    if rows:
        db.execute(insert(Telemetry), rows)
    db.execute(TRIM_TELEMETRY, {"b_device_id": device_id, "b_keep": TELEMETRY_PER_DEVICE})


def _groups(db: Connection) -> dict[str, dict[str, str]]:
    return {name: selector for name, selector in db.execute(select(Group.name, Group.selector))}


def _require_rollout(db: Connection, rollout_id: str) -> None:
    if (
        db.execute(select(Rollout.rollout_id).where(Rollout.rollout_id == rollout_id)).first()
        is None
    ):
        raise _unknown_rollout(rollout_id)


def _unknown_device(device_id: str) -> FleetError:
    return FleetError(f"unknown device {device_id}: see edgeshift fleet device list", 404)


def _unknown_group(name: str) -> FleetError:
    return FleetError(f"unknown group {name!r}: see edgeshift fleet group list", 404)


def _unknown_rollout(rollout_id: str) -> FleetError:
    return FleetError(f"unknown rollout {rollout_id!r}: see edgeshift fleet rollout list", 404)


def _name_taken(name: str) -> FleetError:
    return FleetError(f"device name {name!r} is taken: enrol with another name", 409)
