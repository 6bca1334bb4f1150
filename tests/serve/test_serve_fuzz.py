"""A few thousand malformed or random requests (hypothesis), all to 127.0.0.1; afterwards the
server must be healthy, must have answered none of them with a 5xx, and must still infer right."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_models import exchange, mlp_reference, save_mlp, save_multi

from edgeshift.serve import ServeOptions, ServerSettings, ServerThread

pytestmark = pytest.mark.slow

FUZZ = settings(
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("fuzz")
    paths = [save_mlp(root / "dense.onnx"), save_multi(root / "multi.onnx")]
    settings_ = ServerSettings(
        paths, port=0, options=ServeOptions(max_queue=64), max_body_bytes=1 << 16, access_log=False
    )
    with ServerThread(settings_) as running:
        yield running


def _check_answer(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status < 500, body[:300]
    if status != 200:
        assert headers["content-type"] == "application/json"
        message = json.loads(body)["error"]
        assert isinstance(message, str) and message and "\n" not in message


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
datatypes = st.sampled_from(
    ["FP32", "FP64", "FP16", "BF16", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "fp32", "", "X"]
)
shapes = st.one_of(
    st.lists(st.integers(min_value=-2, max_value=9), max_size=4),
    json_values,
)


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, object]:
    tensor: dict[str, object] = {
        "name": draw(st.sampled_from(["x", "a", "b", "", "y"]) | st.text(max_size=4)),
        "datatype": draw(datatypes),
        "shape": draw(shapes),
    }
    if draw(st.booleans()):
        tensor["data"] = draw(
            st.lists(st.floats(allow_nan=False, width=32), max_size=20) | json_values
        )
    if draw(st.booleans()):
        tensor["parameters"] = {"binary_data_size": draw(st.integers(-4, 80) | json_scalars)}
    return tensor


@st.composite
def infer_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    request: dict[str, object] = {"inputs": draw(st.lists(tensors(), max_size=3))}
    if draw(st.booleans()):
        request["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries({"name": st.sampled_from(["y", "sum", "twice", "q"])}),
                max_size=3,
            )
            | json_values
        )
    if draw(st.booleans()):
        request["id"] = draw(json_scalars)
    if draw(st.booleans()):
        request["parameters"] = draw(st.fixed_dictionaries({"binary_data_output": json_scalars}))
    header = json.dumps(request).encode()
    payload = draw(st.binary(max_size=96))
    headers = {}
    choice = draw(st.sampled_from(["exact", "none", "random"]))
    if choice == "exact":
        headers["Inference-Header-Content-Length"] = str(len(header))
    elif choice == "random":
        headers["Inference-Header-Content-Length"] = draw(
            st.integers(-5, len(header) + len(payload) + 5).map(str) | st.text(max_size=4)
        )
    return header + payload, headers


@settings(FUZZ, max_examples=700)
@given(model=st.sampled_from(["dense", "multi"]), request=infer_bodies())
def test_structured_garbage_is_answered_with_4xx(
    server: ServerThread, model: str, request: tuple[bytes, dict[str, str]]
) -> None:
    body, headers = request
    headers = {k: v for k, v in headers.items() if re.fullmatch(r"[ -~]*", v)}  # legal header text
    _check_answer(*exchange(server.url, "POST", f"/v2/models/{model}/infer", body, headers))


@settings(FUZZ, max_examples=1500)
@given(
    body=st.binary(max_size=300),
    header_length=st.none() | st.integers(-2, 400),
    version=st.none() | st.sampled_from(["1", "0", "01", "x", "99999999999999999999"]),
)
def test_random_bytes_are_answered_with_4xx(
    server: ServerThread, body: bytes, header_length: int | None, version: str | None
) -> None:
    headers = (
        {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
    )
    path = "/v2/models/dense" + (f"/versions/{version}" if version else "") + "/infer"
    _check_answer(*exchange(server.url, "POST", path, body, headers))


segment = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"),
    min_size=1,
    max_size=8,
)


@settings(FUZZ, max_examples=500)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    parts=st.lists(
        st.sampled_from(
            [
                "v2",
                "models",
                "dense",
                "versions",
                "1",
                "ready",
                "infer",
                "repository",
                "index",
                "load",
                "unload",
                "health",
                "live",
            ]
        )
        | segment,
        max_size=6,
    ),
    body=st.binary(max_size=64),
)
def test_random_routes_never_fail_the_server(
    server: ServerThread, method: str, parts: list[str], body: bytes
) -> None:
    path = "/" + "/".join(parts)
    if path.endswith(("/load", "/unload")):
        return  # loading and unloading are valid requests, tested on their own
    status, _, answer = exchange(server.url, method, path, body)
    assert status < 500, answer[:300]


def test_after_the_fuzz_the_server_is_healthy_and_correct(server: ServerThread) -> None:
    # Runs after the fuzz tests in this module (pytest keeps file order).
    assert exchange(server.url, "GET", "/v2/health/ready")[0] == 200
    x = np.linspace(-2, 2, 8, dtype=np.float32)[None]
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": x.ravel().tolist()}]}
    )
    status, _, answer = exchange(server.url, "POST", "/v2/models/dense/infer", body.encode())
    assert status == 200
    got = np.array(json.loads(answer)["outputs"][0]["data"], np.float32).reshape(1, 4)
    np.testing.assert_allclose(got, mlp_reference(x, 0), rtol=1e-4, atol=1e-5)
    metrics = exchange(server.url, "GET", "/metrics")[2].decode()
    assert not re.search(r'edgeshift_inference_errors_total\{[^}]*status="5\d\d"', metrics)
    requests = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("edgeshift_inference_requests_total{")
    )
    assert requests >= 1000  # the fuzz really reached the inference route


def test_fuzz_models_exist(tmp_path: Path) -> None:
    # Guards the fixture: a typo in a model name would turn every fuzz case into a 404.
    save_mlp(tmp_path / "dense.onnx")
    with ServerThread(ServerSettings([tmp_path / "dense.onnx"], port=0, access_log=False)) as s:
        assert exchange(s.url, "GET", "/v2/models/dense")[0] == 200
