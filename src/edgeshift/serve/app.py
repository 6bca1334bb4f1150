"""The HTTP routes of the Open Inference Protocol v2 (KServe) REST API, plus Triton's model
repository extension and Prometheus ``/metrics``. Thin: each route decodes, calls the
repository or a model, and encodes; every error is ``{"error": "..."}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import edgeshift
from edgeshift.errors import EdgeshiftError, ProtocolError
from edgeshift.serve import triton
from edgeshift.serve.endpoint import InferenceEndpoint, log_access, read_asgi_body
from edgeshift.serve.limits import RequestLimits
from edgeshift.serve.memory import release_after_request
from edgeshift.serve.metrics import ServerMetrics
from edgeshift.serve.protocol import error_body, loads_json
from edgeshift.serve.repository import ModelRepository, ServeOptions
from edgeshift.serve.security import RequestGuard

log = logging.getLogger("edgeshift.serve")

DEFAULT_MAX_BODY_BYTES = 64 << 20
EXTENSIONS = [
    "binary_tensor_data",
    "model_repository",
    "metrics",
    "model_configuration",
    "statistics",
]


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status, media_type="application/json")


def _error(message: str, status: int) -> Response:
    return Response(error_body(message), status, media_type="application/json")


async def read_body(request: Request, limit_bytes: int) -> bytes:
    return await read_asgi_body(request.scope, request.receive, limit_bytes)


class _Routes:
    def __init__(
        self,
        repository: ModelRepository,
        metrics: ServerMetrics,
        max_body_bytes: int,
        options: ServeOptions,
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.options = options
        self.ready = True

    async def server_metadata(self, request: Request) -> Response:
        return _json(
            {"name": "edgeshift", "version": edgeshift.__version__, "extensions": EXTENSIONS}
        )

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def server_ready(self, request: Request) -> Response:
        if not self.ready:
            return _error("server is shutting down", 503)
        return _json({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        name = request.path_params["name"]
        model = self.repository.get(name, request.path_params.get("version"))
        return _json(model.metadata(self.repository.versions(name)))

    async def model_ready(self, request: Request) -> Response:
        model = self.repository.get(request.path_params["name"], request.path_params.get("version"))
        return _json({"name": model.name, "version": model.version, "ready": True})

    async def model_config(self, request: Request) -> Response:
        model = self.repository.get(request.path_params["name"], request.path_params.get("version"))
        return _json(triton.model_config(model, self.options))

    async def model_stats(self, request: Request) -> Response:
        params = request.path_params
        return _json(
            triton.model_statistics(self.repository, params.get("name"), params.get("version"))
        )

    async def repository_index(self, request: Request) -> Response:
        body = await read_body(request, self.max_body_bytes)
        ready_only = False
        if body.strip():
            params = loads_json(body, 'repository index body (e.g. {"ready": true})')
            if not isinstance(params, dict) or not isinstance(params.get("ready", False), bool):
                raise ProtocolError(
                    'repository index body must be a JSON object like {"ready": true}'
                )
            ready_only = params.get("ready", False)
        return _json(self.repository.index(ready_only))

    async def load(self, request: Request) -> Response:
        await read_body(request, self.max_body_bytes)  # parameters (config/files) are not supported
        await self.repository.load(request.path_params["name"])
        return _json({})

    async def unload(self, request: Request) -> Response:
        await read_body(request, self.max_body_bytes)
        await self.repository.unload(request.path_params["name"])
        return _json({})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)


async def _protocol_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProtocolError)
    return _error(str(exc), exc.status)


async def _edgeshift_error(request: Request, exc: Exception) -> Response:
    return _error(str(exc), 400)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if exc.status_code != 404 else f"no route {request.url.path} — see /v2"
    return _error(str(message), exc.status_code)


class GuardMiddleware:
    """Host, Origin and token checks (:class:`RequestGuard`) for requests that reach the app
    without the fast path's protocol (which runs the same checks on the request head)."""

    def __init__(self, app: ASGIApp, guard: RequestGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.guard.check(scope["path"], scope["headers"])
            if refusal is not None:
                body = error_body(str(refusal))
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send(
                    {"type": "http.response.start", "status": refusal.status, "headers": headers}
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class ReleaseMemoryMiddleware:
    """After a large request is answered, let the C heap return its freed buffers to the OS
    (:func:`release_after_request`, off the event loop); the fast path does the same."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_bytes = [0]

        async def counting_receive() -> Message:
            message = await receive()
            body_bytes[0] += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            release_after_request(body_bytes[0])


class AccessLogMiddleware:
    """One JSON line per request on the ``edgeshift.serve.access`` logger."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_s = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            log_access(scope["method"], scope["path"], status[0], started_s, scope.get("client"))


def create_app(
    repository: ModelRepository,
    metrics: ServerMetrics,
    *,
    max_body_bytes: int | None = None,
    limits: RequestLimits | None = None,
    guard: RequestGuard | None = None,
    options: ServeOptions | None = None,
    access_log_enabled: bool = True,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> tuple[ASGIApp, InferenceEndpoint]:
    """The ASGI app serving REPOSITORY's models (loaded beforehand by the caller), and its
    inference endpoint for the HTTP fast path (:mod:`edgeshift.serve.fastpath`).

    LIMITS bound each request (MAX_BODY_BYTES, when given, overrides its body limit); GUARD's
    Host, Origin and token checks run on every request (None: no checks, for a caller that
    runs them in front, as the fast path's protocol does)."""
    limits = limits or RequestLimits()
    if max_body_bytes is not None:
        limits = dataclasses.replace(limits, max_body_bytes=max_body_bytes)
    r = _Routes(repository, metrics, limits.max_body_bytes, options or ServeOptions())
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [  # POST .../infer never gets here: InferenceEndpoint answers it
        Route("/v2", r.server_metadata, methods=["GET"]),
        Route("/v2/health/live", r.live, methods=["GET"]),
        Route("/v2/health/ready", r.server_ready, methods=["GET"]),
        Route("/v2/models/stats", r.model_stats, methods=["GET"]),  # before {name} takes it
        Route(model, r.model_metadata, methods=["GET"]),
        Route(versioned, r.model_metadata, methods=["GET"]),
        Route(f"{model}/ready", r.model_ready, methods=["GET"]),
        Route(f"{versioned}/ready", r.model_ready, methods=["GET"]),
        Route(f"{model}/config", r.model_config, methods=["GET"]),
        Route(f"{versioned}/config", r.model_config, methods=["GET"]),
        Route(f"{model}/stats", r.model_stats, methods=["GET"]),
        Route(f"{versioned}/stats", r.model_stats, methods=["GET"]),
        Route("/v2/repository/index", r.repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", r.load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", r.unload, methods=["POST"]),
        Route("/metrics", r.metrics_endpoint, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # uvicorn has stopped accepting and answered in-flight requests; drain the queues.
        r.ready = False
        if on_shutdown is not None:
            await on_shutdown()

    app = Starlette(
        routes=routes,
        exception_handlers={
            ProtocolError: _protocol_error,
            EdgeshiftError: _edgeshift_error,
            HTTPException: _http_error,
        },
        lifespan=lifespan,
    )
    endpoint = InferenceEndpoint(app, repository, metrics, limits.max_body_bytes, limits)
    served: ASGIApp = ReleaseMemoryMiddleware(endpoint)
    served = served if guard is None else GuardMiddleware(served, guard)
    served = AccessLogMiddleware(served) if access_log_enabled else served
    return served, endpoint
