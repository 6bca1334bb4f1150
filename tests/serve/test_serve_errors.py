"""Errors over real sockets: every malformed request a 4xx with the JSON error body, limits
from the declared shapes, nothing disclosed, NaN in strict JSON, token ids checked for every
backend, corrupt models and artifact manifests that try to leave their directory."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as th
from onnx import TensorProto, helper, numpy_helper
from serve_models import exchange, mlp_reference, save_graph, save_mlp

from edgeshift.errors import ModelError
from edgeshift.serve import ServeOptions, ServerSettings, ServerThread
from edgeshift.serve.json_numbers import lift_number_arrays
from edgeshift.serve.limits import RequestLimits
from edgeshift.serve.security import AuthSettings

VOCAB = 10
TABLE = np.arange(VOCAB * 4, dtype=np.float32).reshape(VOCAB, 4)
LIMITS = RequestLimits(
    max_body_bytes=1 << 20,
    max_rows=64,
    max_tensor_bytes=64 << 10,
    max_dims=6,
    json_offload_bytes=2048,  # small, so the off-loop decode is exercised by plain requests
)


def save_embedding(path: Path) -> Path:
    """ids [n, 3] int64 -> Cast -> Gather(TABLE [VOCAB, 4]) -> vectors [n, 3, 4]."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "ids64"], ["vectors"], axis=0),
        ],
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 3])],
        [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["n", 3, 4])],
        [numpy_helper.from_array(TABLE, "table")],
    )
    return save_graph(graph, path)


def save_log(path: Path) -> Path:
    """x [n, 4] float32 -> Log(x): NaN for negatives, -inf for 0, inf for inf."""
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["y"])],
        "log",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    return save_graph(graph, path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("errors")
    paths = [
        save_mlp(root / "dense.onnx"),
        save_embedding(root / "embed.onnx"),
        save_log(root / "log.onnx"),
    ]
    settings = ServerSettings(paths, port=0, access_log=False, limits=LIMITS)
    with ServerThread(settings) as running:
        yield running


def _post(server: ServerThread, body: Any, model: str = "dense", **headers: str) -> tuple:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return exchange(server.url, "POST", f"/v2/models/{model}/infer", raw, headers)


def _error(answer: tuple, status: int | tuple[int, ...]) -> str:
    code, headers, body = answer
    assert code in ((status,) if isinstance(status, int) else status), body[:300]
    assert headers["content-type"] == "application/json"
    message = json.loads(body)["error"]
    assert isinstance(message, str) and message and "\n" not in message
    return message


def _x(**overrides: Any) -> dict[str, Any]:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}
    return {"inputs": [{**tensor, **overrides}]}


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("body", "headers", "status", "needle"),
    [
        (_x(datatype=[]), {}, 400, "unknown datatype"),
        (_x(datatype={}), {}, 400, "unknown datatype"),
        (_x(datatype=None), {}, 400, "unknown datatype"),
        (_x(shape=[1] * 7 + [8]), {}, 400, "--max-dims"),
        (_x(shape=[1] * 70), {}, 400, "--max-dims"),
        (_x(shape=[], data=[0.5] * 100_000), {}, 400, "needs 1 elements"),
        (_x(shape=[0, 2**62], data=[]), {}, 413, "--max-tensor-mb"),
        (_x(shape=[0, 2**80], data=[]), {}, 400, "non-negative integers"),  # orjson: a float
        (_x(shape=[1, 8], data=[[0.5] * 4] * 2), {}, 400, "nested as [2, …]"),
        (_x(shape=[1, 8], data=[[[0.5] * 8]]), {}, 400, "nested as [1, 1, 8]"),
        (_x(shape=[1, 8], data=[0.5, [0.5] * 7]), {}, 400, "needs 8 elements"),
        (_x(shape=[2, 4], data=[[0.5] * 4, [0.5] * 3 + [[0.5]]]), {}, 400, "not a valid FP32"),
        (_x(shape=[2, 4], data=[[0.5] * 4, [0.5] * 5]), {}, 400, "not a valid FP32"),
        (_x(shape=[1, 8], data=["1"] * 8), {}, 400, "must be numbers"),
        (_x(shape=[1.0, 8]), {}, 400, "non-negative integers"),
        (_x(shape="1,8"), {}, 400, "non-negative integers"),
        (_x(parameters=[]), {}, 400, "'parameters' must be a JSON object"),
        (_x(parameters={"a": {"b": 1}}), {}, 400, "string, number or boolean"),
        ({**_x(), "parameters": {"x": [1]}}, {}, 400, "string, number or boolean"),
        ({**_x(), "parameters": "yes"}, {}, 400, "'parameters' must be a JSON object"),
        ({**_x(), "id": 7}, {}, 400, "'id' must be a string"),
        ({**_x(), "id": ["a"]}, {}, 400, "'id' must be a string"),
        ({**_x(), "outputs": [{"name": "y", "parameters": []}]}, {}, 400, "'parameters'"),
        ({**_x(), "outputs": [{"name": 3}]}, {}, 400, "'name' string"),
        (DEEP, {}, 400, "not valid JSON"),
        (b'{"inputs": ' + DEEP + b"}", {}, 400, "not valid JSON"),
        (_x(), {"Inference-Header-Content-Length": "+110"}, 400, "plain integer"),
        (_x(), {"Inference-Header-Content-Length": "1_0"}, 400, "plain integer"),
        (_x(), {"Inference-Header-Content-Length": "-1"}, 400, "plain integer"),
        (_x(), {"Inference-Header-Content-Length": "0x10"}, 400, "plain integer"),
    ],
)
def test_malformed_requests_are_4xx_with_a_json_error(
    server: ServerThread, body: Any, headers: dict[str, str], status: int, needle: str
) -> None:
    message = _error(_post(server, body, **headers), status)
    assert needle in message


