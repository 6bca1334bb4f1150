"""Over 10,000 malformed or random requests (hypothesis), all to 127.0.0.1, most of them on
keep-alive connections with a valid request checked after every few; afterwards the server must
be healthy, must have answered none of them with a 5xx, and must still infer right."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_models import exchange, mlp_reference, save_mlp, save_multi

from edgeshift.serve import ServeOptions, ServerSettings, ServerThread
from edgeshift.serve.security import AuthSettings

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
        paths,
        port=0,
        options=ServeOptions(max_queue=64),
        max_body_bytes=1 << 16,
        access_log=False,
        auth=AuthSettings(repository_api=True),  # the index is fuzzed too (never load/unload)
    )
    with ServerThread(settings_) as running:
        yield running


def _check_answer(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status < 500, body[:300]
    if status != 200:
        assert headers["content-type"] == "application/json"
        message = json.loads(body)["error"]
        assert isinstance(message, str) and message and "\n" not in message


SENT = [0]  # requests the fuzz tests sent, kept-alive or not


def _exchange(*args: Any, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    SENT[0] += 1
    return exchange(*args, **kwargs)


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
    _check_answer(*_exchange(server.url, "POST", f"/v2/models/{model}/infer", body, headers))


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
    _check_answer(*_exchange(server.url, "POST", path, body, headers))


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
    status, _, answer = _exchange(server.url, method, path, body)
    assert status < 500, answer[:300]


class KeepAlive:
    """One HTTP/1.1 connection reused for request after request; reopened when the server
    closes it (a 413 answered before the body is read closes the connection)."""

    def __init__(self, url: str) -> None:
        host, port = url.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def __call__(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        SENT[0] += 1
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                answer = response.read()
                if response.will_close:
                    self.conn.close()
                return response.status, dict(response.getheaders()), answer
            except (ConnectionError, http.client.HTTPException):
                # The server closed a kept-alive connection between requests: reopen once.
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def keep_alive(server: ServerThread) -> Iterator[KeepAlive]:
    client = KeepAlive(server.url)
    yield client
    client.conn.close()


def _valid(seed: int) -> tuple[bytes, np.ndarray]:
    rows = 1 + seed % 4
    x = np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)
    if seed % 2:  # binary, half the time
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [rows, 8],
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ]
            }
        ).encode()
        return header + x.tobytes(), x
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 8], "data": x.tolist()}]}
    return json.dumps(body).encode(), x


def _check_valid(client: KeepAlive, seed: int) -> None:
    body, x = _valid(seed)
    headers = {}
    if seed % 2:
        headers["Inference-Header-Content-Length"] = str(body.index(b"}]}") + 3)
    status, _, answer = client("POST", "/v2/models/dense/infer", body, headers)
    assert status == 200, answer[:300]
    got = np.array(json.loads(answer)["outputs"][0]["data"], np.float32).reshape(x.shape[0], 4)
    np.testing.assert_allclose(got, mlp_reference(x, 0), rtol=1e-4, atol=1e-5)


def _nest(value: object, depth: int) -> object:
    for _ in range(depth):
        value = [value]
    return value


valid_tensor = {"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}
mutations = st.one_of(
    st.fixed_dictionaries({"datatype": json_values}),
    st.fixed_dictionaries(
        {"shape": st.lists(st.integers(min_value=-3, max_value=2**64) | json_scalars, max_size=80)}
    ),
    st.fixed_dictionaries(
        {
            "shape": st.lists(st.integers(0, 4), max_size=5),
            "data": st.recursive(
                st.lists(st.floats(width=32) | st.integers(-300, 300) | st.booleans(), max_size=9),
                lambda inner: st.lists(inner, max_size=4),
                max_leaves=24,
            ),
        }
    ),
    st.fixed_dictionaries({"data": st.integers(1, 400).map(lambda d: _nest(0.5, d))}),
    st.fixed_dictionaries({"parameters": json_values}),
    st.fixed_dictionaries({"name": json_values}),
)


@st.composite
def malformed(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """One request that should be refused: (path, body, headers)."""
    kind = draw(st.sampled_from(["mutate", "top", "binary", "header", "index", "bytes"]))
    headers: dict[str, str] = {}
    if kind == "mutate":
        tensor = {**valid_tensor, **draw(mutations)}
        return "/v2/models/dense/infer", json.dumps({"inputs": [tensor]}).encode(), headers
    if kind == "top":
        request = {
            "inputs": [valid_tensor],
            draw(st.sampled_from(["id", "parameters", "outputs"])): draw(json_values),
        }
        return "/v2/models/dense/infer", json.dumps(request).encode(), headers
    if kind == "binary":
        datatype = draw(datatypes)
        shape = draw(st.lists(st.integers(0, 2**40) | st.integers(0, 9), max_size=4))
        size = draw(st.integers(0, 300) | st.integers(0, 2**70) | json_scalars)
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": datatype,
                        "shape": shape,
                        "parameters": {"binary_data_size": size},
                    }
                ]
            }
        ).encode()
        payload = draw(st.binary(max_size=300))
        headers["Inference-Header-Content-Length"] = str(len(header))
        return "/v2/models/dense/infer", header + payload, headers
    if kind == "header":
        body = json.dumps({"inputs": [valid_tensor]}).encode()
        headers["Inference-Header-Content-Length"] = draw(
            st.sampled_from(["+", "-", "0", "00", "1_", "0x", "1e"]).map(
                lambda p: p + str(len(body))
            )
            | st.text(alphabet="0123456789+-_ex. ", min_size=1, max_size=8)
            .map(str.strip)
            .filter(bool)
        )
        return "/v2/models/dense/infer", body, headers
    if kind == "index":
        body = draw(
            st.one_of(
                json_values.map(lambda v: json.dumps(v).encode()),
                st.integers(1, 500).map(lambda d: b"[" * d + b"]" * d),
                st.integers(1, 300).map(lambda d: b'{"ready":' * d + b"true" + b"}" * d),
                st.binary(max_size=64),
            )
        )
        return "/v2/repository/index", body, headers
    return "/v2/models/dense/infer", draw(st.binary(max_size=200)), headers


@settings(FUZZ, max_examples=500)
@given(batch=st.lists(malformed(), min_size=16, max_size=16), seed=st.integers(0, 2**32 - 1))
def test_malformed_requests_on_kept_alive_connections_interleaved_with_valid_ones(
    keep_alive: KeepAlive, batch: list[tuple[str, bytes, dict[str, str]]], seed: int
) -> None:
    for path, body, headers in batch:
        headers = {k: v for k, v in headers.items() if re.fullmatch(r"[!-~]([ -~]*[!-~])?", v)}
        status, answer_headers, answer = keep_alive("POST", path, body, headers)
        if path.endswith("/index"):
            assert status < 500, answer[:300]
        else:
            _check_answer(status, answer_headers, answer)
    _check_valid(keep_alive, seed)


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
    assert SENT[0] >= 10_000


def test_fuzz_models_exist(tmp_path: Path) -> None:
    # Guards the fixture: a typo in a model name would turn every fuzz case into a 404.
    save_mlp(tmp_path / "dense.onnx")
    with ServerThread(ServerSettings([tmp_path / "dense.onnx"], port=0, access_log=False)) as s:
        assert exchange(s.url, "GET", "/v2/models/dense")[0] == 200
