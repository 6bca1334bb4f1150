"""The control plane's HTTP routes (docs/fleet.md): thin Starlette handlers over the Store, the
rollout engine and the TUF repository, which FleetServer (fleet/server.py) puts together.

Every store, engine and TUF call is synchronous and runs in a worker thread; the event loop
only parses, checks limits and waits (a long poll costs a coroutine and an asyncio.Event, no
thread). Every error is ``{"error": "one line"}`` with a 4xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from edgeshift.errors import FleetError
from edgeshift.fleet import tuf_bundle as tuf_bundle_mod
from edgeshift.fleet.guard import (
    LABELS,
    OperatorAuth,
    check_device,
    check_metadata_name,
    check_public_key,
    check_target_path,
    parse_body,
    selector_from_query,
    validation_line,
)
from edgeshift.fleet.longpoll import DesiredReads
from edgeshift.fleet.policy import SETTLED_PHASES
from edgeshift.fleet.schema import (
    ActionResult,
    ArtifactInfo,
    DeviceInfo,
    DeviceReport,
    EnrolmentTokenSpec,
    EnrolRequest,
    GroupSpec,
    RolloutInfo,
    RolloutSpec,
    TelemetryBatch,
    is_name,
)
from edgeshift.fleet.store import Store

log = logging.getLogger("edgeshift.fleet")

MAX_BODY_BYTES = 1 << 20
MAX_ARTIFACT_BYTES = 4 << 30
MAX_WAIT_S = 60.0
ROLLOUT_ACTIONS = ("pause", "resume", "cancel", "rollback")
DASHBOARD_DIR = Path(__file__).parent / "dashboard"
_WRITE_CHUNK_BYTES = 1 << 20
_M = TypeVar("_M", bound=BaseModel)
_T = TypeVar("_T")


class Engine(Protocol):
    """fleet/rollouts.py's RolloutEngine, as the routes use it."""

    def create(self, spec: RolloutSpec, now: float) -> RolloutInfo: ...
    def pause(self, rollout_id: str, now: float) -> ActionResult: ...
    def resume(self, rollout_id: str, now: float) -> ActionResult: ...
    def cancel(self, rollout_id: str, now: float) -> ActionResult: ...
    def rollback(self, rollout_id: str, now: float) -> ActionResult: ...
    def device_settled(self, device_id: str, generation: int) -> bool: ...


class Repository(Protocol):
    """fleet/tuf_repo.py's TufRepository, as the routes use it."""

    def publish(
        self,
        bundle: Path,
        name: str,
        version: int,
        now: float,
        manifest: dict[str, Any] | None = None,
    ) -> ArtifactInfo: ...
    def metadata_file(self, name: str) -> Path | None: ...
    def target_file(self, path: str) -> Path | None: ...
    def root_json(self) -> Any: ...
    def metadata_bundle(self, from_root: int) -> tuple[list[tuple[str, bytes]], list[str]]: ...


class DesiredWaiters:
    """One asyncio.Event per long-polling device, set when its desired state changes in this
    process (``notify``, callable from any thread: the engine runs in worker threads) or when
    the shared re-check (``recheck_desired``) finds a newer generation in the store."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._seen: dict[str, int] = {}  # device -> the lowest generation a waiting poll holds
        self._polls: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    def close(self) -> None:
        """Answer every waiting poll now (call on the event loop): a stopping server should
        not hold its shutdown for a minute of long polls; the agents simply poll again."""
        self.closed = True
        self.wake(list(self._events))

    async def wait(self, device_id: str, seen: int, timeout_s: float) -> bool:
        """Until DEVICE_ID's desired state may have changed past SEEN, or TIMEOUT_S, or the
        server stops (``close``)."""
        if self.closed:
            return True
        self._loop = asyncio.get_running_loop()
        event = self._events.get(device_id)
        if event is None:
            event = self._events[device_id] = asyncio.Event()
        self._polls[device_id] += 1
        self._seen[device_id] = min(seen, self._seen.get(device_id, seen))
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        finally:
            self._polls[device_id] -= 1
            if self._polls[device_id] <= 0:
                del self._polls[device_id]
                self._seen.pop(device_id, None)
                if self._events.get(device_id) is event:
                    del self._events[device_id]
        return True

    def waiting(self) -> dict[str, int]:
        """Device id -> the generation its polls wait to pass."""
        return dict(self._seen)

    def notify(self, device_ids: Iterable[str]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # nobody has waited yet
        ids = list(device_ids)
        # RuntimeError: the loop stopped between the check and the call; nobody is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self.wake, ids)

    def wake(self, device_ids: Iterable[str]) -> None:
        """Wake DEVICE_IDS' polls (call on the event loop)."""
        for device_id in device_ids:
            event = self._events.pop(device_id, None)
            if event is not None:
                event.set()