def test_limits_from_the_declared_shapes_name_their_flag(server: ServerThread) -> None:
    # 65 rows, sent with no data at all: refused from the shape, before anything is read.
    rows = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [65, 8], "data": []}]}
    assert "--max-rows" in _error(_post(server, rows), 413)
    # Two inputs of 40 KiB each: each under the 64 KiB tensor limit, together over it.
    each = {"datatype": "FP32", "shape": [40, 256], "parameters": {"binary_data_size": 40960}}
    header = json.dumps({"inputs": [{"name": "a", **each}, {"name": "b", **each}]}).encode()
    body = header + bytes(2 * 40960)
    answer = _post(server, body, **{"Inference-Header-Content-Length": str(len(header))})
    assert "--max-tensor-mb" in _error(answer, 413)
    # At the limits, the request is served.
    x = np.full((64, 8), 0.25, np.float32)
    ok = _post(
        server,
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [64, 8], "data": x.ravel().tolist()}
            ]
        },
    )
    assert ok[0] == 200
    got = np.array(json.loads(ok[2])["outputs"][0]["data"], np.float32).reshape(64, 4)
    np.testing.assert_allclose(got, mlp_reference(x, 0), rtol=1e-4, atol=1e-5)


def test_large_json_bodies_decode_off_the_loop_and_answer_the_same(server: ServerThread) -> None:
    # Over LIMITS.json_offload_bytes: decoded in a worker thread, then queued as usual.
    x = np.linspace(-1, 1, 48 * 8, dtype=np.float32).reshape(48, 8)
    body = {
        "id": "big",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [48, 8], "data": x.tolist()}],
    }
    assert len(json.dumps(body)) > LIMITS.json_offload_bytes
    status, _, answer = _post(server, body)
    assert status == 200
    decoded = json.loads(answer)
    assert decoded["id"] == "big"
    got = np.array(decoded["outputs"][0]["data"], np.float32).reshape(48, 4)
    np.testing.assert_allclose(got, mlp_reference(x, 0), rtol=1e-4, atol=1e-5)
    # A malformed large body fails in the thread: still a 400 with the JSON error body.
    body["inputs"][0]["shape"] = [48, 7]
    assert "nested as [48, 8]" in _error(_post(server, body), 400)


