"""A small user-space TCP proxy that adds delay, cuts connections and refuses or blackholes new
ones: the network faults the fleet's tests and benchmark inject where ``tc netem`` is missing.

``ProxyConfig`` is the whole policy (data); ``NetProxy`` applies it to live sockets. The policy
can be changed while connections flow: a new delay applies to the next bytes read, a new mode
to the next connection accepted. Run it on an asyncio loop (``await start()``) or on its own
thread (``start_thread()``, for synchronous tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Literal

Mode = Literal["pass", "refuse", "blackhole"]
# Bytes read per chunk: small enough that a delayed stream still trickles, big enough to keep
# a 5 MB artifact cheap.
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class ProxyConfig:
    """What the proxy does. ``mode``: "pass" forwards; "refuse" closes the listening socket so
    connects fail at once (ECONNREFUSED); "blackhole" accepts and never answers (a silent
    drop, as a client sees it: only its own timeout ends the wait)."""

    upstream_host: str
    upstream_port: int
    listen_host: str = "127.0.0.1"
    listen_port: int = 0  # 0: any free port; the bound one is NetProxy.port
    delay_s: float = 0.0  # added one way, to every chunk, in both directions
    mode: Mode = "pass"
    max_connections: int = 4096
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {self.delay_s}")
        if self.mode not in ("pass", "refuse", "blackhole"):
            raise ValueError(f"mode must be pass, refuse or blackhole, got {self.mode!r}")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")


@dataclass
class ProxyStats:
    accepted: int = 0
    refused_by_limit: int = 0
    blackholed: int = 0
    cut: int = 0
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client
    upstream_failures: int = 0
    open_now: set[asyncio.Task[None]] = field(default_factory=set)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a dropped link looks to the peer's next write."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class NetProxy:
    """One listening port forwarding to one upstream, under a changeable ProxyConfig."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.stats = ProxyStats()
        self.port = config.listen_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()  # both ends of every connection
        self._clients: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- on a loop ---
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.config.mode != "refuse":
            await self._listen()

    async def close(self) -> None:
        await self._unlisten()
        self._cut_all()
        tasks = list(self.stats.open_now)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._handle, self.config.listen_host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _cut_all(self) -> int:
        clients = len(self._clients)
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()
        self._clients.clear()
        self.stats.cut += clients
        return clients

    async def _apply(self, config: ProxyConfig) -> None:
        self.config = config
        if config.mode == "refuse":
            await self._unlisten()
        else:
            await self._listen()

    # --- the policy ---
    async def update(self, **changes: object) -> ProxyConfig:
        """Change the policy from the proxy's own loop, e.g. ``await update(mode="refuse")``."""
        config = replace(self.config, **changes)  # type: ignore[arg-type]
        await self._apply(config)
        return config

    def set(self, **changes: object) -> ProxyConfig:
        """Change the policy from another thread (fields of ProxyConfig), e.g.
        ``set(delay_s=0.2)``, ``set(mode="refuse")``; returns the new config."""
        loop = self._require_loop()
        return asyncio.run_coroutine_threadsafe(self.update(**changes), loop).result(10)

    def cut(self) -> int:
        """Reset every open connection (a link that drops); returns how many. Callable from
        the proxy's loop or any other thread."""
        loop = self._require_loop()
        if self._thread is None or threading.current_thread() is self._thread:
            return self._cut_all()

        async def cut_now() -> int:
            return self._cut_all()

        return asyncio.run_coroutine_threadsafe(cut_now(), loop).result(10)

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("start the proxy first (await start() or start_thread())")
        return self._loop

    # --- on its own thread ---
    def start_thread(self) -> NetProxy:
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._thread = threading.Thread(target=run, name="netproxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start within 10 s")
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> NetProxy:
        return self.start_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()

    # --- connections ---
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self.stats.open_now) >= self.config.max_connections:
            self.stats.refused_by_limit += 1
            _reset(writer)
            return
        self.stats.open_now.add(task)
        self._writers.add(writer)
        self._clients.add(writer)
        try:
            if self.config.mode == "blackhole":
                self.stats.blackholed += 1
                # Read and discard until the client gives up or the proxy cuts it.
                while await reader.read(CHUNK_BYTES):
                    pass
                return
            self.stats.accepted += 1
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(self.config.upstream_host, self.config.upstream_port),
                    self.config.connect_timeout_s,
                )
            except (OSError, asyncio.TimeoutError):
                self.stats.upstream_failures += 1
                _reset(writer)
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(
                    self._pump(reader, up_writer, up=True),
                    self._pump(up_reader, writer, up=False),
                )
            except asyncio.CancelledError:
                # The proxy closing or cutting its connections: this task is what ends, and
                # asyncio's stream server would log the cancellation as an error.
                return
            finally:
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        finally:
            self._writers.discard(writer)
            self._clients.discard(writer)
            writer.transport.abort()
            self.stats.open_now.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        # A reader fills a queue stamped with each chunk's due time and a writer drains it, so
        # delay adds latency without cutting throughput to one chunk per delay.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)

        async def read() -> None:
            try:
                while data := await reader.read(CHUNK_BYTES):
                    await queue.put((time.monotonic() + self.config.delay_s, data))
            except (OSError, asyncio.IncompleteReadError):
                pass
            await queue.put((0.0, b""))

        async def write() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                wait_s = due - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                if writer.is_closing():
                    return
                # Counted before the write: the peer can hold the bytes before write() returns.
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                writer.write(data)
                try:
                    await writer.drain()
                except OSError:
                    return

        reading = asyncio.ensure_future(read())
        try:
            await write()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"give HOST:PORT, e.g. 127.0.0.1:8000 (got {text!r})")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    """``python -m edgeshift.fleet.netproxy --listen H:P --upstream H:P [--delay-s S]``: a
    proxy as its own process (e.g. inside a network namespace). It prints ``listening PORT``
    once bound; SIGUSR1 cuts every open connection; SIGTERM stops it."""
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(prog="python -m edgeshift.fleet.netproxy")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--mode", default="pass", choices=["pass", "refuse", "blackhole"])
    args = parser.parse_args(argv)
    listen_host, listen_port = _host_port(args.listen)
    upstream_host, upstream_port = _host_port(args.upstream)
    try:
        config = ProxyConfig(
            upstream_host, upstream_port, listen_host, listen_port, args.delay_s, args.mode
        )
    except ValueError as err:
        raise SystemExit(str(err)) from None

    async def serve() -> None:
        proxy = NetProxy(config)
        await proxy.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, proxy.cut)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print(f"listening {proxy.port}", flush=True)
        await stop.wait()
        await proxy.close()

    asyncio.run(serve())
    sys.exit(0)


if __name__ == "__main__":
    main()