def _generations(store: Store, device_ids: list[str], now: float) -> dict[str, int]:
    # One query for every waiting device: generations() reads one small column (1,000
    # devices: about 1 ms on SQLite, against 40 ms for list_devices and 1.6 s one by one).
    return store.generations(device_ids)


async def recheck_desired(ctx: FleetContext) -> None:
    """Every ``ctx.recheck_s``, read the generations of every long-polling device in one worker
    call and wake those that moved: another process (a second control plane, an operator's
    script) may have written the store, which no in-process event reports. One pass for all
    polls, so 1,000 waiting devices cost one thread hop per interval, not 1,000."""
    while True:
        await asyncio.sleep(ctx.recheck_s)
        waiting = ctx.waiters.waiting()
        if not waiting:
            continue
        try:
            generations = await _run(_generations, ctx.store, list(waiting), ctx.clock())
        except Exception:
            log.exception("re-checking the desired state of %d polls failed", len(waiting))
            continue
        ctx.waiters.wake(d for d, seen in waiting.items() if generations.get(d, seen) > seen)


@dataclass
class FleetContext:
    """What the routes work on (FleetServer builds it)."""

    store: Store
    engine: Engine
    tuf: Repository
    data_dir: Path
    auth: OperatorAuth = field(default_factory=OperatorAuth)
    waiters: DesiredWaiters = field(default_factory=DesiredWaiters)
    clock: Callable[[], float] = time.time
    recheck_s: float = 2.0  # a long poll re-reads the store this often (other processes write)
    engine_lock: threading.Lock = field(default_factory=threading.Lock)
    # Set by an operator's rollout call: the server's engine loop ticks now (a new rollout's
    # first wave starts at once, not up to a tick later).
    engine_due: asyncio.Event = field(default_factory=asyncio.Event)
    _desired_reads: DesiredReads | None = None

    def desired_reads(self) -> DesiredReads:
        """Woken long polls' reads, gathered into one query per turn of the event loop."""
        if self._desired_reads is None:
            store = self.store
            self._desired_reads = DesiredReads(
                lambda ids: _run(store.desired_many, ids), lambda d: _run(store.desired, d)
            )
        return self._desired_reads


async def _run(fn: Callable[..., _T], *args: Any) -> _T:
    # asyncio's executor (FleetServer gives it WORKER_THREADS threads), not anyio.to_thread:
    # every device request makes this hop, and anyio's costs about twice the CPU under load
    # (47 vs 90 us a hop with 32 at once; its workers wait on a Python-level queue).
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _stopping() -> JSONResponse:
    # A stopping control plane answers its long polls at once and closes their connections:
    # agents back off (with jitter) and poll the next one, instead of re-polling this one on
    # the same keep-alive connection and holding its shutdown open.
    return JSONResponse(
        {"error": "the control plane is restarting; poll again shortly"},
        503,
        headers={"Connection": "close", "Retry-After": "2"},
    )


def _json(value: BaseModel | list[Any] | dict[str, Any], status: int = 200) -> JSONResponse:
    if isinstance(value, BaseModel):
        return JSONResponse(value.model_dump(mode="json"), status)
    if isinstance(value, list):
        return JSONResponse(
            [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value], status
        )
    return JSONResponse(value, status)


