"""The real server on 127.0.0.1 port 0, talked to with tritonclient (sync and aio) and with
plain HTTP for the malformed requests a client library would never send."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
import tritonclient.http.aio as tha
from serve_models import (
    exchange,
    gate_backends,
    make_repository,
    metric,
    mlp_reference,
    save_fixed,
    save_mlp,
    save_multi,
    save_strings,
)
from tritonclient.utils import InferenceServerException

from edgeshift.runtime import open_backend
from edgeshift.serve import ServeOptions, ServerSettings, ServerThread, VersionPolicy
from edgeshift.serve.security import AuthSettings

# Batched float32 GEMMs may sum in another order than the one-row reference: a few ulps.
REPOSITORY_ON = AuthSettings(repository_api=True)
RTOL = 1e-5
ATOL = 1e-6


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "dense": save_mlp(root / "dense.onnx", seed=0),
        "fixed": save_fixed(root / "fixed.onnx"),
        "multi": save_multi(root / "multi.onnx"),
        "strings": save_strings(root / "strings.onnx"),
        "repo": make_repository(root / "repo"),
    }


@pytest.fixture(scope="module")
def server(models: dict[str, Path]) -> Iterator[ServerThread]:
    settings = ServerSettings(
        [models[k] for k in ("dense", "fixed", "multi", "strings", "repo")],
        port=0,
        options=ServeOptions(version_policy=VersionPolicy("all"), max_batch=16),
        max_body_bytes=1 << 20,
        access_log=True,
        auth=REPOSITORY_ON,
    )
    with ServerThread(settings) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[th.InferenceServerClient]:
    c = th.InferenceServerClient(server.url)
    yield c
    c.close()


def _infer_input(name: str, arr: np.ndarray, datatype: str, binary: bool = True) -> th.InferInput:
    inp = th.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def test_server_metadata_and_health(client: th.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "edgeshift"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])


def test_model_metadata_and_readiness(client: th.InferenceServerClient) -> None:
    meta = client.get_model_metadata("dense")
    assert meta == {
        "name": "dense",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert client.get_model_metadata("mlp")["versions"] == ["1", "2"]
    assert client.get_model_metadata("mlp", "1")["name"] == "mlp"
    assert client.get_model_metadata("fixed")["inputs"][0]["shape"] == [1, 4]
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "2")
    assert not client.is_model_ready("mlp", "7")
    assert not client.is_model_ready("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_a_direct_runtime_call(
    client: th.InferenceServerClient, models: dict[str, Path], binary: bool
) -> None:
    x = np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32)
    result = client.infer(
        "dense",
        [_infer_input("x", x, "FP32", binary)],
        outputs=[th.InferRequestedOutput("y", binary_data=binary)],
        request_id="req-42",
    )
    direct = open_backend(models["dense"], threads=1).run({"x": x})["y"]
    got = result.as_numpy("y")
    assert got.dtype == np.float32 and got.shape == (5, 4)
    np.testing.assert_allclose(got, direct, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got, mlp_reference(x, seed=0), rtol=1e-4, atol=1e-5)  # fp32 vs fp64
    response = result.get_response()
    assert response["id"] == "req-42"
    assert response["model_name"] == "dense" and response["model_version"] == "1"
    # Outputs asked for in binary come as binary, else as JSON data.
    assert ("parameters" in response["outputs"][0]) == binary


def test_default_request_gets_binary_outputs(client: th.InferenceServerClient) -> None:
    x = np.ones((1, 8), np.float32)
    result = client.infer("dense", [_infer_input("x", x, "FP32")])  # no outputs: binary_data_output
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 16
    np.testing.assert_allclose(result.as_numpy("y"), mlp_reference(x, seed=0), rtol=1e-4, atol=1e-5)


def test_versioned_urls_reach_their_own_weights(client: th.InferenceServerClient) -> None:
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    inputs = [_infer_input("x", x, "FP32")]
    for version, seed in (("1", 1), ("2", 2)):
        result = client.infer("mlp", inputs, model_version=version)
        assert result.get_response()["model_version"] == version
        np.testing.assert_allclose(
            result.as_numpy("y"), mlp_reference(x, seed), rtol=1e-4, atol=1e-5
        )
    latest = client.infer("mlp", inputs)
    assert latest.get_response()["model_version"] == "2"
    with pytest.raises(InferenceServerException, match="no loaded version '3'") as info:
        client.infer("mlp", inputs, model_version="3")
    assert info.value.status() == "404"


def test_multi_input_int64_and_output_filtering(client: th.InferenceServerClient) -> None:
    a = np.array([[0.5, 1.5, -2.0]], np.float32)
    b = np.array([[1, -2, 3]], np.int64)
    inputs = [_infer_input("a", a, "FP32", binary=False), _infer_input("b", b, "INT64")]
    result = client.infer("multi", inputs, outputs=[th.InferRequestedOutput("twice")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["twice"]
    np.testing.assert_array_equal(result.as_numpy("twice"), [[2, -4, 6]])
    assert result.as_numpy("twice").dtype == np.int64
    both = client.infer("multi", inputs)
    np.testing.assert_array_equal(both.as_numpy("sum"), [[1.5, -0.5, 1.0]])  # exact in fp32


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_tensors_end_to_end(client: th.InferenceServerClient, binary: bool) -> None:
    text = np.array(["héllo".encode(), b"", b"edge box"], dtype=object)
    result = client.infer(
        "strings",
        [_infer_input("text", text, "BYTES", binary)],
        outputs=[th.InferRequestedOutput("same", binary_data=binary)],
    )
    got = result.as_numpy("same").tolist()
    expected = text.tolist() if binary else ["héllo", "", "edge box"]
    assert got == expected


def test_concurrent_aio_requests_are_batched_and_split_correctly(
    server: ServerThread, models: dict[str, Path]
) -> None:
    rows_before = metric(server, "edgeshift_batch_size_sum", model="dense")
    xs = [
        np.random.default_rng(i).standard_normal((1 + i % 3, 8)).astype(np.float32)
        for i in range(48)
    ]

    async def main() -> list[np.ndarray]:
        client = tha.InferenceServerClient(server.url)
        try:
            tasks = [
                client.infer("dense", [_infer_input("x", x, "FP32", binary=i % 2 == 0)])
                for i, x in enumerate(xs)
            ]
            return [r.as_numpy("y") for r in await asyncio.gather(*tasks)]
        finally:
            await client.close()

    results = asyncio.run(main())
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, mlp_reference(x, seed=0), rtol=1e-4, atol=1e-5)
    rows_after = metric(server, "edgeshift_batch_size_sum", model="dense")
    assert rows_after - rows_before == sum(len(x) for x in xs)  # every row ran exactly once


def test_fixed_batch_model_runs_one_by_one(server: ServerThread) -> None:
    async def main() -> list[np.ndarray]:
        client = tha.InferenceServerClient(server.url)
        try:
            tasks = [
                client.infer("fixed", [_infer_input("x", np.full((1, 4), i, np.float32), "FP32")])
                for i in range(12)
            ]
            return [r.as_numpy("y") for r in await asyncio.gather(*tasks)]
        finally:
            await client.close()

    for i, got in enumerate(asyncio.run(main())):
        np.testing.assert_array_equal(got, np.full((1, 4), 2.0 * i))
    count = metric(server, "edgeshift_batch_size_count", model="fixed")
    ones = metric(server, "edgeshift_batch_size_bucket", model="fixed", le="1.0")
    assert count >= 12 and ones == count


def test_metrics_count_requests_errors_and_latency(
    server: ServerThread, client: th.InferenceServerClient
) -> None:
    before_ok = metric(server, "edgeshift_inference_requests_total", model="multi", status="200")
    before_err = metric(server, "edgeshift_inference_errors_total", model="multi", status="400")
    a, b = np.zeros((1, 3), np.float32), np.zeros((1, 3), np.int64)
    client.infer("multi", [_infer_input("a", a, "FP32"), _infer_input("b", b, "INT64")])
    with pytest.raises(InferenceServerException):
        client.infer("multi", [_infer_input("a", a, "FP32")])
    assert (
        metric(server, "edgeshift_inference_requests_total", model="multi", status="200")
        == before_ok + 1
    )
    assert (
        metric(server, "edgeshift_inference_errors_total", model="multi", status="400")
        == before_err + 1
    )
    assert metric(server, "edgeshift_inference_latency_seconds_count", model="multi") >= 1
    _, headers, body = exchange(server.url, "GET", "/metrics")
    assert 'edgeshift_queue_depth{model="multi"} 0.0' in body.decode()
    assert "edgeshift_inference_in_flight" in body.decode()
    assert headers["content-type"].startswith("text/plain")


def _json_infer(name: str, datatype: str, shape: list[int], data: list[object]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}
    ).encode()


def _binary_infer(payload: bytes, shape: list[int], size: int | None = None) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": shape,
                    "parameters": {"binary_data_size": len(payload) if size is None else size},
                }
            ]
        }
    ).encode()
    return header + payload, len(header)


GOOD_ROW = np.arange(8, dtype=np.float32).tobytes()


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"),
    [
        (
            "/v2/models/nope/infer",
            _json_infer("x", "FP32", [1, 8], [0] * 8),
            {},
            404,
            "unknown model 'nope'",
        ),
        (
            "/v2/models/dense/versions/9/infer",
            _json_infer("x", "FP32", [1, 8], [0] * 8),
            {},
            404,
            "no loaded version '9'",
        ),
        (
            "/v2/models/dense/versions/x/infer",
            _json_infer("x", "FP32", [1, 8], [0] * 8),
            {},
            404,
            "no loaded version 'x'",
        ),
        (
            "/v2/models/dense/infer",
            _json_infer("z", "FP32", [1, 8], [0] * 8),
            {},
            400,
            "unknown input 'z'",
        ),
        (
            "/v2/models/dense/infer",
            _json_infer("x", "FP32", [1, 9], [0] * 9),
            {},
            400,
            r"shape \[1, 9\]; the model wants \[-1, 8\]",
        ),
        (
            "/v2/models/dense/infer",
            _json_infer("x", "FP64", [1, 8], [0] * 8),
            {},
            400,
            "datatype FP64; the model wants FP32",
        ),
        (
            "/v2/models/dense/infer",
            _json_infer("x", "FP32", [1, 8], [0] * 7),
            {},
            400,
            "needs 8 elements, got 7",
        ),
        ("/v2/models/dense/infer", b'{"inputs": [', {}, 400, "not valid JSON"),
        (
            "/v2/models/dense/infer",
            _binary_infer(GOOD_ROW[:20], [1, 8], 32)[0],
            {"Inference-Header-Content-Length": str(_binary_infer(GOOD_ROW[:20], [1, 8], 32)[1])},
            400,
            "truncated",
        ),
        (
            "/v2/models/dense/infer",
            _binary_infer(GOOD_ROW, [1, 8])[0],
            {"Inference-Header-Content-Length": "10"},
            400,
            "not valid JSON",
        ),
        (
            "/v2/models/dense/infer",
            _binary_infer(GOOD_ROW, [1, 8])[0],
            {"Inference-Header-Content-Length": "100000"},
            400,
            "Inference-Header-Content-Length is 100000",
        ),
        (
            "/v2/models/dense/infer",
            _binary_infer(GOOD_ROW, [1, 8])[0],
            {"Inference-Header-Content-Length": "ten"},
            400,
            "not a.* integer",
        ),
        ("/v2/models/dense/infer", _binary_infer(GOOD_ROW, [1, 8])[0], {}, 400, "not valid JSON"),
        ("/v2/models/dense/infer", b"\x00" * ((1 << 20) + 1), {}, 413, "over the 1 MiB limit"),
        ("/v2/nowhere", b"", {}, 404, "no route /v2/nowhere"),
    ],
)
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(
    server: ServerThread, path: str, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    got_status, got_headers, got_body = exchange(server.url, "POST", path, body, headers)
    assert got_status == status
    assert got_headers["content-type"] == "application/json"
    error = json.loads(got_body)["error"]
    assert re.search(message, error), error
    assert "\n" not in error and "Traceback" not in error
    ok_status, _, ok_body = exchange(
        server.url,
        "POST",
        "/v2/models/dense/infer",
        _json_infer("x", "FP32", [1, 8], list(range(8))),
    )
    assert ok_status == 200
    got = np.array(json.loads(ok_body)["outputs"][0]["data"], np.float32).reshape(1, 4)
    np.testing.assert_allclose(
        got, mlp_reference(np.arange(8, dtype=np.float32)[None], 0), rtol=1e-4, atol=1e-5
    )


def test_body_limit_holds_for_chunked_uploads(server: ServerThread) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"\x00" * 65536  # 2.5 MiB in all, no Content-Length

    host, port = server.url.rsplit(":", 1)
    import http.client

    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/v2/models/dense/infer", body=chunks(), encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413
        assert "limit" in json.loads(response.read())["error"]
    finally:
        conn.close()


def test_client_errors_via_tritonclient(client: th.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'ghost'") as info:
        client.infer("ghost", [_infer_input("x", np.zeros((1, 8), np.float32), "FP32")])
    assert info.value.status() == "404"
    with pytest.raises(InferenceServerException, match="unknown output 'nope'"):
        client.infer(
            "dense",
            [_infer_input("x", np.zeros((1, 8), np.float32), "FP32")],
            outputs=[th.InferRequestedOutput("nope")],
        )
    with pytest.raises(InferenceServerException, match="model wants FP32"):
        client.infer("dense", [_infer_input("x", np.zeros((1, 8), np.float16), "FP16")])


def test_access_log_is_one_json_line_per_request(
    server: ServerThread, client: th.InferenceServerClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="edgeshift.serve.access"):
        client.is_server_live()
        with pytest.raises(InferenceServerException):
            client.get_model_metadata("nope")
        # Lines are written on the server's thread just after the response goes out: wait.
        records: list[dict[str, object]] = []
        for _ in range(500):
            records = [
                json.loads(r.getMessage())
                for r in caplog.records
                if r.name == "edgeshift.serve.access"
            ]
            records = [r for r in records if r["path"] in ("/v2/health/live", "/v2/models/nope")]
            if len(records) >= 2:
                break
            time.sleep(0.01)
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("GET", "/v2/health/live", 200),
        ("GET", "/v2/models/nope", 404),
    ]
    assert all(isinstance(r["duration_ms"], float) for r in records)


def test_repository_api_loads_and_unloads_without_restart(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo")
    settings = ServerSettings(
        [repo], port=0, access_log=False, auth=REPOSITORY_ON
    )  # version policy: latest
    x = np.ones((1, 8), np.float32)
    with ServerThread(settings) as server:
        client = th.InferenceServerClient(server.url)
        index = client.get_model_repository_index()
        assert index == [
            {"name": "double", "version": "1", "state": "READY"},
            {
                "name": "mlp",
                "version": "1",
                "state": "UNAVAILABLE",
                "reason": "not selected by the version policy",
            },
            {"name": "mlp", "version": "2", "state": "READY"},
        ]
        assert client.get_model_metadata("mlp")["versions"] == ["2"]

        client.unload_model("mlp")
        assert not client.is_model_ready("mlp")
        with pytest.raises(InferenceServerException, match="not loaded") as info:
            client.infer("mlp", [_infer_input("x", x, "FP32")])
        assert info.value.status() == "503"
        assert {r["state"] for r in client.get_model_repository_index() if r["name"] == "mlp"} == {
            "UNAVAILABLE"
        }

        # A new version appears on disk: loading picks it up, no restart.
        save_mlp(repo / "mlp" / "3" / "model.onnx", seed=3)
        client.load_model("mlp")
        assert client.is_model_ready("mlp", "3") and not client.is_model_ready("mlp", "2")
        result = client.infer("mlp", [_infer_input("x", x, "FP32")])
        np.testing.assert_allclose(result.as_numpy("y"), mlp_reference(x, 3), rtol=1e-4, atol=1e-5)

        # A new model appears: the index lists it and it loads.
        shutil.copytree(repo / "double", repo / "double2")
        assert {
            "name": "double2",
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": "not selected by the version policy",
        } in client.get_model_repository_index()
        client.load_model("double2")
        assert client.is_model_ready("double2")

        with pytest.raises(InferenceServerException, match="no model 'ghost'") as info:
            client.load_model("ghost")
        assert info.value.status() == "404"
        with pytest.raises(InferenceServerException, match="unknown model 'ghost'"):
            client.unload_model("ghost")
        ready = exchange(server.url, "POST", "/v2/repository/index", b'{"ready": true}')
        assert [r["name"] for r in json.loads(ready[2])] == ["double", "double2", "mlp"]
        client.close()


def test_a_broken_model_fails_to_load_with_a_reason(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo")
    with ServerThread(
        ServerSettings([repo], port=0, access_log=False, auth=REPOSITORY_ON)
    ) as server:
        client = th.InferenceServerClient(server.url)
        (repo / "mlp" / "4").mkdir()
        (repo / "mlp" / "4" / "model.onnx").write_bytes(b"not a model")
        with pytest.raises(InferenceServerException, match="cannot load model 'mlp'") as info:
            client.load_model("mlp")
        assert info.value.status() == "400"
        # The running version stays loaded and serving.
        assert client.is_model_ready("mlp", "2")
        client.close()


def test_zoo_model_serves_like_the_runtime(tmp_path: Path) -> None:
    zoo = pytest.importorskip("edgeshift.zoo")
    model = zoo.get("digits-mlp", tmp_path / "digits")
    backend = open_backend(model.model_path, threads=1)
    spec = backend.inputs[0]
    x = np.asarray(np.load(model.data_path)[spec.name][:16], dtype=np.float32)
    with ServerThread(
        ServerSettings([model.model_path], port=0, access_log=False, auth=REPOSITORY_ON)
    ) as server:
        client = th.InferenceServerClient(server.url)
        result = client.infer(model.model_path.stem, [_infer_input(spec.name, x, "FP32")])
        for out in backend.outputs:
            np.testing.assert_allclose(
                result.as_numpy(out.name),
                backend.run({spec.name: x})[out.name],
                rtol=RTOL,
                atol=ATOL,
            )
        client.close()


def test_served_onnxruntime_sessions_do_not_spin(
    server: ServerThread, models: dict[str, Path]
) -> None:
    from edgeshift.serve.repository import _server_runtime_options

    assert _server_runtime_options(models["dense"], ServeOptions())["allow_spinning"] is False
    assert "allow_spinning" not in (
        _server_runtime_options(models["dense"], ServeOptions(backend="openvino")) or {}
    )
    assert server.server.repository is not None
    session = server.server.repository.get("dense").backend.session  # type: ignore[attr-defined]
    entry = session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning"
    )
    assert entry == "0"


def _artifact(directory: Path, backend: str, runtime_options: dict[str, object]) -> Path:
    save_mlp(directory / "model.onnx", seed=0)
    manifest = {"model_file": "model.onnx", "backend": backend, "runtime_options": runtime_options}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_optimize_artifacts_are_served_with_their_runtime_options(tmp_path: Path) -> None:
    ort_dir = _artifact(
        tmp_path / "dense-ort",
        "onnxruntime",
        {"precision": "fp32", "graph_optimization_level": "basic"},
    )
    ov_dir = _artifact(tmp_path / "dense-ov", "openvino", {"precision": "fp32"})
    repo_version = _artifact(
        tmp_path / "repo" / "dense" / "3", "onnxruntime", {"precision": "fp32"}
    )
    x = np.random.default_rng(5).standard_normal((2, 8)).astype(np.float32)
    settings = ServerSettings(
        [ort_dir, ov_dir, repo_version.parent.parent], port=0, access_log=False
    )
    with ServerThread(settings) as server:
        assert server.server.repository is not None
        served = server.server.repository.get("dense-ort")
        assert served.backend.runtime_options()["graph_optimization_level"] == "basic"
        client = th.InferenceServerClient(server.url)
        assert client.get_model_metadata("dense-ov")["platform"] == "openvino_onnx"
        assert client.get_model_metadata("dense")["versions"] == ["3"]
        for name in ("dense-ort", "dense-ov", "dense"):
            result = client.infer(name, [_infer_input("x", x, "FP32")])
            # OpenVINO f32 may fuse and reorder the GEMM sums: allow a few float32 ulps more.
            np.testing.assert_allclose(
                result.as_numpy("y"), mlp_reference(x, 0), rtol=1e-4, atol=1e-5
            )
        client.close()


def test_full_queue_answers_503_at_once_and_the_rest_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gated = gate_backends(monkeypatch)
    path = save_mlp(tmp_path / "dense.onnx")
    settings = ServerSettings(
        [path], port=0, options=ServeOptions(max_queue=2), access_log=False, auth=REPOSITORY_ON
    )
    body = _json_infer("x", "FP32", [1, 8], list(range(8)))
    with ServerThread(settings) as server, ThreadPoolExecutor(4) as pool:
        first = pool.submit(exchange, server.url, "POST", "/v2/models/dense/infer", body)
        assert gated[0].entered.wait(30)  # the worker is inside run(): the queue is empty
        queued = [
            pool.submit(exchange, server.url, "POST", "/v2/models/dense/infer", body)
            for _ in range(2)
        ]
        while metric(server, "edgeshift_queue_depth", model="dense") < 2:
            time.sleep(0.005)
        status, _, answer = exchange(server.url, "POST", "/v2/models/dense/infer", body)
        assert status == 503 and "overloaded" in json.loads(answer)["error"]
        assert not first.done()  # refused while the gate is still closed: at once, not queued
        gated[0].gate.set()
        assert [f.result()[0] for f in (first, *queued)] == [200, 200, 200]


def test_models_removed_from_the_repository_leave_the_index(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo")
    with ServerThread(
        ServerSettings([repo], port=0, access_log=False, auth=REPOSITORY_ON)
    ) as server:
        client = th.InferenceServerClient(server.url)
        client.unload_model("double")
        shutil.rmtree(repo / "double")
        assert [r["name"] for r in client.get_model_repository_index()] == ["mlp", "mlp"]
        with pytest.raises(InferenceServerException, match="no model 'double'"):
            client.load_model("double")
        client.close()


@pytest.mark.parametrize(("backend", "opened"), [("onnxruntime", 1), ("openvino", 2)])
def test_instances_share_a_thread_safe_backend_and_answer_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, opened: int
) -> None:
    gated = gate_backends(monkeypatch)
    path = save_mlp(tmp_path / "dense.onnx")
    options = ServeOptions(instances=2, max_batch=1, threads=2, backend=backend)
    settings = ServerSettings([path], port=0, options=options, access_log=False, auth=REPOSITORY_ON)
    xs = [np.full((1, 8), float(i), np.float32) for i in range(8)]

    async def main() -> list[np.ndarray]:
        client = tha.InferenceServerClient(server.url)
        try:
            answers = await asyncio.gather(
                *(client.infer("dense", [_infer_input("x", x, "FP32")]) for x in xs)
            )
        finally:
            await client.close()
        return [a.as_numpy("y") for a in answers]

    with ServerThread(settings) as server:
        # ORT runs calls concurrently: one session (one copy of the weights) serves both
        # instances, each call on threads/instances = 1 thread; OpenVINO opens one per instance.
        assert len(gated) == opened and all(g.inner.threads == 1 for g in gated)
        for g in gated:
            g.gate.set()
        for x, y in zip(xs, asyncio.run(main()), strict=True):
            np.testing.assert_allclose(y, mlp_reference(x, 0), rtol=1e-4, atol=1e-5)


def test_triton_model_config_and_statistics_over_http(client: th.InferenceServerClient) -> None:
    config = client.get_model_config("dense")
    assert config["name"] == "dense" and config["max_batch_size"] == 16
    assert [i["name"] for i in config["input"]] == ["x"] and [
        int(d) for d in config["input"][0]["dims"]
    ] == [8]
    assert client.get_model_config("mlp", "1")["name"] == "mlp"
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("ghost")
    assert info.value.status() == "404"

    def successes() -> int:
        stats = client.get_inference_statistics("dense")["model_stats"]
        assert [s["name"] for s in stats] == ["dense"]
        return int(stats[0]["inference_stats"]["success"]["count"])

    before = successes()
    for _ in range(3):
        client.infer("dense", [_infer_input("x", np.zeros((2, 8), np.float32), "FP32")])
    assert successes() == before + 3
    names = {s["name"] for s in client.get_inference_statistics()["model_stats"]}
    assert {"dense", "fixed", "mlp"} <= names
    versioned = client.get_inference_statistics("mlp", "2")["model_stats"]
    assert [(s["name"], s["version"]) for s in versioned] == [("mlp", "2")]


def test_grpc_serves_beside_http_and_stops_with_it(models: dict[str, Path]) -> None:
    import grpc
    import tritonclient.grpc as tg

    token = "grpc-and-http-token-0123456789"
    auth = AuthSettings(inference_tokens=frozenset({token}))
    settings = ServerSettings([models["dense"]], port=0, grpc_port=0, auth=auth, access_log=False)
    server = ServerThread(settings).start()
    try:
        assert server.grpc_url is not None and server.grpc_url != server.url
        client = tg.InferenceServerClient(server.grpc_url)
        x = np.random.default_rng(5).random((3, 8), dtype=np.float32)
        inp = tg.InferInput("x", [3, 8], "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as info:
            client.infer("dense", [inp])
        assert info.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
        y = client.infer("dense", [inp], headers={"authorization": f"Bearer {token}"})
        np.testing.assert_allclose(y.as_numpy("y"), mlp_reference(x), rtol=RTOL, atol=ATOL)
        # HTTP and gRPC count into one set of statistics.
        http = th.InferenceServerClient(server.url)
        stats = http.get_inference_statistics(
            "dense", headers={"Authorization": f"Bearer {token}"}
        )["model_stats"][0]
        assert int(stats["inference_stats"]["success"]["count"]) == 1
        http.close()
        client.close()
    finally:
        server.stop()
    assert not server._thread.is_alive()
    with socket.socket() as probe:  # the gRPC port was released on exit
        host, port = server.grpc_url.rsplit(":", 1)
        assert probe.connect_ex((host, int(port))) != 0
