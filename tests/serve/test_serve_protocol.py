"""The OIP v2 codecs against hand-built bytes and against tritonclient's own encoder/decoder."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.http._utils import _get_inference_request

from edgeshift.errors import ProtocolError
from edgeshift.model.shapes import TensorSpec
from edgeshift.serve.limits import RequestLimits
from edgeshift.serve.protocol import (
    DATATYPES,
    InferRequest,
    RequestedOutput,
    TensorBudget,
    check_request,
    decode_bytes_elements,
    decode_infer_request,
    decode_json_tensor,
    decode_raw_tensor,
    encode_bytes_elements,
    encode_infer_response,
    loads_json,
    parse_header_length,
    parse_tensor_header,
)

SAMPLES = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], np.uint8),
    "UINT16": np.array([[0, 7, 65535]], np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], np.uint64),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-32768, 0, 32767]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], np.float16),
    "FP32": np.array([[-1.5, 1e-30, 3.4e38]], np.float32),
    "FP64": np.array([[-1.5, 1e-300, 1.7e308]], np.float64),
    "BYTES": np.array([[b"ab", b"", "é".encode()]], dtype=object),
}


def _client_body(arr: np.ndarray, datatype: str, binary: bool) -> tuple[bytes, int | None]:
    inp = th.InferInput("x", list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    body, header_length = _get_inference_request(
        [inp],
        "req-1",
        [th.InferRequestedOutput("y", binary_data=binary)],
        0,
        False,
        False,
        0,
        None,
        None,
    )
    return body if isinstance(body, bytes) else body.encode(), header_length


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_decode_matches_what_tritonclient_encodes(datatype: str, binary: bool) -> None:
    arr = SAMPLES[datatype]
    body, header_length = _client_body(arr, datatype, binary)
    assert (header_length is not None) == binary
    request = decode_infer_request(body, header_length)
    got = request.inputs["x"]
    assert got.shape == arr.shape
    assert request.datatypes == {"x": datatype}
    assert request.id == "req-1"
    assert request.outputs == [RequestedOutput("y", binary)]
    if datatype == "BYTES":
        assert got.tolist() == arr.tolist()
    else:
        assert got.dtype == DATATYPES[datatype]
        np.testing.assert_array_equal(got, arr)  # exact: both paths are lossless for these values


def test_bf16_is_binary_only_and_decodes_exactly() -> None:
    arr = np.array([[1.0, -2.5, 0.0078125]], dtype=ml_dtypes.bfloat16)  # all exact in bf16
    body, header_length = _client_body(arr, "BF16", True)
    got = decode_infer_request(body, header_length).inputs["x"]
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got.astype(np.float32), [[1.0, -2.5, 0.0078125]])
    header = {"inputs": [{"name": "x", "datatype": "BF16", "shape": [1], "data": [1.0]}]}
    with pytest.raises(ProtocolError, match="BF16 data must be sent as binary"):
        decode_infer_request(json.dumps(header).encode())


def test_bytes_elements_are_length_prefixed_little_endian() -> None:
    raw = encode_bytes_elements(np.array([b"ab", "", "é"], dtype=object))
    assert raw == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00\xc3\xa9"
    assert decode_bytes_elements(raw, 3, "x").tolist() == [b"ab", b"", "é".encode()]
    with pytest.raises(ProtocolError, match="ends after 3 of 4"):
        decode_bytes_elements(raw, 4, "x")
    # A huge shape with a tiny payload is refused before anything is allocated.
    with pytest.raises(ProtocolError, match="cannot hold 4000000000 BYTES elements"):
        decode_bytes_elements(raw, 4_000_000_000, "x")
    with pytest.raises(ProtocolError, match="bytes left after 2"):
        decode_bytes_elements(raw, 2, "x")
    with pytest.raises(ProtocolError, match="claims 2 bytes past the end"):
        decode_bytes_elements(raw[:-1], 3, "x")


def test_binary_body_layout_by_hand() -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "a",
                    "datatype": "FP32",
                    "shape": [2],
                    "parameters": {"binary_data_size": 8},
                },
                {"name": "b", "datatype": "INT64", "shape": [1, 1], "data": [[5]]},
                {
                    "name": "c",
                    "datatype": "INT16",
                    "shape": [1],
                    "parameters": {"binary_data_size": 2},
                },
            ]
        }
    ).encode()
    body = header + struct.pack("<2f", 1.0, -2.0) + struct.pack("<h", -3)
    request = decode_infer_request(body, len(header))
    np.testing.assert_array_equal(request.inputs["a"], [1.0, -2.0])
    np.testing.assert_array_equal(request.inputs["b"], [[5]])
    np.testing.assert_array_equal(request.inputs["c"], [-3])
    assert request.outputs is None and request.binary_output is False


def test_nested_json_data_is_row_major() -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}
    ).encode()
    np.testing.assert_array_equal(decode_infer_request(body).inputs["x"], [[1, 2], [3, 4]])


def _header(**tensor: object) -> bytes:
    spec = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0], **tensor}
    return json.dumps({"inputs": [spec]}).encode()


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"\xff\xfe", None, "not valid JSON"),
        (b"[1, 2]", None, "must be an object"),
        (b"{}", None, "non-empty 'inputs'"),
        (_header(datatype="FP8"), None, "unknown datatype 'FP8'"),
        (_header(shape=[3]), None, "needs 3 elements, got 2"),
        (_header(shape=[-1]), None, "non-negative integers"),
        (_header(shape="2"), None, "non-negative integers"),
        (_header(data=["a", "b"]), None, "not a valid FP32 array"),
        (_header(data=[[1.0], [2.0, 3.0]]), None, "not a valid FP32 array"),
        (_header(datatype="UINT8", data=[1, 300]), None, "not a valid UINT8 array"),
        (_header(datatype="BOOL", data=[1, 0]), None, "true/false"),
        (_header(datatype="FP16", data=[1.0, 1e9]), None, "not a valid FP16 array"),
        (_header(datatype="BYTES", data=[1, 2]), None, "must be strings"),
        (_header(name=""), None, "'name' string"),
        (_header(parameters=[1]), None, "'parameters' must be a JSON object"),
        (_header(data=None, parameters={"binary_data_size": 8}), None, "no Inference-Header"),
        (
            json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}).encode(),
            None,
            "neither",
        ),
        (json.dumps({"id": 3, "inputs": []}).encode(), None, "'id' must be a string"),
    ],
)
def test_malformed_requests_are_400_with_a_reason(
    body: bytes, header_length: int | None, message: str
) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        decode_infer_request(body, header_length)
    assert info.value.status == 400


def test_binary_size_errors() -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    ).encode()
    payload = struct.pack("<2f", 1.0, 2.0)
    with pytest.raises(ProtocolError, match="truncated"):
        decode_infer_request(header + payload[:5], len(header))
    with pytest.raises(ProtocolError, match="not claimed"):
        decode_infer_request(header + payload + b"\x00", len(header))
    with pytest.raises(ProtocolError, match="Inference-Header-Content-Length is 999"):
        decode_infer_request(header + payload, 999)
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode_infer_request(header + payload, len(header) - 1)
    with pytest.raises(ProtocolError, match="Inference-Header-Content-Length is 0"):
        decode_infer_request(header + payload, 0)
    wrong = header.replace(b'"shape": [2]', b'"shape": [3]')
    with pytest.raises(ProtocolError, match="binary_data_size is 8 bytes but shape"):
        decode_infer_request(wrong + payload, len(wrong))


def test_duplicate_and_conflicting_fields() -> None:
    spec = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}
    with pytest.raises(ProtocolError, match="given twice"):
        decode_infer_request(json.dumps({"inputs": [spec, spec]}).encode())
    outputs = [{"name": "y"}, {"name": "y"}]
    with pytest.raises(ProtocolError, match="requested twice"):
        decode_infer_request(json.dumps({"inputs": [spec], "outputs": outputs}).encode())
    outputs = [{"name": "y", "parameters": {"classification": 3}}]
    with pytest.raises(ProtocolError, match="classification"):
        decode_infer_request(json.dumps({"inputs": [spec], "outputs": outputs}).encode())


def _request(outputs: list[RequestedOutput] | None, binary_output: bool = False) -> InferRequest:
    return InferRequest(
        inputs={}, datatypes={}, id="r7", outputs=outputs, binary_output=binary_output
    )


def test_response_decodes_with_tritonclient_binary_and_json() -> None:
    outputs = {
        "y": np.array([[1.5, -2.0]], np.float32),
        "s": np.array(["hé", "x"], dtype=object),
        "i": np.array([3], np.int64),
    }
    request = _request(
        [RequestedOutput("y", True), RequestedOutput("s", True), RequestedOutput("i", False)]
    )
    encoded = encode_infer_response("m", "2", outputs, request)
    assert encoded.content_type == "application/octet-stream"
    header = json.loads(encoded.body[: encoded.header_length])
    assert header["model_name"] == "m" and header["model_version"] == "2" and header["id"] == "r7"
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert header["outputs"][2]["data"] == [3]
    # Binary payload: y's 8 bytes, then s length-prefixed.
    assert encoded.body[encoded.header_length :] == (
        struct.pack("<2f", 1.5, -2.0) + b"\x03\x00\x00\x00h\xc3\xa9" + b"\x01\x00\x00\x00x"
    )
    result = th.InferResult.from_response_body(encoded.body, header_length=encoded.header_length)
    np.testing.assert_array_equal(result.as_numpy("y"), outputs["y"])
    assert result.as_numpy("s").tolist() == ["hé".encode(), b"x"]
    np.testing.assert_array_equal(result.as_numpy("i"), [3])

    as_json = encode_infer_response("m", "2", outputs, _request(None))
    assert as_json.header_length is None and as_json.content_type == "application/json"
    result = th.InferResult.from_response_body(as_json.body)
    np.testing.assert_array_equal(result.as_numpy("y"), outputs["y"])
    assert result.as_numpy("s").tolist() == ["hé", "x"]


def test_request_wide_binary_output_and_bf16_output() -> None:
    outputs = {"y": np.array([1.0, 2.0], dtype=ml_dtypes.bfloat16)}
    encoded = encode_infer_response("m", "1", outputs, _request(None, binary_output=True))
    assert (
        encoded.body[encoded.header_length :] == np.array([1.0, 2.0], ml_dtypes.bfloat16).tobytes()
    )
    with pytest.raises(ProtocolError, match="BF16"):
        encode_infer_response("m", "1", outputs, _request(None))


def test_check_request_against_the_model_signature() -> None:
    inputs = [TensorSpec("x", "float32", ("batch", 4)), TensorSpec("k", "int64", (1,))]
    outputs = [TensorSpec("y", "float32", ("batch", 2))]

    def req(**arrays: np.ndarray) -> InferRequest:
        return InferRequest(
            inputs=dict(arrays),
            datatypes={n: "FP32" if a.dtype == np.float32 else "INT64" for n, a in arrays.items()},
        )

    ok = {"x": np.zeros((3, 4), np.float32), "k": np.zeros(1, np.int64)}
    check_request(req(**ok), inputs, outputs)
    with pytest.raises(ProtocolError, match="unknown input 'z'"):
        check_request(req(**ok, z=np.zeros(1, np.int64)), inputs, outputs)
    with pytest.raises(ProtocolError, match="missing input 'k'"):
        check_request(req(x=ok["x"]), inputs, outputs)
    with pytest.raises(ProtocolError, match=r"datatype INT64; the model wants FP32"):
        check_request(req(x=np.zeros((3, 4), np.int64), k=ok["k"]), inputs, outputs)
    with pytest.raises(ProtocolError, match=r"shape \[3, 5\]; the model wants \[-1, 4\]"):
        check_request(req(x=np.zeros((3, 5), np.float32), k=ok["k"]), inputs, outputs)
    with pytest.raises(ProtocolError, match=r"shape \[12\]"):
        check_request(req(x=np.zeros(12, np.float32), k=ok["k"]), inputs, outputs)
    bad_output = req(**ok)
    bad_output.outputs = [RequestedOutput("nope", None)]
    with pytest.raises(ProtocolError, match="unknown output 'nope'"):
        check_request(bad_output, inputs, outputs)


@pytest.mark.parametrize("parser", ["orjson", "json"])
def test_both_json_parsers_decode_alike(parser: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeshift.serve.protocol as protocol

    if parser == "orjson":
        orjson = pytest.importorskip("orjson")
        monkeypatch.setattr(protocol, "_loads", orjson.loads)
    else:
        monkeypatch.setattr(protocol, "_loads", json.loads)
    arr = SAMPLES["FP32"]
    body, header_length = _client_body(arr, "FP32", False)
    np.testing.assert_array_equal(decode_infer_request(body, header_length).inputs["x"], arr)
    for bad in (b"{not json", b"\xff\xfe", b"[" * 100_000):
        with pytest.raises(ProtocolError, match="JSON"):
            decode_infer_request(bad)


SMALL = RequestLimits(max_rows=10, max_tensor_bytes=1024, max_dims=3)


@pytest.mark.parametrize(
    ("datatype", "shape", "status", "needle"),
    [
        ([], [1], 400, "unknown datatype"),
        ({}, [1], 400, "unknown datatype"),
        ("fp32", [1], 400, "unknown datatype"),
        ("FP32", [1, 1, 1, 1], 400, "--max-dims"),
        ("FP32", [1, -1], 400, "non-negative"),
        ("FP32", [1, True], 400, "non-negative"),
        ("FP32", [1, 2.0], 400, "non-negative"),
        ("FP32", {"a": 1}, 400, "non-negative"),
        ("FP32", "12", 400, "non-negative"),
        ("FP32", 12, 400, "non-negative"),
        ("FP32", [11, 1], 413, "--max-rows"),
        ("FP32", [0, 2**62], 413, "--max-tensor-mb"),
        ("FP32", [2, 129], 413, "--max-tensor-mb"),
        ("INT8", [0, 1, 2**40], 413, "--max-tensor-mb"),
    ],
)
def test_tensor_headers_are_checked_before_allocation(
    datatype: object, shape: object, status: int, needle: str
) -> None:
    with pytest.raises(ProtocolError, match=needle) as info:
        parse_tensor_header("x", datatype, shape, SMALL)
    assert info.value.status == status


def test_tensor_header_limits_are_inclusive_and_take_any_int_sequence() -> None:
    assert parse_tensor_header("x", "FP32", [10, 25], SMALL) == 250  # 1000 bytes, 10 rows
    assert parse_tensor_header("x", "FP32", (2, 128), SMALL) == 256  # exactly 1024 bytes
    assert parse_tensor_header("x", "FP32", [], SMALL) == 1
    assert parse_tensor_header("x", "FP32", [0, 3], SMALL) == 0
    # gRPC's shape is a protobuf repeated int64
    from tritonclient.grpc import service_pb2

    tensor = service_pb2.ModelInferRequest.InferInputTensor(shape=[4, 2])
    assert parse_tensor_header("x", "INT64", tensor.shape, SMALL) == 8


def test_the_tensor_budget_sums_every_input() -> None:
    budget = TensorBudget(SMALL)
    raw = np.zeros(128, np.float32).tobytes()  # 512 bytes each: two fit, three do not
    decode_raw_tensor("a", "FP32", [1, 128], raw, SMALL, budget)
    decode_json_tensor("b", "FP32", [1, 128], [0.0] * 128, SMALL, budget)
    with pytest.raises(ProtocolError, match="at 'c'.*--max-tensor-mb") as info:
        decode_raw_tensor("c", "FP32", [1], raw[:4], SMALL, budget)
    assert info.value.status == 413
    header = {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [1, 128], "data": [0.0] * 128} for n in "abc"
        ]
    }
    with pytest.raises(ProtocolError, match="--max-tensor-mb"):
        decode_infer_request(json.dumps(header).encode(), None, SMALL)


def test_raw_tensors_decode_zero_copy_and_check_their_size() -> None:
    raw = np.arange(6, dtype=np.int32).tobytes()
    arr = decode_raw_tensor("x", "INT32", [2, 3], raw)
    np.testing.assert_array_equal(arr, [[0, 1, 2], [3, 4, 5]])
    assert arr.base is not None  # a view of the body, not a copy
    with pytest.raises(ProtocolError, match="needs 28"):
        decode_raw_tensor("x", "INT32", [7], raw)


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "needle"),
    [
        ("FP32", [2, 2], [[1.0, 2.0, 3.0, 4.0]], "nested as"),
        ("FP32", [4], [[1.0, 2.0], [3.0, 4.0]], "nested as"),
        ("FP32", [2, 2], [[1.0], [2.0, 3.0]], "not a valid FP32"),
        ("FP32", [2], ["1", "2"], "must be numbers"),
        ("INT32", [2], [1.5, 2.0], "must be integers"),
        ("INT8", [2], [1, 300], "outside"),
        ("UINT8", [1], [-1], "outside"),
        ("BOOL", [2], [1, 0], "true/false"),
        ("FP32", [2], [True, False], "must be numbers"),
        ("FP16", [1], [1e9], "not a valid FP16"),
        ("BYTES", [2, 1], [["a", "b"]], "nested"),
        ("BYTES", [2], ["a", 1], "must be strings"),
        ("FP32", [], [1.0, 2.0], "needs 1 elements"),
    ],
)
def test_json_data_must_match_the_declared_type_and_shape(
    datatype: str, shape: list[int], data: object, needle: str
) -> None:
    with pytest.raises(ProtocolError, match=needle):
        decode_json_tensor("x", datatype, shape, data)


def test_json_data_flat_or_nested_as_the_shape() -> None:
    flat = decode_json_tensor("x", "FP32", [2, 2], [1, 2, 3, 4])
    nested = decode_json_tensor("x", "FP32", [2, 2], [[1, 2], [3, 4]])
    assert flat.dtype == np.float32 and flat.shape == (2, 2)
    np.testing.assert_array_equal(flat, nested)
    big = decode_json_tensor("x", "UINT64", [2], [2**64 - 1, 1])
    assert big.dtype == np.uint64 and big[0] == 2**64 - 1
    assert decode_json_tensor("x", "FP32", [], 2.5).shape == ()
    assert decode_json_tensor("x", "INT64", [0, 3], []).shape == (0, 3)


@pytest.mark.parametrize("value", ["+110", " 110", "110 ", "1_0", "-1", "0x1", "١١٠", "", "9" * 20])
def test_header_length_is_plain_digits(value: str) -> None:
    with pytest.raises(ProtocolError, match="plain integer") as info:
        parse_header_length(value)
    assert info.value.status == 400


def test_header_length_digits() -> None:
    assert parse_header_length(b"110") == 110
    assert parse_header_length(None) is None


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"\xff", b"{"],
)
def test_any_json_is_a_400_never_a_crash(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="not valid JSON") as info:
        loads_json(body)
    assert info.value.status == 400


def test_request_parameters_and_ids_are_type_checked() -> None:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}
    for bad, needle in [
        ({"inputs": [tensor], "parameters": {"p": [1]}}, "string, number or boolean"),
        ({"inputs": [tensor], "parameters": {"p": {"q": 1}}}, "string, number or boolean"),
        ({"inputs": [{**tensor, "parameters": {"p": []}}]}, "string, number or boolean"),
        ({"inputs": [tensor], "id": {"a": 1}}, "'id' must be a string"),
        ({"inputs": [tensor], "id": None, "parameters": {"binary_data_output": 1}}, "true or"),
    ]:
        with pytest.raises(ProtocolError, match=needle):
            decode_infer_request(json.dumps(bad).encode())


def test_non_finite_outputs_are_strings_that_strict_parsers_and_numpy_read() -> None:
    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant}")

    values = np.array([np.nan, np.inf, -np.inf, 1.5], np.float32)
    request = InferRequest(inputs={}, datatypes={})
    body = encode_infer_response("m", "1", {"y": values}, request).body
    data = json.loads(body, parse_constant=refuse)["outputs"][0]["data"]
    assert data == ["NaN", "Infinity", "-Infinity", 1.5]
    back = np.array(data, dtype=np.float32)  # what tritonclient's as_numpy does
    assert np.isnan(back[0]) and back[1] == np.inf and back[2] == -np.inf and back[3] == 1.5


@pytest.fixture
def tiny_pieces(monkeypatch: pytest.MonkeyPatch) -> RequestLimits:
    """Large-array parsing at test sizes: arrays over 64 bytes are lifted, in 16-byte pieces."""
    from edgeshift.serve import json_numbers

    monkeypatch.setattr(json_numbers, "LIFT_BYTES", 64)
    monkeypatch.setattr(json_numbers, "PIECE_BYTES", 16)
    return RequestLimits(json_offload_bytes=100)


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT64", "INT8", "UINT64"])
def test_large_number_arrays_decode_in_pieces_like_the_whole(
    tiny_pieces: RequestLimits, datatype: str
) -> None:
    values = SAMPLES[datatype].ravel().tolist() * 30
    for spacing in (",", " , ", ",\n"):
        data = "[" + spacing.join(json.dumps(v) for v in values) + "]"
        head = {"name": "x", "datatype": datatype, "shape": [len(values)]}
        y = {"name": "y", "datatype": "INT64", "shape": [2], "data": [1, 2]}
        x = json.dumps(head)[:-1] + ', "data" : ' + data + "}"
        text = ('{"id": "a", "inputs": [' + x + ", " + json.dumps(y) + "]}").encode()
        got = decode_infer_request(text, None, tiny_pieces)
        want = decode_infer_request(text, None, RequestLimits())  # one orjson call
        assert got.id == "a"
        np.testing.assert_array_equal(got.inputs["x"], want.inputs["x"])
        assert got.inputs["x"].dtype == DATATYPES[datatype]
        np.testing.assert_array_equal(got.inputs["y"], [1, 2])


@pytest.mark.parametrize(
    ("data", "datatype", "count", "needle"),
    [
        ("[" + "1," * 60 + "]", "FP32", 60, "not valid JSON"),
        ("[" + "1,," * 30 + "1]", "FP32", 61, "not valid JSON"),
        ("[" + "1.5," * 40 + "1-2]", "FP32", 41, "not valid JSON"),
        ("[" + "1.5," * 40 + "1]", "INT32", 41, "must be integers"),
        ("[" + "300," * 40 + "1]", "INT8", 41, "outside"),
        ("[" + "1," * 40 + "1]", "FP32", 40, "more than the shape's 40"),
        ("[" + "1," * 40 + "1]", "FP32", 42, "needs 42 elements, got 41"),
        ("[" + "1," * 40 + "1]", "BOOL", 41, "true/false"),
        ("[" + "1," * 40 + "1]", "BYTES", 41, "strings"),
        ("[" + "1e9," * 40 + "1]", "FP16", 41, "not a valid FP16"),
    ],
)
def test_large_number_arrays_refuse_what_the_whole_parse_refuses(
    tiny_pieces: RequestLimits, data: str, datatype: str, count: int, needle: str
) -> None:
    head = json.dumps({"name": "x", "datatype": datatype, "shape": [count]})
    text = ('{"inputs": [' + head[:-1] + ', "data": ' + data + "}]}").encode()
    with pytest.raises(ProtocolError, match=needle) as info:
        decode_infer_request(text, None, tiny_pieces)
    assert info.value.status == 400


def test_only_plain_number_arrays_are_lifted(tiny_pieces: RequestLimits) -> None:
    from edgeshift.serve.json_numbers import lift_number_arrays

    numbers = ",".join(["1.25"] * 40)
    for text in (
        f'{{"data": [[{numbers}]]}}',  # nested: orjson's
        f'{{"data": [{numbers}, true]}}',
        f'{{"data": ["{numbers}"]}}',
        f'{{"name": "data", "x": [{numbers}]}}',
        f'{{"da\\"ta": [{numbers}]}}',
        '{"data": [1, 2]}',  # small
    ):
        assert lift_number_arrays(text.encode()) == (text.encode(), {})
    lifted_text, lifted = lift_number_arrays((f'{{"data" :\n[{numbers}]}}').encode())
    assert len(lifted) == 1 and numbers.encode() not in lifted_text
    # a client cannot name a lifted array itself: the placeholder holds a random token
    (token,) = lifted
    assert token.encode() in lifted_text and len(token) > 30