async def read_body(request: Request, limit_bytes: int = MAX_BODY_BYTES) -> bytes:
    _check_length(request, limit_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise FleetError(f"body over {limit_bytes} bytes — send less", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _check_length(request: Request, limit_bytes: int) -> None:
    length = request.headers.get("content-length")
    if length is None:
        return
    if not length.isdigit():
        raise FleetError("Content-Length is not a number", 400)
    if int(length) > limit_bytes:
        raise FleetError(f"body over {limit_bytes} bytes — send less", 413)


def _path_and_query(request: Request) -> str:
    # Exactly the request target the device signed: the raw path and the raw query.
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    query = request.scope.get("query_string", b"")
    target = raw.decode("latin-1")
    return f"{target}?{query.decode('latin-1')}" if query else target


def _path_name(request: Request, key: str, what: str) -> str:
    value = str(request.path_params[key])
    if not is_name(value):
        raise FleetError(f"no {what} {value[:80]!r} (not a valid name)", 404)
    return value


def _query_float(request: Request, key: str, default: float) -> float:
    text = request.query_params.get(key)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise FleetError(f"query {key}={text[:40]!r} is not a number", 400) from None
    if not value >= 0 or value == float("inf"):
        raise FleetError(f"query {key} must be a finite number >= 0", 400)
    return value


def _query_int(request: Request, key: str, default: int, minimum: int) -> int:
    text = request.query_params.get(key)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise FleetError(f"query {key}={text[:40]!r} is not an integer", 400) from None
    if value < minimum or value > 2**62:
        raise FleetError(f"query {key} must be an integer >= {minimum}", 400)
    return value


def summarize(devices: list[DeviceInfo], rollouts: list[RolloutInfo]) -> dict[str, Any]:
    """The dashboard's counts: devices online/offline by serving version and by phase, and the
    active rollouts."""
    live = [d for d in devices if not d.revoked]
    by_version: dict[str, dict[str, int]] = {}
    for device in live:
        version = (device.reported.active if device.reported else None) or "none"
        counts = by_version.setdefault(version, {"online": 0, "offline": 0})
        counts["online" if device.online else "offline"] += 1
    phases = Counter(d.reported.phase.value if d.reported else "unreported" for d in live)
    active = [r for r in rollouts if r.state.value in ("pending", "running", "paused")]
    return {
        "devices": {
            "total": len(live),
            "online": sum(d.online for d in live),
            "offline": sum(not d.online for d in live),
            "revoked": len(devices) - len(live),
        },
        "by_version": by_version,
        "by_phase": dict(phases),
        "rollouts": dict(Counter(r.state.value for r in rollouts)),
        "active_rollouts": [r.rollout_id for r in active],
    }


Handler = Callable[[Request], Awaitable[Response]]


class _TargetResponse(FileResponse):
    """A bundle in 256 KiB reads: Starlette's 64 KiB means ~80 worker-thread file reads and
    ASGI sends per 5 MB target. Bounded so that many concurrent downloads stay small."""

    chunk_size = 256 * 1024


def create_app(ctx: FleetContext) -> Starlette:
    """The control plane's ASGI app over CTX."""

    def operator(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            await _run(ctx.auth.operator, request.headers.get("authorization"), ctx.store)
            return await handler(request)

        return endpoint

    async def device_call(request: Request, work: Callable[[str, bytes, float], _T]) -> _T:
        """Check the device request, then WORK(device_id, body, now), in one worker-thread
        call: one thread hop per request where there were two."""
        body = await read_body(request)
        now = ctx.clock()
        headers, method, target = request.headers, request.method, _path_and_query(request)

        def call() -> _T:
            # check_device's remember_nonce also marks the device seen (one write, shared
            # with the other requests' nonces: fleet.nonces). The nonce is committed before
            # WORK runs, so a request WORK refuses cannot be replayed either.
            device_id = check_device(ctx.store, headers, method, target, body, now)
            return work(device_id, body, now)

        return await _run(call)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def enrol(request: Request) -> Response:
        enrol_request = parse_body(EnrolRequest, await read_body(request, 64 << 10))
        check_public_key(enrol_request.public_key)
        return _json(await _run(ctx.store.enrol, enrol_request, ctx.clock()))

    async def device_desired(request: Request) -> Response:
        started = ctx.clock()
        device_id, desired = await device_call(request, lambda d, _b, _n: (d, ctx.store.desired(d)))
        seen = _query_int(request, "generation", -1, -1)
        wait_s = min(_query_float(request, "wait", 0.0), MAX_WAIT_S)
        deadline = started + wait_s
        while True:
            if ctx.waiters.closed:
                return _stopping()
            now = ctx.clock()
            left_s = deadline - now
            if desired.generation > seen or left_s <= 0:
                return _json(desired.model_copy(update={"server_time": now}))
            await ctx.waiters.wait(device_id, seen, left_s)
            desired = await ctx.desired_reads().read(device_id)

    async def device_report(request: Request) -> Response:
        def record(device_id: str, body: bytes, now: float) -> tuple[str, DeviceReport]:
            report = parse_body(DeviceReport, body)
            ctx.store.record_report(device_id, report, now)
            return device_id, report

        device_id, report = await device_call(request, record)
        if report.phase in SETTLED_PHASES and ctx.engine.device_settled(
            device_id, report.generation
        ):
            ctx.engine_due.set()  # the wave's last device: its soak or next wave now
        return JSONResponse({"ok": True})

    async def device_telemetry(request: Request) -> Response:
        def record(device_id: str, body: bytes, now: float) -> int:
            return ctx.store.record_telemetry(device_id, parse_body(TelemetryBatch, body), now)

        return JSONResponse({"kept": await device_call(request, record)})

    async def tuf_metadata(request: Request) -> Response:
        name = str(request.path_params["file"])

        def find(_device_id: str, _body: bytes, _now: float) -> tuple[str, Path | None]:
            checked = check_metadata_name(name)
            return checked, ctx.tuf.metadata_file(checked)

        name, path = await device_call(request, find)
        if path is None:
            raise FleetError(f"no TUF metadata {name!r}", 404)
        return FileResponse(path, media_type="application/json", headers=_NO_STORE)

    async def tuf_bundle(request: Request) -> Response:
        from_root = _query_int(request, "root", 1, 1)

        def gather(_device_id: str, _body: bytes, _now: float) -> bytes:
            return tuf_bundle_mod.encode(*ctx.tuf.metadata_bundle(from_root))

        body = await device_call(request, gather)
        return Response(body, media_type="application/octet-stream", headers=_NO_STORE)

    async def tuf_target(request: Request) -> Response:
        target = str(request.path_params["path"])

        def find(_device_id: str, _body: bytes, _now: float) -> tuple[str, Path | None]:
            checked = check_target_path(target)
            return checked, ctx.tuf.target_file(checked)

        target, path = await device_call(request, find)
        if path is None:
            raise FleetError(f"no target {target!r}", 404)
        # FileResponse answers Range with 206 (resumed downloads) and a bad one with 416.
        return _TargetResponse(path, media_type="application/octet-stream")

    async def root_json(request: Request) -> Response:
        root = await _run(ctx.tuf.root_json)
        if isinstance(root, (bytes, str)):
            return Response(root, media_type="application/json", headers=_NO_STORE)
        return JSONResponse(root, headers=_NO_STORE)

    async def enrolment_tokens(request: Request) -> Response:
        spec = parse_body(EnrolmentTokenSpec, await read_body(request))
        return _json(await _run(ctx.store.create_enrolment_token, spec, ctx.clock()), 201)

    async def devices(request: Request) -> Response:
        group = request.query_params.get("group") or None
        if group is not None and not is_name(group):
            raise FleetError(f"group {group[:80]!r} is not a valid name", 400)
        selector = selector_from_query(request.query_params.getlist("label"))
        found = await _run(ctx.store.list_devices, ctx.clock(), group, selector)
        return _json(found)

    async def device(request: Request) -> Response:
        device_id = _path_name(request, "device_id", "device")
        if request.method == "DELETE":
            await _run(ctx.store.revoke_device, device_id)
        return _json(await _run(ctx.store.get_device, device_id, ctx.clock()))

    async def device_labels(request: Request) -> Response:
        device_id = _path_name(request, "device_id", "device")
        try:
            labels = LABELS.validate_json(await read_body(request))
        except ValidationError as exc:
            raise FleetError(validation_line("labels", exc), 400) from None
        await _run(ctx.store.set_labels, device_id, labels)
        return _json(await _run(ctx.store.get_device, device_id, ctx.clock()))

    async def groups(request: Request) -> Response:
        return _json(await _run(ctx.store.list_groups))

    async def group(request: Request) -> Response:
        name = _path_name(request, "name", "group")
        body = await read_body(request)
        try:
            given = json.loads(body)
        except ValueError:
            raise FleetError("bad GroupSpec: body is not JSON", 400) from None
        if isinstance(given, dict):
            given.setdefault("name", name)
            if given["name"] != name:
                raise FleetError(f"bad GroupSpec: name {given['name']!r} is not {name!r}", 400)
        spec = parse_body(GroupSpec, json.dumps(given).encode())
        return _json(await _run(ctx.store.put_group, spec))

    async def artifacts(request: Request) -> Response:
        if request.method == "GET":
            return _json(await _run(ctx.store.list_artifacts))
        return await publish(request)

    async def publish(request: Request) -> Response:
        name = request.query_params.get("name", "")
        if not is_name(name):
            raise FleetError("query name= must be a name (letters, digits, '.', '_', '-')", 400)
        version = _query_int(request, "version", 0, 1)
        if version < 1:
            raise FleetError("query version= must be an integer >= 1", 400)
        _check_length(request, MAX_ARTIFACT_BYTES)
        uploads = ctx.data_dir / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=uploads, suffix=".tar")
        tmp = Path(tmp_name)
        try:
            await _receive_to_file(request, fd)
            if tmp.stat().st_size == 0:
                raise FleetError("empty upload — send the bundle tar as the body", 400)

            def publish_and_record() -> ArtifactInfo:
                # publish checks the tar as a device's unpack would, and reads its manifest.
                info = ctx.tuf.publish(tmp, name, version, ctx.clock(), None)
                try:
                    ctx.store.add_artifact(info)
                except FleetError as exc:
                    if exc.status != 409:
                        raise
                    return ctx.store.get_artifact(info.ref.artifact_id)  # the same bytes again
                return info

            return _json(await _run(publish_and_record), 201)
        finally:
            tmp.unlink(missing_ok=True)

    async def artifact(request: Request) -> Response:
        artifact_id = _path_name(request, "artifact_id", "artifact")
        return _json(await _run(ctx.store.get_artifact, artifact_id))

    def engine_call(fn: Callable[..., _T], *args: Any) -> Callable[[], _T]:
        def call() -> _T:
            with ctx.engine_lock:
                return fn(*args)

        return call

    async def rollouts(request: Request) -> Response:
        if request.method == "GET":
            active = request.query_params.get("active", "") in ("1", "true", "yes")
            return _json(await _run(ctx.store.list_rollouts, active))
        spec = parse_body(RolloutSpec, await read_body(request))
        info = await _run(engine_call(ctx.engine.create, spec, ctx.clock()))
        ctx.engine_due.set()
        return _json(info, 201)

    async def rollout(request: Request) -> Response:
        rollout_id = _path_name(request, "rollout_id", "rollout")
        return _json(await _run(ctx.store.get_rollout, rollout_id))

    async def rollout_action(request: Request) -> Response:
        rollout_id = _path_name(request, "rollout_id", "rollout")
        action = str(request.path_params["action"])
        if action not in ROLLOUT_ACTIONS:
            raise FleetError(f"no action {action[:40]!r}; use {', '.join(ROLLOUT_ACTIONS)}", 404)
        method = getattr(ctx.engine, action)
        result = await _run(engine_call(method, rollout_id, ctx.clock()))
        ctx.engine_due.set()
        return _json(result)

    async def summary(request: Request) -> Response:
        def gather() -> dict[str, Any]:
            return summarize(ctx.store.list_devices(ctx.clock()), ctx.store.list_rollouts())

        return _json(await _run(gather))

    async def _receive_to_file(request: Request, fd: int) -> None:
        # Streamed to disk a megabyte at a time (writes in a worker thread): an artifact of
        # gigabytes never sits in memory.
        size = 0
        pending: list[bytes] = []
        pending_bytes = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_ARTIFACT_BYTES:
                        raise FleetError(f"artifact over {MAX_ARTIFACT_BYTES} bytes", 413)
                    pending.append(chunk)
                    pending_bytes += len(chunk)
                    if pending_bytes >= _WRITE_CHUNK_BYTES:
                        await _run(out.write, b"".join(pending))
                        pending, pending_bytes = [], 0
                if pending:
                    await _run(out.write, b"".join(pending))
        except OSError as exc:
            raise FleetError(
                f"cannot store the upload ({exc.strerror or exc}) — free space in the control"
                " plane's data dir",
                507,
            ) from None

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/v1/enrol", enrol, methods=["POST"]),
        Route("/v1/device/desired", device_desired),
        Route("/v1/device/report", device_report, methods=["POST"]),
        Route("/v1/device/telemetry", device_telemetry, methods=["POST"]),
        Route("/v1/device/tuf/metadata/{file}", tuf_metadata),
        Route("/v1/device/tuf" + tuf_bundle_mod.BUNDLE_PATH, tuf_bundle),
        Route("/v1/device/tuf/targets/{path:path}", tuf_target),
        Route("/v1/root.json", operator(root_json)),
        Route("/v1/enrolment-tokens", operator(enrolment_tokens), methods=["POST"]),
        Route("/v1/devices", operator(devices)),
        Route("/v1/devices/{device_id}", operator(device), methods=["GET", "DELETE"]),
        Route("/v1/devices/{device_id}/labels", operator(device_labels), methods=["PUT"]),
        Route("/v1/groups", operator(groups)),
        Route("/v1/groups/{name}", operator(group), methods=["PUT"]),
        Route("/v1/artifacts", operator(artifacts), methods=["GET", "POST"]),
        Route("/v1/artifacts/{artifact_id}", operator(artifact)),
        Route("/v1/rollouts", operator(rollouts), methods=["GET", "POST"]),
        Route("/v1/rollouts/{rollout_id}", operator(rollout)),
        Route("/v1/rollouts/{rollout_id}/{action}", operator(rollout_action), methods=["POST"]),
        Route("/v1/summary", operator(summary)),
    ]
    if DASHBOARD_DIR.is_dir():
        static = StaticFiles(directory=DASHBOARD_DIR, html=True)
        routes += [Mount("/dashboard", static), Mount("/", static)]
    return Starlette(
        routes=routes,
        exception_handlers={
            FleetError: _fleet_error,
            HTTPException: _http_error,
            ClientDisconnect: _client_gone,
            Exception: _internal_error,
        },
    )


_NO_STORE = {"Cache-Control": "no-store"}


async def _fleet_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FleetError)
    return JSONResponse({"error": str(exc)}, exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    if exc.status_code == 404:
        detail = f"no route {request.url.path[:120]} — see docs/fleet.md for the routes"
    return JSONResponse({"error": detail}, exc.status_code, headers=exc.headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client hung up mid-body (an agent killed, a link cut): nobody reads this answer.
    return JSONResponse({"error": "client disconnected before its body arrived"}, 400)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal error — see the control plane's log"}, 500)
