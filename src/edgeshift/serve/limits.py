"""What one request may ask of the server, checked from the declared shapes and sizes
before anything is allocated. Shared by the HTTP and gRPC front ends.

The checks themselves are in :mod:`edgeshift.serve.protocol` (``parse_tensor_header``,
``TensorBudget``, ``decode_infer_request``); each refusal names the flag that raises its limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeshift.errors import ConfigError

MIB = 1 << 20
KIB = 1 << 10


@dataclass(frozen=True)
class RequestLimits:
    # --max-body-mb: HTTP body / gRPC message. 64 MiB holds 16 M FP32 values in binary.
    max_body_bytes: int = 64 * MIB
    # --max-rows: first dimension of any input. The runtimes' working memory grows with rows,
    # not with body bytes (a 64 MiB body of the digits CNN is 258,048 rows and GiBs of arena).
    max_rows: int = 65536
    # --max-tensor-mb: decoded inputs of one request, all together. Twice the body limit: a
    # JSON body of small numbers ("0,") decodes to 2 bytes of FP32 per body byte, so every
    # body under the body limit as FP32 passes, and 8-byte types from JSON cannot reach 4x.
    max_tensor_bytes: int = 128 * MIB
    # --max-dims: rank of one input tensor; no served model needs more, and JSON nesting of
    # `data` is checked against it.
    max_dims: int = 16
    # --json-offload-mb: JSON bodies larger than this decode in a worker thread, so the
    # event loop keeps answering other clients; smaller ones are faster decoded in place.
    json_offload_bytes: int = 1 * MIB


@dataclass(frozen=True)
class GrpcLimits:
    """What one gRPC connection, and all of them together, may hold open: grpc's C core
    enforces each as a channel argument. Every default leaves room for tritonclient, KServe's
    client and perf_analyzer at any concurrency they are run with."""

    # Calls open at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): a client
    # that opens more waits for one to finish, in the client. grpc's own default is unbounded.
    max_streams_per_connection: int = 128
    # Calls open at once on the whole port; one more is refused at once, RESOURCE_EXHAUSTED.
    max_concurrent_calls: int = 4096
    # A call's metadata (its HTTP/2 headers); larger is refused (RESOURCE_EXHAUSTED).
    max_metadata_bytes: int = 16 * KIB
    # A connection with no call open for this long is closed (GOAWAY); the client reconnects
    # on its next call. grpc's own default is never.
    idle_timeout_s: float = 300.0
    # The server pings a connection with calls open after this long without traffic, and
    # closes it when no answer comes within keepalive_timeout_s: a client that vanished
    # (power cut, cable) does not hold its calls and buffers. grpc's default is 2 hours.
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    # A client may ping this often without sending data; closer pings are strikes, and the
    # second strike closes the connection (GOAWAY too_many_pings). grpc's default is 5 min,
    # which refuses common client keepalive settings.
    min_client_ping_interval_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_streams_per_connection", "max_concurrent_calls", "max_metadata_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"gRPC limit {name} must be >= 1, not {getattr(self, name)}")
        for name in (
            "idle_timeout_s",
            "keepalive_time_s",
            "keepalive_timeout_s",
            "min_client_ping_interval_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"gRPC limit {name} must be > 0, not {getattr(self, name)}")

    def channel_options(self) -> list[tuple[str, int]]:
        """The limits as grpc server channel arguments."""
        ms = 1000
        return [
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.max_metadata_size", self.max_metadata_bytes),
            ("grpc.absolute_max_metadata_size", self.max_metadata_bytes),
            ("grpc.max_connection_idle_ms", round(self.idle_timeout_s * ms)),
            ("grpc.keepalive_time_ms", round(self.keepalive_time_s * ms)),
            ("grpc.keepalive_timeout_ms", round(self.keepalive_timeout_s * ms)),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                round(self.min_client_ping_interval_s * ms),
            ),
            ("grpc.http2.max_ping_strikes", 2),
        ]
