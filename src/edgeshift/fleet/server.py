"""The control plane as a process: data dir, store, TUF repository, rollout engine, uvicorn on a
socket bound before anything serves, and two background loops (the rollout engine's tick
every second, TUF metadata refresh every minute).

A bad data dir, database or port is a one-line EdgeshiftError before the server starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio.to_thread
import uvicorn

from edgeshift.errors import ConfigError
from edgeshift.fleet.api import DesiredWaiters, FleetContext, create_app, recheck_desired
from edgeshift.fleet.guard import OperatorAuth, parse_token_file
from edgeshift.fleet.store import Store
from edgeshift.serve.security import TlsSettings, is_loopback
from edgeshift.serve.server import OnThread, bind_socket

log = logging.getLogger("edgeshift.fleet")

DEFAULT_PORT = 8600
OPERATOR_TOKEN_FILE = "operator.token"
# A thread pool bigger than anyio's default 40: 1,000 long polls re-check the store in bursts.
WORKER_THREADS = 64
# Idle device connections are kept this long: longer than an agent keeps them (transport's
# KEEPALIVE_EXPIRY_S, 40 s), which is longer than its 15 s report interval.
KEEP_ALIVE_S = 60


@dataclass
class FleetSettings:
    """Everything ``edgeshift fleet serve`` was asked for."""

    data_dir: Path = Path("fleet-data")
    db_url: str | None = None  # None: sqlite in DATA_DIR/fleet.db
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0: any free port (read it back from FleetServer.port)
    token_file: Path | None = None
    tls: TlsSettings | None = None
    tick_s: float = 1.0
    tuf_refresh_s: float = 60.0
    recheck_s: float = 2.0
    access_log: bool = False
    clock: Callable[[], float] = time.time

    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'fleet.db').resolve()}"


class _NotifyingStore:
    """The Store, with set_desired also waking the long polls of the devices it changed."""

    def __init__(self, store: Store, notify: Callable[[Iterable[str]], None]) -> None:
        self._store = store
        self._notify = notify

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def set_desired(self, *args: Any, **kwargs: Any) -> dict[str, int]:
        changed = self._store.set_desired(*args, **kwargs)
        self._notify(changed.keys())
        return changed


class _Uvicorn(uvicorn.Server):
    on_shutdown_started: Callable[[], None] | None = None

    # SIGTERM/SIGINT only ask for a graceful exit; uvicorn's own handling re-raises the
    # signal after shutdown, which turns a clean stop into a death by signal.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._exit_on_signal)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _exit_on_signal(self) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.on_shutdown_started is not None:
            self.on_shutdown_started()
        await super().shutdown(sockets)


def ensure_operator_token(store: Store, data_dir: Path, now: float) -> Path | None:
    """On first start without --token-file: make an operator token, keep its hash in the
    store and the token in DATA_DIR/operator.token (0600). Returns the path when it wrote it."""
    path = data_dir / OPERATOR_TOKEN_FILE
    if path.exists():
        return None
    token = secrets.token_urlsafe(32)
    store.add_operator_token("admin", token, now)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"admin:{token}\n")
    return path


class FleetServer:
    """One control plane: ``await start()`` opens everything and binds, ``await serve()`` runs
    until ``request_exit()`` (or SIGTERM/SIGINT when run from the main thread)."""

    def __init__(self, settings: FleetSettings) -> None:
        self.settings = settings
        self.store: Store | None = None
        self.context: FleetContext | None = None
        self.token_path: Path | None = None  # the operator.token written on first start
        self._socket: socket.socket | None = None
        self._uvicorn: _Uvicorn | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the control plane is not started")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls is not None else "http"
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self.port}"

    @property
    def started(self) -> bool:
        return self._uvicorn is not None and self._uvicorn.started

    async def start(self) -> None:
        s = self.settings
        ssl_context = s.tls.server_context() if s.tls is not None else None
        file_tokens = parse_token_file(s.token_file) if s.token_file is not None else {}
        try:
            s.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create --data-dir {s.data_dir} ({exc.strerror}) — give a writable folder"
            ) from None
        # The port first: a busy one is refused before a database or a token file is made.
        self._socket = bind_socket(s.host, s.port)
        try:
            self.store = await anyio.to_thread.run_sync(Store.open, s.database_url())
            await anyio.to_thread.run_sync(self._open_parts, file_tokens)
        except BaseException:
            self._socket.close()
            if self.store is not None:
                self.store.close()
            raise
        if not is_loopback(s.host) and s.tls is None:
            log.warning(
                "listening on %s without TLS: operator tokens and device traffic cross the"
                " network in clear — give --tls-cert and --tls-key, or bind 127.0.0.1",
                s.host,
            )
        assert self.context is not None
        config = uvicorn.Config(
            create_app(self.context),
            log_config=None,
            access_log=s.access_log,
            lifespan="off",
            timeout_graceful_shutdown=5,
            timeout_keep_alive=KEEP_ALIVE_S,
            server_header=False,
        )
        config.load()
        config.ssl = ssl_context
        self._uvicorn = _Uvicorn(config)
        self._uvicorn.on_shutdown_started = self.context.waiters.close

    def _open_parts(self, file_tokens: dict[str, str]) -> None:
        from edgeshift.fleet.rollouts import RolloutEngine
        from edgeshift.fleet.tuf_repo import TufRepository

        s = self.settings
        assert self.store is not None
        now = s.clock()
        if not file_tokens:
            self.token_path = ensure_operator_token(self.store, s.data_dir, now)
            if self.token_path is not None:
                log.warning("operator token written to %s (mode 0600)", self.token_path)
        tuf = TufRepository.open(s.data_dir / "tuf", now)
        waiters = DesiredWaiters()
        store = cast(Store, _NotifyingStore(self.store, waiters.notify))
        self.context = FleetContext(
            store=store,
            engine=RolloutEngine(store),
            tuf=tuf,
            data_dir=s.data_dir,
            auth=OperatorAuth.from_tokens(file_tokens),
            waiters=waiters,
            clock=s.clock,
            recheck_s=s.recheck_s,
        )

    async def serve(self) -> None:
        if self._uvicorn is None:
            await self.start()
        assert self._uvicorn is not None and self._socket is not None
        assert self.context is not None
        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        # The routes' store and engine calls (fleet/api.py: _run); asyncio.run shuts it down.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="edgeshift-fleet")
        )
        loops = [
            asyncio.create_task(self._engine_loop()),
            asyncio.create_task(self._every(self.settings.tuf_refresh_s, self._refresh_tuf)),
            asyncio.create_task(recheck_desired(self.context)),
            asyncio.create_task(self._announce()),
        ]
        try:
            await self._uvicorn.serve(sockets=[self._socket])
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            self._socket.close()
            if self.store is not None:
                await anyio.to_thread.run_sync(self.store.close)

    def request_exit(self) -> None:
        """Graceful exit, as on SIGTERM (call from the server's own loop)."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True

    async def _announce(self) -> None:
        while not self.started:
            await asyncio.sleep(0.01)
        log.info("fleet control plane on %s (data in %s)", self.url, self.settings.data_dir)

    async def _every(self, interval_s: float, step: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await anyio.to_thread.run_sync(step)
            except Exception:
                # One bad tick must not stop the loop: the next one retries from the store.
                log.exception("background step %s failed", getattr(step, "__name__", step))

    async def _engine_loop(self) -> None:
        """The engine's tick every ``tick_s``; sooner when a soak ends (the engine says when)
        or an operator's call sets ``engine_due``."""
        ctx = self.context
        assert ctx is not None
        while True:
            wait_s = self.settings.tick_s
            due_at = getattr(ctx.engine, "next_due_at", None)
            if due_at is not None:
                wait_s = max(0.0, min(wait_s, due_at - self.settings.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.engine_due.wait(), wait_s)
            ctx.engine_due.clear()
            try:
                await anyio.to_thread.run_sync(self._tick)
            except Exception:
                # One bad tick must not stop the loop: the next one retries from the store.
                log.exception("rollout engine tick failed")

    def _tick(self) -> None:
        ctx = self.context
        assert ctx is not None
        with ctx.engine_lock:
            cast(Any, ctx.engine).tick(self.settings.clock())

    def _refresh_tuf(self) -> None:
        ctx = self.context
        assert ctx is not None
        cast(Any, ctx.tuf).refresh(self.settings.clock())


class FleetServerThread(OnThread[FleetServer]):
    """A control plane on its own thread and event loop, for tests and benchmarks.

    ``with FleetServerThread(FleetSettings(data_dir=d, port=0)) as fleet:`` then talk to
    ``fleet.url`` with ``fleet.operator_token``; leaving the block stops it."""

    name = "control plane"

    def __init__(self, settings: FleetSettings) -> None:
        super().__init__(FleetServer(settings), start_timeout_s=60.0, stop_timeout_s=30.0)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def operator_token(self) -> str:
        """The token from DATA_DIR/operator.token, or the first one in --token-file."""
        s = self.server.settings
        path = s.token_file or s.data_dir / OPERATOR_TOKEN_FILE
        return next(iter(parse_token_file(path).values()))


def run_fleet_server(settings: FleetSettings, on_started: Callable[[FleetServer], None]) -> None:
    """Serve until SIGTERM/SIGINT in this thread (``edgeshift fleet serve``)."""
    server = FleetServer(settings)

    async def main() -> None:
        await server.start()
        on_started(server)
        await server.serve()

    asyncio.run(main())
