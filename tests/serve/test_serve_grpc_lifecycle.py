"""gRPC calls across their lifetime: a client that gives up, a server that shuts down with
calls in flight, a port that is taken, a stream whose requests wait together or whose client
leaves. Backends gated (serve_models.GatedBackend) so the calls are provably in flight when it
happens."""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from serve_models import gate_backends, metric, mlp_reference, save_mlp, wait_until
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from edgeshift.errors import ConfigError
from edgeshift.serve import ServerSettings, ServerThread
from edgeshift.serve.grpc import GrpcFrontend
from edgeshift.serve.limits import RequestLimits
from edgeshift.serve.security import AuthSettings

STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
RTOL, ATOL = 1e-5, 1e-6  # batched float32 GEMMs vs the one-row reference: a few ulps


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return save_mlp(tmp_path / "dense.onnx")


def _x(value: float = 1.0) -> tg.InferInput:
    inp = tg.InferInput("x", [1, 8], "FP32")
    inp.set_data_from_numpy(np.full((1, 8), value, np.float32))
    return inp


def test_a_client_that_gives_up_is_counted_499(model: Path, monkeypatch: Any) -> None:
    gated = gate_backends(monkeypatch)
    settings = ServerSettings([model], port=0, grpc_port=0, access_log=False)
    with ServerThread(settings) as server:
        assert server.grpc_url is not None
        client = tg.InferenceServerClient(server.grpc_url)
        outcome: list[Any] = []
        # Cancelled once the backend holds it (not by a deadline, which a loaded box can pass
        # before the request is even queued): the server sees a call whose client left.
        call = client.async_infer("dense", [_x()], lambda result, error: outcome.append(error))
        wait_until(gated[0].entered.is_set, "the call to reach the backend")
        call.cancel()
        wait_until(lambda: outcome, "the client to see its call cancelled")
        assert isinstance(outcome[0], InferenceServerException)
        assert "CANCELLED" in str(outcome[0].status()).upper()
        gated[0].gate.set()
        wait_until(
            lambda: metric(server, "edgeshift_inference_requests_total", status="499") == 1,
            "the abandoned call counted as 499",
        )
        # the model still answers, correctly
        y = client.infer("dense", [_x(0.5)]).as_numpy("y")
        np.testing.assert_allclose(y, mlp_reference(np.full((1, 8), 0.5, np.float32)), RTOL, ATOL)
        stats = client.get_inference_statistics("dense", as_json=True)["model_stats"][0]
        assert int(stats["inference_stats"]["fail"]["count"]) == 1
        assert int(stats["inference_stats"]["success"]["count"]) == 1
        client.close()


def test_shutdown_answers_calls_in_flight(model: Path, monkeypatch: Any) -> None:
    gated = gate_backends(monkeypatch)
    settings = ServerSettings([model], port=0, grpc_port=0, access_log=False)
    server = ServerThread(settings).start()
    assert server.grpc_url is not None
    url = server.grpc_url
    answers: list[np.ndarray] = []

    def call() -> None:
        with tg.InferenceServerClient(url) as client:
            answers.append(client.infer("dense", [_x(2.0)]).as_numpy("y"))

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(gated[0].entered.is_set, "the call to reach the backend")
    stopper = threading.Thread(target=server.stop)
    stopper.start()

    def refusing_new_calls() -> bool:
        with tg.InferenceServerClient(url) as probe:
            try:
                return not probe.is_server_ready()
            except InferenceServerException:
                return True

    wait_until(refusing_new_calls, "the server to stop taking calls")
    gated[0].gate.set()
    caller.join(30)
    stopper.join(60)
    assert not stopper.is_alive()
    assert len(answers) == 1
    np.testing.assert_allclose(
        answers[0], mlp_reference(np.full((1, 8), 2.0, np.float32)), RTOL, ATOL
    )


