"""The Open Inference Protocol v2 gRPC service (``inference.GRPCInferenceService``: KServe's
``grpc_predict_v2.proto`` and Triton's superset of it), on the server's own event loop, so it
shares the repository, the batchers, the metrics and the statistics with HTTP.

Handlers are registered generically rather than through the generated servicer: a request
that is not a valid protobuf message must be INVALID_ARGUMENT, and grpcio answers a
deserializer's exception with INTERNAL. Errors are the HTTP ones (same one-line messages),
their status mapped to a gRPC code (``grpc_codec.STATUS_CODES``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

import edgeshift
from edgeshift.errors import ConfigError, EdgeshiftError, ProtocolError
from edgeshift.serve.endpoint import CLIENT_CLOSED, UNKNOWN_MODEL
from edgeshift.serve.grpc_codec import (
    decode_model_infer,
    encode_model_infer,
    status_code,
)
from edgeshift.serve.limits import GrpcLimits as GrpcLimits  # re-exported
from edgeshift.serve.limits import RequestLimits
from edgeshift.serve.memory import release_after_request
from edgeshift.serve.metrics import ServerMetrics
from edgeshift.serve.protocol import InferRequest
from edgeshift.serve.repository import ModelRepository, ServedModel
from edgeshift.serve.security import AuthSettings, TlsSettings
from edgeshift.serve.triton import model_config, model_statistics

log = logging.getLogger("edgeshift.serve")

SERVICE = "inference.GRPCInferenceService"
EXTENSIONS = ["model_repository", "model_configuration", "statistics"]
STREAM_IN_FLIGHT = 256  # requests of one ModelStreamInfer stream running at once


class _Malformed:
    """What the deserializer hands on for bytes that are not the method's message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _parser(message_type: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return _Malformed(f"request is not a valid {message_type.DESCRIPTOR.name} ({exc})")

    return parse


class _Abort(Exception):
    def __init__(self, error: ProtocolError) -> None:
        self.error = error


def _serving_error(exc: BaseException) -> ProtocolError:
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, EdgeshiftError):  # DataError from the runtime: the request was bad
        return ProtocolError(str(exc), 400)
    log.error("gRPC call failed", exc_info=exc)
    # As on HTTP: the log has the details; the client gets nothing that could hold a path.
    return ProtocolError(f"internal error ({type(exc).__name__}) — see the server log", 500)


