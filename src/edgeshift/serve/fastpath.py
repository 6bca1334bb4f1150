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

import logging
import time
import urllib.parse
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from edgeshift.errors import ProtocolError
from edgeshift.serve.endpoint import (
    INFER_PATH,
    Answer,
    InferCall,
    InferenceEndpoint,
    log_access,
    too_large,
)

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


def inference_protocol(endpoint: InferenceEndpoint, access_log: bool) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ENDPOINT answering ``POST .../infer`` directly; pass it
    as ``uvicorn.Config(http=...)``."""
    limit = endpoint.max_body_bytes
    routes: dict[bytes, tuple[str, str | None, str] | tuple[()]] = {}  # URL -> infer route, or ()

    class InferenceProtocol(HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            cycle = self._infer_cycle()
            if cycle is None:
                super().on_headers_complete()
                return
            self.cycle = cycle  # type: ignore[assignment]
            for name, value in self.headers:
                if name == b"inference-header-content-length":
                    cycle.header_length = value
                # httptools has already refused a Content-Length that is not digits (400).
                elif name == b"content-length" and int(value) > limit:
                    self._refuse(cycle, ProtocolError(too_large(limit), 413))
                    return

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
            return _InferCycle(*route, keep_alive)

        def on_body(self, body: bytes) -> None:
            cycle = self.cycle
            if type(cycle) is not _InferCycle:
                super().on_body(body)
                return
            if cycle.response_complete:
                return
            cycle.size += len(body)
            if cycle.size > limit:  # chunked, or a Content-Length that lied
                self._refuse(cycle, ProtocolError(too_large(limit), 413))
                return
            cycle.body.append(body)

        def on_message_complete(self) -> None:
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
                call.future.add_done_callback(lambda _: self._answer(cycle))

        def _refuse(self, cycle: _InferCycle, error: ProtocolError) -> None:
            """Answer before the body is read, and close: the rest of it is not wanted."""
            cycle.call = endpoint.failed(error, cycle.started_s, cycle.name, cycle.version)
            cycle.keep_alive = False
            self._answer(cycle)

        def _answer(self, cycle: _InferCycle) -> None:
            assert cycle.call is not None
            cycle.response_complete = True
            try:
                answer = endpoint.finish(cycle.call)
                if not (cycle.disconnected or self.transport.is_closing()):
                    self.transport.write(self._response(answer, cycle.keep_alive))
            except Exception:  # a bug, not a bad request: never leave the client waiting
                log.exception("answering %s failed", cycle.path)
                self.transport.close()
                return
            if access_log:
                log_access("POST", cycle.path, answer.status, cycle.started_s, self.client)
            # Refused before the whole body came: read (and drop) the rest before closing, or
            # the client, still sending, gets a reset instead of the answer; the keep-alive
            # timeout closes one that stops sending.
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
            cycle = self.cycle
            super().connection_lost(exc)
            if type(cycle) is _InferCycle and not cycle.response_complete:
                future = cycle.call.future if cycle.call is not None else None
                if future is not None:
                    future.cancel()  # the batcher drops it unless its batch already runs

    return InferenceProtocol
