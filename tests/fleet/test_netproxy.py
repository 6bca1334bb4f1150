"""The fault-injecting TCP proxy, over real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from edgeshift.fleet.netproxy import NetProxy, ProxyConfig


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with self.request:
            while data := self.request.recv(65536):
                self.request.sendall(data)


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[NetProxy]:
    with NetProxy(ProxyConfig("127.0.0.1", echo_port)) as p:
        yield p


def _connect(port: int, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def test_passes_bytes_both_ways_unchanged(proxy: NetProxy) -> None:
    payload = os.urandom(1_000_000)
    with _connect(proxy.port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        echoed = _recv_exactly(sock, len(payload))
        sender.join()
    assert echoed == payload
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)
    assert proxy.stats.accepted == 1


def test_delay_applies_each_way_and_can_change_live(proxy: NetProxy) -> None:
    with _connect(proxy.port) as sock:
        proxy.set(delay_s=0.25)
        start = time.monotonic()
        sock.sendall(b"ping")
        assert _recv_exactly(sock, 4) == b"ping"
        # The proxy holds each chunk for delay_s in each direction: a lower bound, never flaky.
        assert time.monotonic() - start >= 0.5
        proxy.set(delay_s=0.0)
        sock.sendall(b"pong")
        assert _recv_exactly(sock, 4) == b"pong"


def test_cut_resets_open_connections_and_new_ones_still_work(proxy: NetProxy) -> None:
    a, b = _connect(proxy.port), _connect(proxy.port)
    with a, b:
        for sock in (a, b):
            sock.sendall(b"x")
            assert _recv_exactly(sock, 1) == b"x"
        assert proxy.cut() == 2
        for sock in (a, b):
            with pytest.raises(OSError):
                # A reset shows as ECONNRESET on recv, or at the latest on the next send.
                if sock.recv(1) == b"":
                    raise ConnectionResetError
    with _connect(proxy.port) as sock:
        sock.sendall(b"again")
        assert _recv_exactly(sock, 5) == b"again"
    assert proxy.stats.cut == 2


def test_refuse_then_restore_on_the_same_port(proxy: NetProxy) -> None:
    port = proxy.port
    proxy.set(mode="refuse")
    with pytest.raises(ConnectionRefusedError):
        _connect(port)
    proxy.set(mode="pass")
    assert proxy.port == port
    with _connect(port) as sock:
        sock.sendall(b"back")
        assert _recv_exactly(sock, 4) == b"back"


def test_blackhole_accepts_and_never_answers(proxy: NetProxy) -> None:
    proxy.set(mode="blackhole")
    with _connect(proxy.port, timeout_s=0.5) as sock:
        sock.sendall(b"anyone?")
        with pytest.raises(TimeoutError):
            sock.recv(1)
    # Counted when the proxy's accept runs, which may trail the client's connect.
    deadline = time.monotonic() + 5
    while proxy.stats.blackholed < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.stats.blackholed == 1
    assert proxy.stats.bytes_down == 0


def test_an_unreachable_upstream_resets_the_client() -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        dead_port = spare.getsockname()[1]  # bound, not listening: connects are refused
        with NetProxy(ProxyConfig("127.0.0.1", dead_port)) as proxy:
            with pytest.raises(OSError), _connect(proxy.port) as sock:
                if sock.recv(1) == b"":
                    raise ConnectionResetError
            assert proxy.stats.upstream_failures == 1


def test_connection_limit(echo_port: int) -> None:
    with NetProxy(ProxyConfig("127.0.0.1", echo_port, max_connections=1)) as proxy:
        with _connect(proxy.port) as first:
            first.sendall(b"1")
            assert _recv_exactly(first, 1) == b"1"
            # The reset can beat connect() itself, or come on the first read.
            with pytest.raises(OSError), _connect(proxy.port) as second:
                if second.recv(1) == b"":
                    raise ConnectionResetError
        assert proxy.stats.refused_by_limit == 1


@pytest.mark.parametrize(
    ("field", "value"), [("delay_s", -1.0), ("mode", "drop"), ("max_connections", 0)]
)
def test_bad_config_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ProxyConfig("127.0.0.1", 1, **{field: value})  # type: ignore[arg-type]