def test_nan_and_inf_outputs_are_strict_json_that_tritonclient_reads(
    server: ServerThread,
) -> None:
    x = np.array([[-1.0, 0.0, 1.0, np.inf]], np.float32)
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [-1.0, 0.0, 1.0, 1e39]}
        ]
    }  # 1e39 is inf as FP32
    assert "FP32" in _error(_post(server, body, "log"), 400)  # 1e39 overflows: not inf

    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in the JSON answer")

    client = th.InferenceServerClient(server.url)
    try:
        inp = th.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = th.InferRequestedOutput("y", binary_data=False)
        result = client.infer("log", [inp], outputs=[out])
        data = json.loads(json.dumps(result.get_response()), parse_constant=refuse)
        assert data["outputs"][0]["data"] == ["NaN", "-Infinity", 0.0, "Infinity"]
        got = result.as_numpy("y")
        assert np.isnan(got[0, 0]) and got[0, 1] == -np.inf and got[0, 3] == np.inf
    finally:
        client.close()
    # And over a raw socket, the body itself parses strictly.
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, 4],
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    ).encode()
    status, _, answer = _post(
        server, header + x.tobytes(), "log", **{"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 200
    assert json.loads(answer, parse_constant=refuse)["outputs"][0]["data"][3] == "Infinity"


def test_unknown_models_are_404_without_the_list_of_models(server: ServerThread) -> None:
    for path in ("/v2/models/nope/infer", "/v2/models/nope", "/v2/models/nope/ready"):
        method = "POST" if path.endswith("infer") else "GET"
        status, _, body = exchange(server.url, method, path, json.dumps(_x()).encode())
        assert status == 404
        message = json.loads(body)["error"]
        assert "nope" in message
        for other in ("dense", "embed", "log"):
            assert other not in message


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_token_ids_out_of_the_vocabulary_are_400_on_every_backend(
    tmp_path: Path, backend: str
) -> None:
    pytest.importorskip(backend)
    path = save_embedding(tmp_path / "embed.onnx")
    settings = ServerSettings(
        [path], port=0, access_log=False, options=ServeOptions(backend=backend)
    )
    with ServerThread(settings) as running:
        ids = [[0, 9, 3], [2, 2, 1]]
        ok = _post(
            running,
            {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [2, 3], "data": ids}]},
            "embed",
        )
        assert ok[0] == 200, ok[2]
        got = np.array(json.loads(ok[2])["outputs"][0]["data"], np.float32).reshape(2, 3, 4)
        np.testing.assert_array_equal(got, TABLE[np.array(ids)])
        for bad in (VOCAB, 1 << 40, -VOCAB - 1):
            body = {
                "inputs": [
                    {"name": "ids", "datatype": "INT64", "shape": [1, 3], "data": [0, bad, 1]}
                ]
            }
            message = _error(_post(running, body, "embed"), 400)
            assert "'ids'" in message and f"[-{VOCAB}, {VOCAB})" in message


