"""The gRPC front end on a real server (HTTP beside it, port 0 each), talked to with
tritonclient.grpc (sync and aio) and with a plain grpc channel for what a client library
would never send."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from google.protobuf import json_format
from serve_models import (
    exchange,
    metric,
    mlp_reference,
    save_fixed,
    save_mlp,
    save_multi,
    save_strings,
)
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from edgeshift.serve import ServeOptions, ServerSettings, ServerThread
from edgeshift.serve.limits import RequestLimits
from edgeshift.serve.triton import model_config

# Batched float32 GEMMs may sum in another order than the one-row reference: a few ulps.
RTOL = 1e-5
ATOL = 1e-6
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "dense": save_mlp(root / "dense.onnx", seed=0),
        "fixed": save_fixed(root / "fixed.onnx"),
        "multi": save_multi(root / "multi.onnx"),
        "strings": save_strings(root / "strings.onnx"),
    }


@pytest.fixture(scope="module")
def server(models: dict[str, Path]) -> Iterator[ServerThread]:
    settings = ServerSettings(
        list(models.values()),
        port=0,
        grpc_port=0,
        options=ServeOptions(max_batch=16),
        limits=RequestLimits(max_body_bytes=1 << 20, max_rows=1000),
        access_log=False,
    )
    with ServerThread(settings) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[tg.InferenceServerClient]:
    assert server.grpc_url is not None
    c = tg.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture
def raw_infer(server: ServerThread) -> Iterator[grpc.UnaryUnaryMultiCallable]:
    """ModelInfer taking serialized bytes: sends anything, even what is not a message."""
    assert server.grpc_url is not None
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield channel.unary_unary(INFER, response_deserializer=pb.ModelInferResponse.FromString)


def _input(name: str, arr: np.ndarray, datatype: str) -> tg.InferInput:
    inp = tg.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def _error(call: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()  # type: ignore[operator]
    return info.value


def test_health_and_metadata(client: tg.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "edgeshift" and "statistics" in meta["extensions"]
    model = client.get_model_metadata("multi", as_json=True)
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": ["-1", "3"]},
        {"name": "b", "datatype": "INT64", "shape": ["-1", "3"]},
    ]
    assert client.is_model_ready("dense") and client.is_model_ready("dense", "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("dense", "7")


def test_infer_matches_reference(client: tg.InferenceServerClient) -> None:
    x = np.random.default_rng(0).random((5, 8), dtype=np.float32)
    result = client.infer("dense", [_input("x", x, "FP32")], request_id="r1")
    np.testing.assert_allclose(result.as_numpy("y"), mlp_reference(x), rtol=RTOL, atol=ATOL)
    assert result.get_response().id == "r1"
    assert result.get_response().model_version == "1"

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[1, -2, 3], [2**40, 5, -(2**33)]], dtype=np.int64)
    outputs = [tg.InferRequestedOutput("twice")]
    result = client.infer(
        "multi", [_input("a", a, "FP32"), _input("b", b, "INT64")], outputs=outputs
    )
    np.testing.assert_array_equal(result.as_numpy("twice"), 2 * b)
    assert result.as_numpy("sum") is None  # only what was asked for

    text = np.array([b"edge", "sh\u00eeft".encode(), b"", b"\x00\xff"[:1]], dtype=object)
    same = client.infer("strings", [_input("text", text, "BYTES")]).as_numpy("same")
    assert same.tolist() == text.tolist()

    fixed = np.array([[1, 2, 3, 4]], dtype=np.float32)
    doubled = client.infer("fixed", [_input("x", fixed, "FP32")]).as_numpy("y")
    np.testing.assert_array_equal(doubled, 2 * fixed)


def test_typed_contents_are_decoded(raw_infer: grpc.UnaryUnaryMultiCallable) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor
    request = pb.ModelInferRequest(
        model_name="multi",
        inputs=[
            tensor(name="a", datatype="FP32", shape=[1, 3]),
            tensor(name="b", datatype="INT64", shape=[1, 3]),
        ],
    )
    request.inputs[0].contents.fp32_contents.extend([0.5, 1.5, -2.0])
    request.inputs[1].contents.int64_contents.extend([1, 2, 2**20])
    response = raw_infer(request.SerializeToString())
    names = [o.name for o in response.outputs]
    by_name = dict(zip(names, response.raw_output_contents, strict=True))
    assert np.frombuffer(by_name["sum"], np.float32).tolist() == [1.5, 3.5, 2.0**20 - 2.0]
    assert np.frombuffer(by_name["twice"], np.int64).tolist() == [2, 4, 2**21]


def test_aio_client_concurrent_and_streaming(server: ServerThread) -> None:
    assert server.grpc_url is not None
    url = server.grpc_url
    rows = np.random.default_rng(3).random((24, 8), dtype=np.float32)

    async def main() -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        client = tga.InferenceServerClient(url)
        try:
            assert await client.is_server_ready()
            unary = await asyncio.gather(
                *(client.infer("dense", [_input("x", rows[i : i + 1], "FP32")]) for i in range(16))
            )

            async def requests():  # type: ignore[no-untyped-def]
                for i in range(16, 24):
                    yield {
                        "model_name": "dense",
                        "inputs": [_input("x", rows[i : i + 1], "FP32")],
                        "request_id": str(i),
                    }

            streamed: dict[str, np.ndarray] = {}
            async for result, error in client.stream_infer(inputs_iterator=requests()):
                assert error is None
                streamed[result.get_response().id] = result.as_numpy("y")
                if len(streamed) == 8:
                    break
            return [r.as_numpy("y") for r in unary], streamed
        finally:
            await client.close()

    unary, streamed = asyncio.run(main())
    want = mlp_reference(rows)
    np.testing.assert_allclose(np.concatenate(unary), want[:16], rtol=RTOL, atol=ATOL)
    got = np.concatenate([streamed[str(i)] for i in range(16, 24)])
    np.testing.assert_allclose(got, want[16:], rtol=RTOL, atol=ATOL)


def test_model_config(server: ServerThread, client: tg.InferenceServerClient) -> None:
    dense = client.get_model_config("dense", as_json=True)["config"]
    assert dense["max_batch_size"] == 16
    assert dense["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["8"]}]
    assert dense["instance_group"][0]["kind"] == "KIND_CPU"
    assert "dynamic_batching" in dense
    fixed = client.get_model_config("fixed").config  # the protobuf form
    assert fixed.max_batch_size == 0 and list(fixed.input[0].dims) == [1, 4]
    assert not fixed.HasField("dynamic_batching")
    strings = client.get_model_config("strings", as_json=True)["config"]
    assert strings["output"][0]["data_type"] == "TYPE_STRING"
    # every model's JSON form parses as Triton's ModelConfig (the HTTP route returns it as is)
    assert server.server.repository is not None
    for model in server.server.repository.models():
        doc = model_config(model, server.server.settings.options)
        parsed = json_format.ParseDict(doc, mc.ModelConfig())
        assert parsed.name == model.name
    assert _error(lambda: client.get_model_config("nope")).status() == "StatusCode.NOT_FOUND"


def _stats(client: tg.InferenceServerClient, name: str) -> dict:  # type: ignore[type-arg]
    (entry,) = client.get_inference_statistics(name, as_json=True)["model_stats"]
    return entry  # type: ignore[no-any-return]


def _count(entry: dict, *path: str) -> int:  # type: ignore[type-arg]
    for key in path:
        entry = entry.get(key, {})
    return int(entry or 0)  # int64 fields are strings in the JSON form; zeros are left out


def test_statistics_move_by_exactly_the_requests_sent(
    server: ServerThread, client: tg.InferenceServerClient
) -> None:
    before = _stats(client, "multi")
    a = np.ones((2, 3), np.float32)
    b = np.ones((2, 3), np.int64)
    for _ in range(5):  # one at a time: five executions of two rows
        client.infer("multi", [_input("a", a, "FP32"), _input("b", b, "INT64")])
    for _ in range(2):  # refused after the model is known: two failures
        bad = _input("a", np.ones((2, 4), np.float32), "FP32")
        _error(lambda bad=bad: client.infer("multi", [bad, _input("b", b, "INT64")]))
    status, _, body = exchange(server.url, "GET", "/v2/models/multi/stats")  # HTTP sees them too
    after = _stats(client, "multi")
    assert (
        _count(after, "inference_stats", "success", "count")
        - _count(before, "inference_stats", "success", "count")
        == 5
    )
    assert (
        _count(after, "inference_stats", "fail", "count")
        - _count(before, "inference_stats", "fail", "count")
        == 2
    )
    assert _count(after, "inference_count") - _count(before, "inference_count") == 10
    assert _count(after, "execution_count") - _count(before, "execution_count") == 5
    assert (
        _count(after, "inference_stats", "queue", "count")
        - _count(before, "inference_stats", "queue", "count")
        == 5
    )
    assert _count(after, "inference_stats", "compute_infer", "ns") > _count(
        before, "inference_stats", "compute_infer", "ns"
    )
    sizes = {int(s["batch_size"]): s for s in after["batch_stats"]}
    old = {int(s["batch_size"]): s for s in before.get("batch_stats", [])}
    assert (
        _count(sizes[2], "compute_infer", "count")
        - _count(old.get(2, {}), "compute_infer", "count")
        == 5
    )
    assert int(after["last_inference"]) > 0
    proto = client.get_inference_statistics("multi").model_stats[0]
    assert proto.name == "multi" and proto.version == "1"
    assert status == 200  # the HTTP route reports the same counters
    http_entry = json.loads(body)["model_stats"][0]
    assert int(http_entry["inference_count"]) == _count(after, "inference_count")
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {e["name"] for e in every} == {"dense", "fixed", "multi", "strings"}


def test_errors_map_to_grpc_codes(
    server: ServerThread, client: tg.InferenceServerClient, raw_infer: grpc.UnaryUnaryMultiCallable
) -> None:
    x = _input("x", np.ones((1, 8), np.float32), "FP32")
    unknown = _error(lambda: client.infer("nope", [x]))
    assert unknown.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'nope'" in unknown.message()
    assert _error(lambda: client.infer("dense", [x], model_version="9")).status() == (
        "StatusCode.NOT_FOUND"
    )

    wrong = _input("x", np.ones((1, 5), np.float32), "FP32")
    refused = _error(lambda: client.infer("dense", [wrong]))
    assert refused.status() == "StatusCode.INVALID_ARGUMENT"
    # the same one-line message as HTTP gives for the same request
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [1.0] * 5}]}
    ).encode()
    status, _, answer = exchange(server.url, "POST", "/v2/models/dense/infer", body)
    assert status == 400 and json.loads(answer)["error"] == refused.message()

    rows = _input("x", np.ones((1001, 8), np.float32), "FP32")
    assert _error(lambda: client.infer("dense", [rows])).status() == "StatusCode.RESOURCE_EXHAUSTED"
    huge = _input("x", np.ones((40000, 8), np.float32), "FP32")  # 1.2 MiB > the 1 MiB limit
    assert _error(lambda: client.infer("dense", [huge])).status() == (
        "StatusCode.RESOURCE_EXHAUSTED"
    )
    typed = _input("x", np.ones((1, 8), np.int32), "INT32")
    assert _error(lambda: client.infer("dense", [typed])).status() == (
        "StatusCode.INVALID_ARGUMENT"
    )

    with pytest.raises(grpc.RpcError) as garbage:
        raw_infer(b"\xff\xff\xff\xff not a protobuf")
    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest" in (garbage.value.details() or "")

    off = _error(lambda: client.get_model_repository_index())
    assert off.status() == "StatusCode.PERMISSION_DENIED" and "--repository-api" in off.message()
    assert _error(lambda: client.unload_model("dense")).status() == "StatusCode.PERMISSION_DENIED"
    assert client.is_model_ready("dense")


def test_grpc_requests_are_counted_in_the_shared_metrics(
    server: ServerThread, client: tg.InferenceServerClient
) -> None:
    before = metric(server, "edgeshift_inference_requests_total", model="fixed", status="200")
    fixed = _input("x", np.ones((1, 4), np.float32), "FP32")
    for _ in range(3):
        client.infer("fixed", [fixed])
    after = metric(server, "edgeshift_inference_requests_total", model="fixed", status="200")
    assert after - before == 3


def test_kserve_grpc_client(server: ServerThread) -> None:
    # kserve and tritonclient.grpc both register the protobuf package `inference`: KServe's
    # client runs in a process of its own.
    rows = np.random.default_rng(5).random((3, 8), dtype=np.float32)
    script = Path(__file__).with_name("kserve_grpc_check.py")
    assert server.grpc_url is not None
    done = subprocess.run(
        [sys.executable, str(script), server.grpc_url, "dense", json.dumps(rows.tolist())],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(done.stdout)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    want = mlp_reference(rows)
    assert seen["raw"]["id"] == "raw-1"
    np.testing.assert_allclose(seen["raw"]["outputs"]["y"], want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(seen["typed"]["y"], want, rtol=RTOL, atol=ATOL)
    assert seen["unknown"]["code"] == "NOT_FOUND"
    assert "'no-such-model'" in seen["unknown"]["message"]


def test_stream_errors_travel_in_the_stream(client: tg.InferenceServerClient) -> None:
    results: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    x = np.full((1, 8), 0.25, np.float32)
    client.async_stream_infer("nope", [_input("x", x, "FP32")], request_id="bad")
    _, error = results.get(timeout=30)
    assert isinstance(error, InferenceServerException)
    assert "unknown model 'nope'" in error.message()
    client.async_stream_infer("dense", [_input("x", x, "FP32")], request_id="good")
    result, error = results.get(timeout=30)  # the stream stayed open
    assert error is None and isinstance(result, tg.InferResult)
    assert result.get_response().id == "good"
    np.testing.assert_allclose(result.as_numpy("y"), mlp_reference(x), rtol=RTOL, atol=ATOL)
    client.stop_stream()


@pytest.mark.parametrize(
    "method",
    [
        "ServerLive",
        "ServerReady",
        "ServerMetadata",
        "ModelReady",
        "ModelMetadata",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    ],
)
def test_bytes_that_are_no_message_are_invalid_argument(server: ServerThread, method: str) -> None:
    assert server.grpc_url is not None
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        with pytest.raises(grpc.RpcError) as refused:
            call(b"\x0a\xff\xff\xff\xff\x0f")  # a length-delimited field longer than the message
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a valid" in (refused.value.details() or "")