def test_a_taken_port_is_a_one_line_config_error(
    model: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with ServerThread(ServerSettings([model], port=0, access_log=False)) as server:
            assert server.server.repository is not None
            frontend = GrpcFrontend(
                server.server.repository,
                server.server.metrics,
                limits=RequestLimits(),
                auth=AuthSettings(),
            )

            async def start() -> int:
                return await frontend.start("127.0.0.1", port)

            with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*--grpc-port"):
                asyncio.run(start())
    assert "add port" not in capfd.readouterr().err.lower()  # grpc's own line is not printed


def _stream_request(value: float, request_id: str) -> bytes:
    request = pb.ModelInferRequest(
        model_name="dense",
        id=request_id,
        raw_input_contents=[np.full((1, 8), value, "f4").tobytes()],
    )
    request.inputs.add(name="x", datatype="FP32", shape=[1, 8])
    return request.SerializeToString()


def test_requests_of_one_stream_batch_together(model: Path, monkeypatch: Any) -> None:
    gated = gate_backends(monkeypatch)
    settings = ServerSettings([model], port=0, grpc_port=0, access_log=False)
    with ServerThread(settings) as server:
        assert server.grpc_url is not None
        results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client = tg.InferenceServerClient(server.grpc_url)
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        client.async_stream_infer("dense", [_x(0.0)], request_id="0")
        wait_until(gated[0].entered.is_set, "the first request to reach the backend")
        for i in range(1, 9):  # queued behind the first, on the same stream
            client.async_stream_infer("dense", [_x(float(i))], request_id=str(i))
        wait_until(
            lambda: metric(server, "edgeshift_inference_in_flight") == 9, "9 requests in flight"
        )
        gated[0].gate.set()
        answers = {}
        for _ in range(9):
            result, error = results.get(timeout=30)
            assert error is None
            answers[result.get_response().id] = result.as_numpy("y")
        client.stop_stream()
        client.close()
        for i in range(9):
            want = mlp_reference(np.full((1, 8), float(i), np.float32))
            np.testing.assert_allclose(answers[str(i)], want, RTOL, ATOL)
        # the first ran alone; the eight that waited behind it ran as one batch
        assert metric(server, "edgeshift_batch_size_count") == 2
        assert metric(server, "edgeshift_batch_size_sum") == 9


def test_a_stream_that_goes_away_counts_its_requests_499(model: Path, monkeypatch: Any) -> None:
    gated = gate_backends(monkeypatch)
    settings = ServerSettings([model], port=0, grpc_port=0, access_log=False)
    with ServerThread(settings) as server:
        assert server.grpc_url is not None
        url = server.grpc_url

        async def send_three_and_leave() -> None:
            async with grpc.aio.insecure_channel(url) as channel:
                stream = channel.stream_stream(STREAM_INFER)
                call = stream(iter([_stream_request(1.0, str(i)) for i in range(3)]))
                await asyncio.to_thread(
                    wait_until,
                    lambda: metric(server, "edgeshift_inference_in_flight") == 3,
                    "3 requests in flight",
                )
                call.cancel()

        asyncio.run(send_three_and_leave())
        wait_until(
            lambda: metric(server, "edgeshift_inference_requests_total", status="499") == 3,
            "the stream's three requests counted as 499",
        )
        assert metric(server, "edgeshift_inference_in_flight") == 0
        gated[0].gate.set()
        with tg.InferenceServerClient(url) as client:  # the model still answers, correctly
            y = client.infer("dense", [_x(0.5)]).as_numpy("y")
        np.testing.assert_allclose(y, mlp_reference(np.full((1, 8), 0.5, np.float32)), RTOL, ATOL)


class _FailingBackend:
    """A real backend whose run fails the way a bug would, with a path in its message."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.concurrent_runs = inner.concurrent_runs
        self.inputs, self.outputs = inner.inputs, inner.outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("cannot read /srv/secret/weights.bin")

    def close(self) -> None:
        self.inner.close()


def test_a_server_fault_is_internal_and_discloses_no_path(model: Path, monkeypatch: Any) -> None:
    import edgeshift.serve.repository as repository_module
    from edgeshift.runtime import open_backend

    monkeypatch.setattr(
        repository_module, "open_backend", lambda *a, **k: _FailingBackend(open_backend(*a, **k))
    )
    settings = ServerSettings([model], port=0, grpc_port=0, access_log=False)
    with ServerThread(settings) as server:
        assert server.grpc_url is not None
        with grpc.insecure_channel(server.grpc_url) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            with pytest.raises(grpc.RpcError) as failed:
                call(_stream_request(1.0, "a"))
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert failed.value.details() == "internal error (RuntimeError) — see the server log"
            answers = list(channel.stream_stream(STREAM_INFER)(iter([_stream_request(1.0, "b")])))
        assert pb.ModelStreamInferResponse.FromString(answers[0]).error_message == (
            "internal error (RuntimeError) — see the server log"
        )
        assert metric(server, "edgeshift_inference_requests_total", status="500") == 2
