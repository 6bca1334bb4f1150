"""The HTTP fast path for ``POST .../infer``: uvicorn's httptools protocol, answering inference
requests from its parser callbacks instead of through an ASGI task.

Per request, uvicorn's ASGI path creates a task, a request/response cycle, ASGI message dicts
and an ``asyncio.Event``, and writes the response in two ``send()`` system calls (status and
headers, then the body). On a box whose cores are busy with the model, that is CPU taken from
the model on every request. Here an inference request is: the parser gathers the body, the
endpoint decodes it and queues it on the batcher (:meth:`InferenceEndpoint.begin`), and the
batcher future's done-callback encodes the answer and writes it in one system call.

Everything else is uvicorn's, unchanged: connection handling, keep-alive and its timeout,
graceful shutdown, malformed HTTP (400) and every other route. An inference request that the
fast path does not take (``Expect: 100-continue``, a request pipelined behind one still in
flight, a concurrency limit) goes down uvicorn's ASGI path to the same endpoint; the two give
byte-identical bodies and the same headers.

It relies on :class:`uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`'s per-request
attributes (``cycle``, ``url``, ``headers``, ``pipeline``); ``tests/serve`` exercise both paths
over real sockets, so a uvicorn release that changes them fails there first.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from edgeshift.errors import ProtocolError
from edgeshift.serve.connections import ConnectionSettings
from edgeshift.serve.endpoint import (
    INFER_PATH,
    Answer,
    InferCall,
    InferenceEndpoint,
    log_access,
    too_large,
)
from edgeshift.serve.memory import release_after_request
from edgeshift.serve.protocol import EncodedResponse, error_body
from edgeshift.serve.security import RequestGuard

log = logging.getLogger("edgeshift.serve")


class _InferCycle:
    """Stands in for uvicorn's ``RequestResponseCycle`` while an inference request is parsed
    and answered: the base protocol reads and sets these attributes (``response_complete``,
    ``keep_alive``, ``disconnected``, ``message_event.set()``) on close, shutdown and
    pipelining."""

    __slots__ = (
        "body",
        "call",
        "disconnected",
        "header_length",
        "keep_alive",
        "more_body",
        "name",
        "path",
        "response_complete",
        "size",
        "started_s",
        "version",
    )

    def __init__(self, name: str, version: str | None, path: str, keep_alive: bool) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.keep_alive = keep_alive
        self.started_s = time.perf_counter()
        self.body: list[bytes] = []
        self.size = 0
        self.header_length: bytes | None = None
        self.call: InferCall | None = None
        self.response_complete = False
        self.disconnected = False
        self.more_body = True

    @property
    def message_event(self) -> _InferCycle:
        return self  # the base protocol wakes the ASGI reader with message_event.set()

    def set(self) -> None:
        pass


def inference_protocol(
    endpoint: InferenceEndpoint,
    access_log: bool,
    guard: RequestGuard | None = None,
    connections: ConnectionSettings | None = None,
    max_connections: int | None = None,
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ENDPOINT answering ``POST .../infer`` directly; pass it
    as ``uvicorn.Config(http=...)``. GUARD's checks run on every request's head; CONNECTIONS'
    header limit applies here, its timeouts when :func:`sweep_timeouts` calls
    ``check_timeouts``; beyond MAX_CONNECTIONS a new connection takes an idle one's place, or
    gets 503."""
    limit = endpoint.max_body_bytes
    routes: dict[bytes, tuple[str, str | None, str] | tuple[()]] = {}  # URL -> infer route, or ()
    paths: dict[bytes, str] = {}  # URL -> decoded path, for the guard
    conn = connections or ConnectionSettings()
    max_header_bytes = conn.max_header_bytes
    header_timeout_s, body_timeout_s = conn.header_timeout_s, conn.body_timeout_s

    class InferenceProtocol(HttpToolsProtocol):
        phase = _HEAD
        phase_since_s = 0.0
        head_bytes = 0
        refused = False  # over the connection limit: answered 503 and closing
        # Set on the class by InferenceServer.drain_connections: every answer from then on
        # carries ``connection: close`` and its connection closes after it.
        draining = False
        lingering = False  # answered mid-request: reading and dropping until closed

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.phase_since_s = self.loop.time()
            full = max_connections is not None and len(self.connections) >= max_connections
            if full and not self._evict_idle():
                self.refused = True
                self.transport = transport  # type: ignore[assignment]
                self._write_error(ProtocolError(_BUSY, 503))
                transport.close()
                return
            super().connection_made(transport)  # type: ignore[arg-type]

        def _evict_idle(self) -> bool:
            """Close the longest-idle connection (between requests, or nothing sent yet)."""
            oldest: InferenceProtocol | None = None
            for other in self.connections:
                if (
                    isinstance(other, InferenceProtocol)
                    and (other.phase == _IDLE or (other.phase == _HEAD and other.head_bytes == 0))
                    and (oldest is None or other.phase_since_s < oldest.phase_since_s)
                ):
                    oldest = other
            if oldest is None:
                return False
            oldest.transport.close()
            self.connections.discard(oldest)  # connection_lost comes on a later loop pass
            return True

        def data_received(self, data: bytes) -> None:
            if self.refused:
                return
            if self.lingering:
                self.head_bytes += len(data)
                if self.head_bytes > max_header_bytes + _DRAIN_BYTES:
                    self.transport.close()
                return
            if self.phase > _BODY:  # the first bytes of the next request
                self.phase, self.phase_since_s, self.head_bytes = _HEAD, self.loop.time(), 0
            if self.phase == _HEAD:
                self.head_bytes += len(data)
            super().data_received(data)
            # Cut off a huge head at the limit plus one read, never after reading it whole.
            over = self.phase == _HEAD and self.head_bytes > max_header_bytes
            if over and not (self.lingering or self.transport.is_closing()):
                self._refuse_head(ProtocolError(_head_too_large(max_header_bytes), 431))

        def on_headers_complete(self) -> None:
            self.phase, self.phase_since_s = _BODY, self.loop.time()
            # A head that came whole in one read; head_bytes also counts any body after it.
            if self.head_bytes > max_header_bytes and (
                len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > max_header_bytes
            ):
                self._refuse_head(ProtocolError(_head_too_large(max_header_bytes), 431))
                return
            if guard is not None:
                path = paths.get(self.url)
                if path is None:
                    path = httptools.parse_url(self.url).path.decode("ascii", "replace")
                    if "%" in path:
                        path = urllib.parse.unquote(path)
                    if len(paths) >= 1024:  # clients may send any URL: keep the cache bounded
                        paths.clear()
                    paths[self.url] = path
                refusal = guard.check(path, self.headers)
                if refusal is not None:
                    self._refuse_head(refusal)
                    return
            cycle = self._infer_cycle()
            if cycle is None:
                super().on_headers_complete()
                if self.draining and self.cycle is not None:
                    self.cycle.keep_alive = False
                return
            self.cycle = cycle  # type: ignore[assignment]
            for name, value in self.headers:
                if name == b"inference-header-content-length":
                    cycle.header_length = value
                # httptools has already refused a Content-Length that is not digits (400).
                elif name == b"content-length" and int(value) > limit:
                    self._refuse(cycle, ProtocolError(too_large(limit), 413))
                    return

        def _refuse_head(self, error: ProtocolError) -> None:
            """Answer ERROR from the request head alone, then close once the body (if any)
            has been read: a client still sending gets the answer, not a reset."""
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                self.transport.close()  # an earlier request is still being answered
                return
            refused = _InferCycle("", None, "", keep_alive=False)
            refused.response_complete = True
            self.cycle = refused  # type: ignore[assignment]
            self._write_error(error)
            if error.status == 431 or self.phase == _HEAD:
                self._linger()  # the head never ended: no body to read past

        def _write_error(self, error: ProtocolError) -> None:
            answer = Answer(error.status, error_body(str(error)), b"application/json", None)
            self.transport.write(self._response(answer, keep_alive=False))

        def send_400_response(self, msg: str) -> None:
            # uvicorn's answer to malformed HTTP is plain text; every answer here is JSON.
            self._write_error(ProtocolError(_MALFORMED, 400))
            self._linger()

        def _linger(self) -> None:
            """Close after an answer sent mid-request: send FIN after it, then drop what the
            client is still sending for a moment. Closing with unread data would send a reset
            that can destroy the answer before the client reads it."""
            self.lingering = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.loop.call_later(_LINGER_S, self.transport.close)
            else:  # TLS: no half-close
                self.transport.close()

        def check_timeouts(self, now_s: float) -> None:
            """408 and close a connection whose head is late or whose body has stalled."""
            if self.refused or self.lingering or self.transport.is_closing():
                return
            waited_s = now_s - self.phase_since_s
            if self.phase == _HEAD and waited_s > header_timeout_s:
                message = _late_head(header_timeout_s)
            elif self.phase == _BODY and waited_s > body_timeout_s:
                message = _stalled_body(body_timeout_s)
            else:
                return
            cycle = self.cycle
            answering = cycle is not None and (
                cycle.response_complete if type(cycle) is _InferCycle else cycle.response_started
            )
            if cycle is None or not answering:
                self._write_error(ProtocolError(message, 408))
            self.transport.close()

        def shutdown(self) -> None:
            # A request still arriving is not in flight: close it now instead of letting a
            # slow uploader hold the whole grace period.
            if self.phase <= _BODY or self.lingering:
                self.transport.close()
                return
            super().shutdown()

        def _infer_cycle(self) -> _InferCycle | None:
            """A cycle when this request is an inference the fast path can take, else None."""
            parser = self.parser
            if (
                parser.get_method() != b"POST"
                or self.expect_100_continue
                or (self.cycle is not None and not self.cycle.response_complete)
                or self.limit_concurrency is not None
                or parser.should_upgrade()
            ):
                return None
            route = routes.get(self.url)
            if route is None:
                path = httptools.parse_url(self.url).path.decode("ascii")
                if "%" in path:
                    path = urllib.parse.unquote(path)
                match = INFER_PATH.match(path)
                route = (match["name"], match["version"], path) if match else ()
                if len(routes) >= 1024:  # clients may send any URL: keep the cache bounded
                    routes.clear()
                routes[self.url] = route
            if not route:
                return None
            keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
            return _InferCycle(*route, keep_alive and not self.draining)

        def on_body(self, body: bytes) -> None:
            self.phase_since_s = self.loop.time()
            cycle = self.cycle
            if type(cycle) is not _InferCycle:
                super().on_body(body)
                return
            cycle.size += len(body)
            if cycle.response_complete:
                if cycle.size > limit + _DRAIN_BYTES:  # refused: drop the rest, not without end
                    self.transport.close()
                return
            if cycle.size > limit:  # chunked, or a Content-Length that lied
                self._refuse(cycle, ProtocolError(too_large(limit), 413))
                return
            cycle.body.append(body)

        def on_message_complete(self) -> None:
            self.phase = _ANSWERING
            cycle = self.cycle
            if type(cycle) is not _InferCycle:
                super().on_message_complete()
                return
            cycle.more_body = False
            if cycle.response_complete:  # refused early: the rest of the body has been read
                if not cycle.keep_alive:
                    self.transport.close()
                return
            body = cycle.body[0] if len(cycle.body) == 1 else b"".join(cycle.body)
            cycle.body = []
            call = endpoint.begin(
                cycle.name, cycle.version, cycle.header_length, body, cycle.started_s
            )
            cycle.call = call
            if call.future is None:
                self._answer(cycle)
            else:
                call.future.add_done_callback(lambda _: self._settle(cycle))

        def _settle(self, cycle: _InferCycle) -> None:
            """Answer now, or once a large JSON answer is encoded off the event loop."""
            assert cycle.call is not None
            try:
                encoding = endpoint.encode_off_loop(cycle.call)
            except Exception:  # a bug: _answer's finish logs it and answers 500
                encoding = None
            if encoding is None:
                self._answer(cycle)
            else:
                encoding.add_done_callback(lambda done: self._answer(cycle, done.result()))

        def on_response_complete(self) -> None:
            if self.phase == _ANSWERING:
                self.phase, self.phase_since_s = _IDLE, self.loop.time()
            super().on_response_complete()

        def _refuse(self, cycle: _InferCycle, error: ProtocolError) -> None:
            """Answer before the body is read, and close: the rest of it is not wanted."""
            cycle.call = endpoint.failed(error, cycle.started_s, cycle.name, cycle.version)
            cycle.keep_alive = False
            self._answer(cycle)

        def _answer(
            self, cycle: _InferCycle, encoded: EncodedResponse | Exception | None = None
        ) -> None:
            assert cycle.call is not None
            cycle.response_complete = True
            try:
                answer = endpoint.finish(cycle.call, encoded)
                if not (cycle.disconnected or self.transport.is_closing()):
                    self.transport.write(self._response(answer, cycle.keep_alive))
            except Exception:  # a bug, not a bad request: never leave the client waiting
                log.exception("answering %s failed", cycle.path)
                self.transport.close()
                return
            release_after_request(cycle.size)  # a large body's buffers back to the OS, later
            if access_log:
                log_access("POST", cycle.path, answer.status, cycle.started_s, self.client)
            # Refused before the whole body came: read (and drop) the rest before closing, or
            # the client, still sending, gets a reset instead of the answer; the body timeout
            # closes one that stops sending.
            if not cycle.keep_alive and not cycle.more_body:
                self.transport.close()
            self.on_response_complete()  # keep-alive timer, the next pipelined request

        def _response(self, answer: Answer, keep_alive: bool) -> bytes:
            parts: list[Any] = [STATUS_LINE[answer.status]]
            # date (and server), then the same headers the ASGI front end sends
            for name, value in (*self.server_state.default_headers, *answer.asgi_headers()):
                parts += (name, b": ", value, b"\r\n")
            if not keep_alive:
                parts.append(b"connection: close\r\n")
            parts += (b"\r\n", answer.body)
            return b"".join(parts)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.refused:
                return
            cycle = self.cycle
            super().connection_lost(exc)
            if type(cycle) is _InferCycle and not cycle.response_complete:
                future = cycle.call.future if cycle.call is not None else None
                if future is not None:
                    future.cancel()  # the batcher drops it unless its batch already runs

    return InferenceProtocol


# A connection's phase: what the timeouts watch, what shutdown closes at once (<= _BODY), and
# which connections may make room for a new one.
_HEAD, _BODY, _ANSWERING, _IDLE = 0, 1, 2, 3
# Of a refused body, read and dropped before closing: a client still sending then reads the
# answer instead of a reset; beyond it, the connection is closed.
_DRAIN_BYTES = 8 << 20
_LINGER_S = 2.0
_BUSY = "the server is at its connection limit — retry shortly, or raise --max-connections"
_MALFORMED = "malformed HTTP request — send HTTP/1.1 with a valid request line and headers"


def _head_too_large(limit_bytes: int) -> str:
    return (
        f"request line and headers are over the {limit_bytes // 1024} KiB limit — send "
        "fewer or shorter headers, or start the server with a larger --max-header-kb"
    )


def _late_head(timeout_s: float) -> str:
    return (
        f"request head not received within {timeout_s:g} s — send the whole request line and"
        " headers at once, or raise --header-timeout-s"
    )


def _stalled_body(timeout_s: float) -> str:
    return (
        f"request body stalled for over {timeout_s:g} s — keep sending, or raise --body-timeout-s"
    )