def _repository_with_bad_models(root: Path) -> Path:
    save_mlp(root / "good" / "1" / "model.onnx")
    (root / "garbage" / "1").mkdir(parents=True)
    (root / "garbage" / "1" / "model.onnx").write_bytes(b"\x00\xffnot a model at all" * 8)
    whole = save_mlp(root / "cut" / "1" / "model.onnx").read_bytes()
    (root / "cut" / "1" / "model.onnx").write_bytes(whole[: len(whole) // 2])
    outside = save_mlp(root.parent / "outside.onnx")
    for name, manifest in {
        "dotdot": {"model_file": "../../../outside.onnx"},
        "absolute": {"model_file": str(outside)},
        "symlink": {"model_file": "link.onnx"},
        "writer": {
            "model_file": "model.onnx",
            "backend": "onnxruntime",
            "runtime_options": {"optimized_model_path": str(root.parent / "written.onnx")},
        },
    }.items():
        art = root / name / "1"
        art.mkdir(parents=True)
        save_mlp(art / "model.onnx")
        (art / "manifest.json").write_text(json.dumps(manifest))
    os.symlink(outside, root / "symlink" / "1" / "link.onnx")
    return root


def test_bad_models_are_unavailable_with_a_reason_while_the_rest_serve(tmp_path: Path) -> None:
    repo = _repository_with_bad_models(tmp_path / "repo")
    settings = ServerSettings(
        [repo], port=0, access_log=False, auth=AuthSettings(repository_api=True)
    )
    with ServerThread(settings) as running:
        status, _, body = exchange(running.url, "POST", "/v2/repository/index", b"{}")
        assert status == 200
        rows = {row["name"]: row for row in json.loads(body)}
        assert rows["good"]["state"] == "READY"
        reasons = {n: r["reason"] for n, r in rows.items() if r["state"] != "READY"}
        assert set(reasons) == {"garbage", "cut", "dotdot", "absolute", "symlink", "writer"}
        assert "corrupt" in reasons["garbage"] and "re-export" in reasons["garbage"]
        for name in ("dotdot", "absolute", "symlink"):
            assert "outside the artifact directory" in reasons[name]
        assert "optimized_model_path" in reasons["writer"]
        assert "not allowed" in reasons["writer"]
        for reason in reasons.values():
            assert str(tmp_path) not in reason and str(tmp_path.resolve()) not in reason
        client = th.InferenceServerClient(running.url)
        try:
            assert client.is_model_ready("good")
            assert not client.is_model_ready("garbage")
            assert not client.is_model_ready("writer")
        finally:
            client.close()
        answer = _post(running, _x(), "garbage")
        assert "corrupt" in _error(answer, 503)
        ok = _post(running, _x(), "good")
        assert ok[0] == 200
    assert not (tmp_path / "written.onnx").exists()


def test_strict_refuses_to_start_with_a_one_line_error(tmp_path: Path) -> None:
    repo = _repository_with_bad_models(tmp_path / "repo")
    settings = ServerSettings([repo], port=0, access_log=False, options=ServeOptions(strict=True))
    with pytest.raises(ModelError) as info, ServerThread(settings):
        pass
    message = str(info.value)
    assert "\n" not in message and "--strict" in message
    assert str(tmp_path) not in message


def test_a_deep_repository_index_body_is_a_400(tmp_path: Path) -> None:
    settings = ServerSettings(
        [save_mlp(tmp_path / "dense.onnx")],
        port=0,
        access_log=False,
        auth=AuthSettings(repository_api=True),
    )
    with ServerThread(settings) as running:
        answer = exchange(running.url, "POST", "/v2/repository/index", DEEP)
        assert "not valid JSON" in _error(answer, 400)


def save_row_sums(path: Path) -> Path:
    """x [n, 4096] float32 -> y [n]: the sum of each row (wide rows make large JSON bodies)."""
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
        "rowsum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [axes],
    )
    return save_graph(graph, path)


def test_a_large_json_body_is_parsed_in_pieces_and_answers_right(tmp_path: Path) -> None:
    path = save_row_sums(tmp_path / "rowsum.onnx")
    with ServerThread(ServerSettings([path], port=0, access_log=False)) as running:
        x = np.random.default_rng(3).integers(-1000, 1000, (96, 4096)).astype(np.float32) / 8
        tensor = {"name": "x", "datatype": "FP32", "shape": [96, 4096]}
        body = {"inputs": [{**tensor, "data": x.ravel().tolist()}]}
        raw = json.dumps(body).encode()
        assert len(raw) > 2 * RequestLimits().json_offload_bytes  # decoded in a worker thread
        assert lift_number_arrays(raw)[1]  # and its array parsed in pieces
        status, _, answer = _post(running, raw, "rowsum")
        assert status == 200, answer[:300]
        got = np.array(json.loads(answer)["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(got, x.sum(axis=1), rtol=1e-5)
        # One element short, and one bad number deep inside: still a 400 naming the problem.
        short = {"inputs": [{**tensor, "data": x.ravel().tolist()[:-1]}]}
        assert "got 393215" in _error(_post(running, short, "rowsum"), 400)
        middle = len(raw) // 2
        bad = raw[:middle] + raw[middle:].replace(b", ", b", 1..2, ", 1)
        assert "not valid JSON" in _error(_post(running, bad, "rowsum"), 400)
