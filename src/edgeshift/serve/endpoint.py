"""``POST /v2/models/NAME[/versions/V]/infer``: the one hot route, in two halves that do not
await anything, so two front ends can share them.

- :meth:`InferenceEndpoint.begin` decodes a whole request body and queues it on the model's
  batcher; :meth:`InferenceEndpoint.finish` turns the outcome into the status, body and headers
  of the answer, and counts it in the metrics.
- The fast front end (:mod:`edgeshift.serve.fastpath`) calls them straight from uvicorn's HTTP
  parser callbacks and the batcher future's callback: no task, no ASGI messages.
- The ASGI front end (:meth:`InferenceEndpoint.__call__`) sits in front of the Starlette app
  for the requests the fast path leaves to uvicorn (pipelined, ``Expect: 100-continue``) and
  skips the framework's per-request objects; every other path goes to Starlette.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from starlette.types import ASGIApp, Receive, Scope, Send

from edgeshift.errors import EdgeshiftError, ProtocolError
from edgeshift.serve.limits import RequestLimits
from edgeshift.serve.metrics import ServerMetrics
from edgeshift.serve.protocol import (
    EncodedResponse,
    InferRequest,
    decode_infer_request,
    encode_infer_response,
    error_body,
    json_output_bytes,
    parse_header_length,
)
from edgeshift.serve.repository import ModelRepository, ServedModel

log = logging.getLogger("edgeshift.serve")
access_log = logging.getLogger("edgeshift.serve.access")

INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
UNKNOWN_MODEL = "_unknown"  # metrics label for names not served: keeps label cardinality bounded
_JSON = b"application/json"
CLIENT_CLOSED = 499  # metrics status of a request whose client went away before its answer
# JSON outputs over this many array bytes are encoded in a worker thread (about 1 ms of encoding
# on the event loop: 64 KiB of FP32 is ~300 KB of JSON); smaller answers are cheaper in place.
JSON_ENCODE_OFFLOAD_BYTES = 64 << 10


def log_access(
    method: str, path: str, status: int, started_s: float, client: tuple[str, int] | None
) -> None:
    """One JSON line on the ``edgeshift.serve.access`` logger."""
    access_log.info(
        json.dumps(
            {
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round((time.perf_counter() - started_s) * 1000, 3),
                "client": f"{client[0]}:{client[1]}" if client else None,
            },
            separators=(",", ":"),
        )
    )


def too_large(limit_bytes: int) -> str:
    return (
        f"request body is over the {limit_bytes / (1 << 20):g} MiB limit — send smaller "
        "batches or start the server with a larger --max-body-mb"
    )


async def read_asgi_body(scope: Scope, receive: Receive, limit_bytes: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed the limit."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise ProtocolError(f"bad Content-Length {value!r}") from None
            if declared > limit_bytes:
                raise ProtocolError(too_large(limit_bytes), 413)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProtocolError("client disconnected before the body was read", 400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise ProtocolError(too_large(limit_bytes), 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Answer(NamedTuple):
    status: int
    body: bytes
    content_type: bytes
    header_length: int | None  # Inference-Header-Content-Length, when binary tensors follow

    def asgi_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"content-type", self.content_type),
            (b"content-length", str(len(self.body)).encode()),
        ]
        if self.header_length is not None:
            headers.append((b"inference-header-content-length", str(self.header_length).encode()))
        return headers


@dataclass(slots=True)
class InferCall:
    """One inference request between :meth:`InferenceEndpoint.begin` and ``finish``."""

    started_s: float
    label: str = UNKNOWN_MODEL
    version: str = ""  # set once the model is known: the request counts as in flight
    model: ServedModel | None = None
    request: InferRequest | None = None
    future: asyncio.Future[dict[str, np.ndarray]] | None = None
    error: BaseException | None = None  # failed before it was queued


def _copy_outcome(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (exc := source.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())


class InferenceEndpoint:
    """Serves inference requests itself and hands every other request to ``fallback``."""

    def __init__(
        self,
        fallback: ASGIApp,
        repository: ModelRepository,
        metrics: ServerMetrics,
        max_body_bytes: int,
        limits: RequestLimits | None = None,
    ) -> None:
        self.fallback = fallback
        self.repository = repository
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.limits = limits or RequestLimits(max_body_bytes=max_body_bytes)
        self._decoder: concurrent.futures.ThreadPoolExecutor | None = None
        self._encoder: concurrent.futures.ThreadPoolExecutor | None = None

    def begin(
        self,
        name: str,
        version: str | None,
        header_length: bytes | None,
        body: bytes,
        started_s: float,
    ) -> InferCall:
        """Decode BODY and queue it on the model; never raises (errors wait in the call)."""
        call = InferCall(started_s)
        try:
            model = self.repository.get(name, version)
            call.label, call.version, call.model = model.name, model.version, model
            self.metrics.request_started(model.name)
            hlen = parse_header_length(header_length)
            if (len(body) if hlen is None else hlen) > self.limits.json_offload_bytes:
                call.future = self._decode_off_loop(call, model, body, hlen)
            else:
                call.request = decode_infer_request(body, hlen, self.limits)
                call.future = model.enqueue(call.request)
        except Exception as exc:
            call.error = exc
        return call

    def _decode_off_loop(
        self, call: InferCall, model: ServedModel, body: bytes, hlen: int | None
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """A large JSON header decodes in a worker thread, so the event loop keeps serving
        other clients meanwhile; the future resolves after decode, enqueue and inference."""
        loop = asyncio.get_running_loop()
        outer: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        if self._decoder is None:
            # Two workers: each large decode holds several times its body in memory.
            self._decoder = concurrent.futures.ThreadPoolExecutor(2, "edgeshift-decode")
        decoding = loop.run_in_executor(
            self._decoder, decode_infer_request, body, hlen, self.limits
        )

        def decoded(done: asyncio.Future[InferRequest]) -> None:
            if outer.done():  # cancelled: the client went away while it decoded
                return
            try:
                call.request = done.result()
                inner = model.enqueue(call.request)
            except Exception as exc:
                outer.set_exception(exc)
                return
            outer.add_done_callback(lambda _: inner.cancel() if outer.cancelled() else None)
            inner.add_done_callback(lambda _: _copy_outcome(inner, outer))

        decoding.add_done_callback(decoded)
        return outer

    def encode_off_loop(
        self, call: InferCall
    ) -> asyncio.Future[EncodedResponse | Exception] | None:
        """CALL's answer body being encoded in a worker thread, when it is large JSON (its
        future is done); None: :meth:`finish` encodes it in place. Pass the outcome to
        ``finish``. Encoding 16 M FP32 values as JSON takes seconds: on the event loop, every
        other client would wait for it."""
        future, request, model = call.future, call.request, call.model
        if (
            future is None
            or request is None
            or model is None
            or future.cancelled()
            or future.exception() is not None
        ):
            return None
        try:
            outputs = model.select(request, future.result())
        except Exception:
            return None  # finish gives the error
        if json_output_bytes(outputs, request) <= JSON_ENCODE_OFFLOAD_BYTES:
            return None
        if self._encoder is None:
            self._encoder = concurrent.futures.ThreadPoolExecutor(2, "edgeshift-encode")
        return asyncio.get_running_loop().run_in_executor(
            self._encoder, _encode_or_error, model.name, model.version, outputs, request
        )

    def failed(
        self, error: ProtocolError, started_s: float, name: str, version: str | None
    ) -> InferCall:
        """A request refused before its body was whole (too large, client gone): counted
        under its model's name when that model is loaded (never as in flight)."""
        call = InferCall(started_s, error=error)
        # Unknown or unloaded: it stays UNKNOWN_MODEL, so the label set stays bounded.
        with contextlib.suppress(ProtocolError):
            call.label = self.repository.get(name, version).name
        return call

    def finish(self, call: InferCall, encoded: EncodedResponse | Exception | None = None) -> Answer:
        """The answer to CALL once its future is done (or it failed early); counts it.
        ENCODED: the outcome of :meth:`encode_off_loop`, if it gave one."""
        status = 500
        try:
            if call.error is not None:
                raise call.error
            assert call.model is not None and call.future is not None
            if call.future.cancelled():
                status = CLIENT_CLOSED
                return Answer(status, b"", _JSON, None)
            result = call.future.result()  # decode errors of an off-loop decode raise here
            assert call.request is not None
            if isinstance(encoded, Exception):
                raise encoded
            if encoded is None:
                outputs = call.model.select(call.request, result)
                encoded = encode_infer_response(
                    call.model.name, call.model.version, outputs, call.request
                )
            status = 200
            return Answer(200, encoded.body, encoded.content_type.encode(), encoded.header_length)
        except ProtocolError as exc:
            status = exc.status
            return Answer(status, error_body(str(exc)), _JSON, None)
        except EdgeshiftError as exc:  # DataError from the runtime: the request was bad
            status = 400
            return Answer(status, error_body(str(exc)), _JSON, None)
        except Exception as exc:
            log.exception("inference on %s failed", call.label)
            # The log has the details; the client gets nothing that could hold a path.
            message = f"internal error ({type(exc).__name__}) — see the server log"
            return Answer(500, error_body(message), _JSON, None)
        finally:
            latency_s = time.perf_counter() - call.started_s
            if call.version:
                self.metrics.request_finished(call.label, call.version, status, latency_s)
            else:  # unknown model or version: never counted as started
                self.metrics.observe_request(call.label, call.version, status, latency_s)
            # Answered: drop the request and its outputs. The fast path's cycle keeps the call
            # until the connection's next request, and with them a body up to the limit.
            call.request = None
            call.future = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.match(scope["path"])
            if match is not None:
                answer = await self._infer(match["name"], match["version"], scope, receive)
                await send(
                    {
                        "type": "http.response.start",
                        "status": answer.status,
                        "headers": answer.asgi_headers(),
                    }
                )
                await send({"type": "http.response.body", "body": answer.body})
                return
        await self.fallback(scope, receive, send)

    async def _infer(
        self, name: str, version: str | None, scope: Scope, receive: Receive
    ) -> Answer:
        started_s = time.perf_counter()
        header_length = None
        for key, value in scope["headers"]:
            if key == b"inference-header-content-length":
                header_length = value
        try:
            body = await read_asgi_body(scope, receive, self.max_body_bytes)
        except ProtocolError as exc:
            return self.finish(self.failed(exc, started_s, name, version))
        call = self.begin(name, version, header_length, body, started_s)
        if call.future is not None:
            await asyncio.wait([call.future])
        encoding = self.encode_off_loop(call)
        return self.finish(call, None if encoding is None else await encoding)


def _encode_or_error(
    name: str, version: str, outputs: dict[str, np.ndarray], request: InferRequest
) -> EncodedResponse | Exception:
    try:
        return encode_infer_response(name, version, outputs, request)
    except Exception as exc:  # finish maps it to its answer, on the event loop
        return exc
