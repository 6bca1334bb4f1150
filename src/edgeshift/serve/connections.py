"""What one HTTP connection may hold: header size, header and body timeouts, the keep-alive
idle timeout, and how many connections are open at once.

Settings, the open-file limit, and the sweep that applies the timeouts; the HTTP protocol
(:mod:`edgeshift.serve.fastpath`) keeps each connection's phase and acts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from edgeshift.errors import ConfigError

log = logging.getLogger("edgeshift.serve")

KIB = 1 << 10
# File descriptors kept for everything that is not an HTTP connection: model files, the
# runtimes' threads and pipes, gRPC's connections, logs.
RESERVED_FDS = 128
MAX_DEFAULT_CONNECTIONS = 16384  # idle connections cost memory too; raise it with the flag


@dataclass(frozen=True)
class ConnectionSettings:
    """Per-connection limits of the HTTP front end; every field has a CLI flag."""

    max_header_bytes: int = 64 * KIB  # request line and all headers (431 beyond)
    header_timeout_s: float = 10.0  # a whole request head, from its first byte (408 beyond)
    body_timeout_s: float = 30.0  # longest wait for the next piece of a body (408 beyond)
    keep_alive_timeout_s: float = 5.0  # idle time between requests before the server closes
    max_connections: int | None = None  # None: from the open-file limit (see connection_limit)

    def __post_init__(self) -> None:
        checks = (
            ("--max-header-kb", self.max_header_bytes, self.max_header_bytes >= 1 * KIB, ">= 1"),
            ("--header-timeout-s", self.header_timeout_s, self.header_timeout_s > 0, "> 0"),
            ("--body-timeout-s", self.body_timeout_s, self.body_timeout_s > 0, "> 0"),
            ("--keep-alive-s", self.keep_alive_timeout_s, self.keep_alive_timeout_s > 0, "> 0"),
        )
        for flag, value, ok, floor in checks:
            if not ok:
                shown = value / KIB if flag == "--max-header-kb" else value
                raise ConfigError(f"{flag} must be {floor}, not {shown:g}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ConfigError(f"--max-connections must be >= 1, not {self.max_connections}")


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (allowed without privilege);
    the new soft limit. Idle connections then cannot starve accept() at a 1,024 default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a container may refuse: serve within the soft limit
            log.warning("could not raise the open-file limit from %d", soft)
    return int(soft)


def connection_limit(settings: ConnectionSettings, open_file_limit: int) -> int:
    """The HTTP connections served at once: what was asked, but never so many that accept()
    would fail for want of a file descriptor."""
    fits = max(16, open_file_limit - RESERVED_FDS)
    if settings.max_connections is None:
        return min(fits, MAX_DEFAULT_CONNECTIONS)
    if settings.max_connections > fits:
        log.warning(
            "--max-connections %d is over what the open-file limit allows; serving %d",
            settings.max_connections,
            fits,
        )
    return min(settings.max_connections, fits)


class TimedConnection(Protocol):
    def check_timeouts(self, now_s: float) -> None: ...


async def sweep_timeouts(
    connections: Iterable[TimedConnection], interval_s: float, stop: asyncio.Event
) -> None:
    """Apply header and body timeouts every INTERVAL_S: one pass over the open connections
    costs less than a timer per request on the fast path."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        now_s = loop.time()
        for connection in list(connections):
            check = getattr(connection, "check_timeouts", None)
            if check is not None:
                check(now_s)
