"""``POST /v2/models/NAME[/versions/V]/infer`` as a plain ASGI handler in front of the
Starlette app: the one hot route skips the framework's per-request objects and middleware
layers (measured: about half the app's CPU per request), every other path goes to Starlette.
"""

from __future__ import annotations

import logging
import re
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from edgeshift.errors import EdgeshiftError, ProtocolError
from edgeshift.serve.metrics import ServerMetrics
from edgeshift.serve.protocol import decode_infer_request, encode_infer_response, error_body
from edgeshift.serve.repository import ModelRepository

log = logging.getLogger("edgeshift.serve")

INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
UNKNOWN_MODEL = "_unknown"  # metrics label for names not served: keeps label cardinality bounded
_JSON = b"application/json"


def too_large(limit_bytes: int) -> str:
    return (
        f"request body is over the {limit_bytes / (1 << 20):g} MiB limit — send smaller "
        "batches or start the server with a larger --max-body-mb"
    )


def parse_header_length(value: bytes | str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        raise ProtocolError(f"Inference-Header-Content-Length {text!r} is not an integer") from None


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


class InferenceEndpoint:
    """Serves inference requests itself and hands every other request to ``fallback``."""

    def __init__(
        self,
        fallback: ASGIApp,
        repository: ModelRepository,
        metrics: ServerMetrics,
        max_body_bytes: int,
    ) -> None:
        self.fallback = fallback
        self.repository = repository
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.match(scope["path"])
            if match is not None:
                status, body, headers = await self._infer(
                    match["name"], match["version"], scope, receive
                )
                headers.append((b"content-length", str(len(body)).encode()))
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.fallback(scope, receive, send)

    async def _infer(
        self, name: str, version: str | None, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        started_s = time.perf_counter()
        label, served_version, status = UNKNOWN_MODEL, "", 500
        try:
            model = self.repository.get(name, version)
            label, served_version = model.name, model.version
            self.metrics.request_started(label)
            header_length = None
            for key, value in scope["headers"]:
                if key == b"inference-header-content-length":
                    header_length = parse_header_length(value)
            body = await read_asgi_body(scope, receive, self.max_body_bytes)
            request = decode_infer_request(body, header_length)
            outputs = await model.infer(request)
            encoded = encode_infer_response(model.name, model.version, outputs, request)
            headers = [(b"content-type", encoded.content_type.encode())]
            if encoded.header_length is not None:
                headers.append(
                    (b"inference-header-content-length", str(encoded.header_length).encode())
                )
            status = 200
            return 200, encoded.body, headers
        except ProtocolError as exc:
            status = exc.status
            return status, error_body(str(exc)), [(b"content-type", _JSON)]
        except EdgeshiftError as exc:  # DataError from the runtime: the request was bad
            status = 400
            return status, error_body(str(exc)), [(b"content-type", _JSON)]
        except Exception as exc:
            log.exception("inference on %s failed", name)
            message = f"internal error: {type(exc).__name__}: {exc}"
            return 500, error_body(message), [(b"content-type", _JSON)]
        finally:
            latency_s = time.perf_counter() - started_s
            if served_version:
                self.metrics.request_finished(label, served_version, status, latency_s)
            else:  # unknown model or version: never counted as started
                self.metrics.observe_request(label, served_version, status, latency_s)
