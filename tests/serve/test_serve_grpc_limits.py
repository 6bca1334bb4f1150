"""The gRPC port's limits on what a client sizes (serve.limits.GrpcLimits): calls open on one
connection and on the whole port, metadata size, idle connections; and their validation.
One server with small limits; each test opens its own connections (a local subchannel pool,
so two channels are two TCP connections)."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import pytest
from serve_models import save_mlp, wait_until
from tritonclient.grpc import service_pb2 as pb

from edgeshift.errors import ConfigError
from edgeshift.serve import ServerSettings, ServerThread
from edgeshift.serve.limits import GrpcLimits

LIVE = "/inference.GRPCInferenceService/ServerLive"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
LIMITS = {
    "max_streams_per_connection": 2,
    "max_concurrent_calls": 3,
    "max_metadata_bytes": 4096,
    "idle_timeout_s": 0.5,
}
# A stream message the server answers at once (an error travels in the stream, which stays
# open): proof that the server holds the stream as an open call.
UNKNOWN_MODEL = pb.ModelInferRequest(model_name="nope").SerializeToString()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    model = save_mlp(tmp_path_factory.mktemp("models") / "dense.onnx")
    settings = ServerSettings(
        [model], port=0, grpc_port=0, access_log=False, grpc_limits=GrpcLimits(**LIMITS)
    )
    with ServerThread(settings) as running:
        yield running


def _channel(server: ServerThread) -> grpc.Channel:
    assert server.grpc_url is not None
    return grpc.insecure_channel(server.grpc_url, options=[("grpc.use_local_subchannel_pool", 1)])


def _live(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        LIVE,
        request_serializer=pb.ServerLiveRequest.SerializeToString,
        response_deserializer=pb.ServerLiveResponse.FromString,
    )


class _OpenStream:
    """A ModelStreamInfer call held open: one message sent and answered, then idle."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        self.call = channel.stream_stream(STREAM_INFER)(iter(self._outbox.get, None))
        self._outbox.put(UNKNOWN_MODEL)
        answer = next(self.call)
        assert b"unknown model" in answer

    def close(self) -> None:
        self._outbox.put(None)
        for _ in self.call:  # the server ends the stream once the client has
            pass


def test_a_connection_holds_at_most_its_streams_and_the_next_call_waits(
    server: ServerThread,
) -> None:
    with _channel(server) as channel, _channel(server) as other:
        streams = [_OpenStream(channel) for _ in range(LIMITS["max_streams_per_connection"])]
        waiting = _live(channel).future(pb.ServerLiveRequest())
        # Another connection is not held up: the limit is per connection.
        assert _live(other)(pb.ServerLiveRequest(), timeout=30).live
        assert not waiting.done(), "a third call ran beside two open streams on one connection"
        streams[0].close()
        assert waiting.result(timeout=30).live  # it ran once a stream closed
        streams[1].close()


def test_calls_beyond_the_port_limit_are_resource_exhausted(server: ServerThread) -> None:
    with _channel(server) as first, _channel(server) as second:
        streams = [_OpenStream(first), _OpenStream(first), _OpenStream(second)]
        with pytest.raises(grpc.RpcError) as refused:
            _live(second)(pb.ServerLiveRequest(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        streams.pop().close()
        assert _live(second)(pb.ServerLiveRequest(), timeout=30).live
        for stream in streams:
            stream.close()


def test_metadata_over_the_limit_is_resource_exhausted(server: ServerThread) -> None:
    with _channel(server) as channel:
        live = _live(channel)
        assert live(pb.ServerLiveRequest(), metadata=[("x-note", "a" * 1000)], timeout=30).live
        with pytest.raises(grpc.RpcError) as refused:
            live(pb.ServerLiveRequest(), metadata=[("x-note", "a" * 8000)], timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "metadata" in str(refused.value.details())
        assert live(pb.ServerLiveRequest(), timeout=30).live  # the connection still serves


def test_an_idle_connection_is_closed_and_the_client_reconnects(server: ServerThread) -> None:
    with _channel(server) as channel:
        states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(states.append, try_to_connect=False)
        live = _live(channel)
        assert live(pb.ServerLiveRequest(), timeout=30).live
        wait_until(lambda: grpc.ChannelConnectivity.READY in states, "the connection")
        # The server's GOAWAY after idle_timeout_s takes the channel back to IDLE.
        wait_until(
            lambda: states[-1] == grpc.ChannelConnectivity.IDLE, "the idle connection to close"
        )
        assert live(pb.ServerLiveRequest(), timeout=30).live
        channel.unsubscribe(states.append)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("max_streams_per_connection", 0, "must be >= 1, not 0"),
        ("max_concurrent_calls", -1, "must be >= 1, not -1"),
        ("max_metadata_bytes", 0, "must be >= 1, not 0"),
        ("idle_timeout_s", 0.0, "must be > 0, not 0.0"),
        ("keepalive_timeout_s", -1.0, "must be > 0, not -1.0"),
    ],
)
def test_a_bad_limit_is_a_one_line_config_error(field: str, value: float, says: str) -> None:
    with pytest.raises(ConfigError) as error:
        GrpcLimits(**{field: value})  # type: ignore[arg-type]
    assert str(error.value) == f"gRPC limit {field} {says}"


def test_defaults_reach_grpc_as_channel_arguments() -> None:
    options = dict(GrpcLimits().channel_options())
    assert options["grpc.max_concurrent_streams"] == 128
    assert options["grpc.max_metadata_size"] == options["grpc.absolute_max_metadata_size"]
    assert options["grpc.max_connection_idle_ms"] == 300_000
    assert options["grpc.keepalive_time_ms"] == 60_000