class GrpcFrontend:
    """``inference.GRPCInferenceService`` over REPOSITORY's models: ``await start(host, port)``
    on the server's loop, ``await stop(grace_s)`` to answer in-flight calls and close."""

    def __init__(
        self,
        repository: ModelRepository,
        metrics: ServerMetrics,
        *,
        limits: RequestLimits,
        auth: AuthSettings,
        tls: TlsSettings | None = None,
        grpc_limits: GrpcLimits | None = None,
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.limits = limits
        self.grpc_limits = grpc_limits if grpc_limits is not None else GrpcLimits()
        self.auth = auth
        self.tls = tls
        self._server: grpc.aio.Server | None = None
        self._stopping = False
        # With a client CA every connection carries a verified certificate (mTLS): that
        # authenticates inference, as on HTTP.
        self._certified = tls is not None and tls.client_ca is not None
        self._check_inference_token = bool(auth.inference_tokens) and not self._certified

    # --- lifecycle ---

    async def start(self, host: str, port: int) -> int:
        """Bind HOST:PORT (0: any free port) and serve; the bound port."""
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if port and not _can_bind(host, port):
            # Checked here first: grpc's C core would also log its own line on stderr.
            raise ConfigError(
                f"cannot listen for gRPC on {address} (in use or not an address here) — "
                "pick another --grpc-port"
            )
        server = grpc.aio.server(
            handlers=[self._handlers()],
            options=[
                ("grpc.max_receive_message_length", self.limits.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a busy port must fail, not be shared
                *self.grpc_limits.channel_options(),
            ],
            maximum_concurrent_rpcs=self.grpc_limits.max_concurrent_calls,
        )
        try:
            if self.tls is None:
                bound = server.add_insecure_port(address)
            else:
                bound = server.add_secure_port(address, self._credentials(self.tls))
        except RuntimeError:
            bound = 0
        if not bound:
            await server.stop(None)
            raise ConfigError(
                f"cannot listen for gRPC on {address} (in use or not an address here) — "
                "pick another --grpc-port"
            )
        await server.start()
        self._server = server
        return bound

    @staticmethod
    def _credentials(tls: TlsSettings) -> grpc.ServerCredentials:
        try:
            cert, key, ca = tls.pem_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read a TLS file for gRPC ({exc.strerror}: {exc.filename}) — check "
                "--tls-cert, --tls-key and --tls-client-ca"
            ) from None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, answer the ones in flight (for up to GRACE_S), then close."""
        self._stopping = True
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None

    # --- plumbing ---

    def _handlers(self) -> grpc.GenericRpcHandler:
        unary: dict[str, tuple[Any, Any, Callable[[Any, Any], Awaitable[Any]], bool]] = {
            "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse, self._live, False),
            "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse, self._ready, False),
            "ServerMetadata": (pb.ServerMetadataRequest, None, self._server_metadata, True),
            "ModelReady": (pb.ModelReadyRequest, None, self._model_ready, True),
            "ModelMetadata": (pb.ModelMetadataRequest, None, self._model_metadata, True),
            "ModelConfig": (pb.ModelConfigRequest, None, self._model_config, True),
            "ModelStatistics": (pb.ModelStatisticsRequest, None, self._model_stats, True),
            "RepositoryIndex": (pb.RepositoryIndexRequest, None, self._index, False),
            "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, None, self._load, False),
            "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, None, self._unload, False),
        }
        methods: dict[str, grpc.RpcMethodHandler] = {
            name: grpc.unary_unary_rpc_method_handler(
                self._unary(fn, needs_auth),
                request_deserializer=_parser(request_type),
                response_serializer=_serialize,
            )
            for name, (request_type, _, fn, needs_auth) in unary.items()
        }
        methods["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
            self._model_infer,
            request_deserializer=_parser(pb.ModelInferRequest),
            response_serializer=_serialize,
        )
        methods["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self._stream_infer,
            request_deserializer=_parser(pb.ModelInferRequest),
            response_serializer=_serialize,
        )
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def _unary(
        self, fn: Callable[[Any, Any], Awaitable[Any]], needs_auth: bool
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if isinstance(request, _Malformed):
                    raise ProtocolError(request.reason, 400)
                if needs_auth:
                    self._authorize_inference(context)
                return await fn(request, context)
            except Exception as exc:
                error = _serving_error(exc)
            await context.abort(status_code(error.status), str(error))

        return handle

    def _authorize_inference(self, context: grpc.aio.ServicerContext) -> None:
        if self._check_inference_token and not self.auth.inference_allowed(
            _authorization(context), client_certified=self._certified
        ):
            raise ProtocolError(
                "this server needs a token — send 'authorization: Bearer <token>' metadata "
                "with a token from the server's --auth-token-file",
                401,
            )

    def _authorize_repository(self, context: grpc.aio.ServicerContext) -> None:
        refusal = self.auth.repository_refusal(
            _authorization(context), client_certified=self._certified
        )
        if refusal is not None:
            raise refusal

    # --- health and metadata ---

    async def _live(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def _ready(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self._stopping)

    async def _server_metadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="edgeshift", version=edgeshift.__version__, extensions=EXTENSIONS
        )

    async def _model_ready(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        # As Triton: a model that is not loaded is "not ready", not an error.
        try:
            self.repository.get(request.name, request.version or None)
        except ProtocolError as exc:
            if exc.status in (404, 503):
                return pb.ModelReadyResponse(ready=False)
            raise
        return pb.ModelReadyResponse(ready=True)

    async def _model_metadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        model = self.repository.get(request.name, request.version or None)
        meta = model.metadata(self.repository.versions(model.name))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def _model_config(
        self, request: pb.ModelConfigRequest, context: Any
    ) -> pb.ModelConfigResponse:
        model = self.repository.get(request.name, request.version or None)
        doc = model_config(model, self.repository.options)
        return pb.ModelConfigResponse(config=json_format.ParseDict(doc, mc.ModelConfig()))

    async def _model_stats(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        doc = model_statistics(self.repository, request.name or None, request.version or None)
        return json_format.ParseDict(doc, pb.ModelStatisticsResponse())

    # --- repository ---

    async def _index(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        self._authorize_repository(context)
        entry = pb.RepositoryIndexResponse.ModelIndex
        rows = self.repository.index(request.ready)
        return pb.RepositoryIndexResponse(models=[entry(**row) for row in rows])

    async def _load(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        self._authorize_repository(context)
        await self.repository.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def _unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        self._authorize_repository(context)
        await self.repository.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # --- inference ---

    async def _model_infer(
        self, request: pb.ModelInferRequest | _Malformed, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        try:
            self._authorize_inference(context)
        except ProtocolError as exc:
            await context.abort(status_code(exc.status), str(exc))
        call = self._begin(request)
        if call.future is not None:
            try:
                await call.future
            except asyncio.CancelledError:  # the client went away; the batcher drops it
                call.future.cancel()
                # 499 even when the answer was ready: the client never got it
                call.error = ProtocolError("the client went away before its answer", CLIENT_CLOSED)
                self._finish(call)
                raise
            except Exception:
                pass  # _finish turns it into the answer
        answer = self._finish(call)
        if isinstance(answer, ProtocolError):
            await context.abort(status_code(answer.status), str(answer))
        return answer

    async def _stream_infer(
        self,
        requests: AsyncIterator[pb.ModelInferRequest | _Malformed],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        try:
            self._authorize_inference(context)
        except ProtocolError as exc:
            await context.abort(status_code(exc.status), str(exc))
        # Requests of one stream run concurrently (they batch with each other and with
        # unary calls); answers go out as they finish, each with its request's id, as in
        # Triton. Errors travel in the stream and leave it open. Each request is answered
        # from its batcher future's callback, not from a task of its own: per message, a
        # task cost more than the rest of edgeshift's work.
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        running: set[_Call] = set()
        reading = True

        def answer(call: _Call) -> None:
            response = pb.ModelStreamInferResponse()
            result = self._finish(call, into=response.infer_response)
            if isinstance(result, ProtocolError):
                response = pb.ModelStreamInferResponse(error_message=str(result))
            answers.put_nowait(response)

        def done(call: _Call, _: object) -> None:
            running.discard(call)
            slots.release()
            answer(call)
            if not reading and not running:
                answers.put_nowait(None)

        async def read() -> None:
            nonlocal reading
            try:
                async for request in requests:
                    await slots.acquire()  # a stream cannot queue more than this at once
                    call = self._begin(request)
                    if call.future is None:
                        slots.release()
                        answer(call)
                    else:
                        running.add(call)
                        call.future.add_done_callback(functools.partial(done, call))
            finally:
                reading = False
                if not running:
                    answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
        finally:
            reader.cancel()
            for call in list(running):  # the client went away: each is counted as 499
                if call.future is not None:
                    call.future.cancel()

    def _begin(self, request: pb.ModelInferRequest | _Malformed) -> _Call:
        """Decode REQUEST and queue it on its model; never raises (errors wait in the call)."""
        call = _Call(time.perf_counter())
        try:
            if isinstance(request, _Malformed):
                raise ProtocolError(request.reason, 400)
            model = self.repository.get(request.model_name, request.model_version or None)
            call.label, call.version, call.model = model.name, model.version, model
            self.metrics.request_started(model.name)
            call.request = decode_model_infer(request, self.limits)
            call.future = model.enqueue(call.request)
        except Exception as exc:
            call.error = _serving_error(exc)
        return call

    def _finish(
        self, call: _Call, into: pb.ModelInferResponse | None = None
    ) -> pb.ModelInferResponse | ProtocolError:
        """The answer to CALL once its future is done (or it failed early), counted in the
        metrics as HTTP counts it; the response (written INTO, when given) or the error."""
        status = 500
        try:
            if call.error is not None:
                status = call.error.status
                return call.error
            assert call.model is not None and call.request is not None
            assert call.future is not None
            if call.future.cancelled():  # a stream's client went away
                status = CLIENT_CLOSED
                return ProtocolError("the client went away before its answer", CLIENT_CLOSED)
            outputs = call.model.select(call.request, call.future.result())
            response = encode_model_infer(
                call.model.name, call.model.version, outputs, call.request.id, into
            )
            status = 200
            # a large request's freed buffers go back to the OS (a no-op for small ones)
            release_after_request(sum(a.nbytes for a in call.request.inputs.values()))
            return response
        except Exception as exc:
            error = _serving_error(exc)
            status = error.status
            return error
        finally:
            latency_s = time.perf_counter() - call.started_s
            if call.version:
                self.metrics.request_finished(call.label, call.version, status, latency_s)
            else:  # unknown model or version: never counted as started
                self.metrics.observe_request(call.label, call.version, status, latency_s)
            call.request = None  # answered: the request and its outputs can go
            call.future = None


class _Call:
    """One inference between :meth:`GrpcFrontend._begin` and :meth:`GrpcFrontend._finish`."""

    __slots__ = ("error", "future", "label", "model", "request", "started_s", "version")

    def __init__(self, started_s: float) -> None:
        self.started_s = started_s
        self.label = UNKNOWN_MODEL
        self.version = ""
        self.model: ServedModel | None = None
        self.request: InferRequest | None = None
        self.future: asyncio.Future[dict[str, np.ndarray]] | None = None
        self.error: ProtocolError | None = None


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def _can_bind(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds
        try:
            probe.bind((host, port))
        except (OSError, OverflowError):
            return False
    return True


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None
