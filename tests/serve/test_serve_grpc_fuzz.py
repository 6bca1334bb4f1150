"""Hypothesis fuzz of the gRPC front end: thousands of malformed ModelInferRequests (and bytes
that are no message at all) on one real server, with valid requests interleaved whose answers
are checked. No call may end INTERNAL or UNKNOWN, and the server keeps serving."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_models import mlp_reference, save_fixed, save_mlp, save_multi, save_strings
from tritonclient.grpc import service_pb2 as pb

from edgeshift.serve import ServeOptions, ServerSettings, ServerThread
from edgeshift.serve.limits import RequestLimits
from edgeshift.serve.protocol import DATATYPES

INFER = "/inference.GRPCInferenceService/ModelInfer"
BATCHES = 250  # examples; each sends MALFORMED_PER_BATCH bad requests and one good one
MALFORMED_PER_BATCH = 20
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# Batched float32 GEMMs may sum in another order than the one-row reference: a few ulps.
RTOL, ATOL = 1e-5, 1e-6

_TYPED_FIELDS = [f.name for f in pb.InferTensorContents.DESCRIPTOR.fields]
# Mostly names a served model knows, so requests get past the lookup to the tensor checks.
_DATATYPES = [*DATATYPES, "FP32", "FP32", "INT64", "BYTES", "", "FP33", "fp32", "BYTES\x00"]
_NAMES = ["x", "x", "a", "b", "text", "y", "zz", "", "x\x00"]
_MODELS = ["dense", "multi", "strings", "fixed"] * 4 + ["nope", "", "../dense", "dense\n"]
_VERSIONS = ["", "", "", "", "1", "1", "2", "-1", "x"]

dims = st.one_of(
    st.integers(0, 9),
    st.sampled_from([1, 3, 4, 8]),
    st.integers(-(2**63), -1),
    st.integers(2**20, 2**63 - 1),
    st.sampled_from([0, 1, 8, 3, 4, 65536, 1001]),
)


def _typed_values(field: str) -> st.SearchStrategy[list[Any]]:
    if field == "bool_contents":
        return st.lists(st.booleans(), max_size=24)
    if field == "bytes_contents":
        return st.lists(st.binary(max_size=6), max_size=24)
    if field.startswith("fp"):
        return st.lists(st.floats(width=32), max_size=24)
    bits = 64 if "64" in field else 32
    if field.startswith("uint"):
        return st.lists(st.integers(0, 2**bits - 1), max_size=24)
    return st.lists(st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1), max_size=24)


@st.composite
def tensor(draw: st.DrawFn) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]:
    """One input tensor with typed contents, or the raw bytes meant to go with it."""
    datatype = draw(st.sampled_from(_DATATYPES))
    shape = draw(st.lists(dims, max_size=draw(st.sampled_from([2, 3, 20]))))
    spec = pb.ModelInferRequest.InferInputTensor(
        name=draw(st.sampled_from(_NAMES)), datatype=datatype, shape=shape
    )
    mode = draw(st.sampled_from(["raw", "typed", "both", "none"]))
    raw = None
    if mode in ("raw", "both"):
        itemsize = DATATYPES[datatype].itemsize if datatype in DATATYPES else 4
        count = math.prod(shape) if shape and all(0 <= d < 64 for d in shape) else 4
        size = max(0, count * itemsize + draw(st.sampled_from([0, 0, -1, 1, -4, 7])))
        raw = draw(st.binary(min_size=min(size, 2048), max_size=min(size, 2048)))
    if mode in ("typed", "both"):
        for field in draw(st.lists(st.sampled_from(_TYPED_FIELDS), min_size=1, max_size=2)):
            getattr(spec.contents, field).extend(draw(_typed_values(field)))
    return spec, raw


@st.composite
def malformed(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["message"] * 8 + ["garbage", "truncated"]))
    if kind == "garbage":
        return draw(st.binary(max_size=64))
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(_MODELS)),
        model_version=draw(st.sampled_from(_VERSIONS)),
        id=draw(st.sampled_from(["", "id", "\u2603"])),
    )
    raws = []
    for spec, raw in draw(st.lists(tensor(), max_size=3)):
        request.inputs.append(spec)
        if raw is not None:
            raws.append(raw)
    if draw(st.booleans()):
        request.raw_input_contents.extend(raws)
    for name in draw(st.lists(st.sampled_from(["y", "sum", "nope", ""]), max_size=2)):
        out = request.outputs.add(name=name)
        if draw(st.booleans()):
            out.parameters["classification"].int64_param = 2
    data = request.SerializeToString()
    if kind == "truncated" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    return data


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    paths = [
        save_mlp(root / "dense.onnx"),
        save_multi(root / "multi.onnx"),
        save_strings(root / "strings.onnx"),
        save_fixed(root / "fixed.onnx"),
    ]
    settings = ServerSettings(
        paths,
        port=0,
        grpc_port=0,
        options=ServeOptions(max_batch=8),
        limits=RequestLimits(max_body_bytes=1 << 20, max_rows=4096, max_tensor_bytes=1 << 20),
        access_log=False,
    )
    with ServerThread(settings) as running:
        yield running


def test_malformed_grpc_requests_never_fail_the_server(server: ServerThread) -> None:
    assert server.grpc_url is not None
    codes: Counter[grpc.StatusCode] = Counter()
    sent = {"malformed": 0, "valid": 0}
    rng = np.random.default_rng(0)
    with grpc.insecure_channel(server.grpc_url) as channel:
        infer = channel.unary_unary(INFER, response_deserializer=pb.ModelInferResponse.FromString)

        def valid() -> None:
            x = rng.random((int(rng.integers(1, 4)), 8), dtype=np.float32)
            request = pb.ModelInferRequest(
                model_name="dense",
                inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32")],
                raw_input_contents=[x.tobytes()],
            )
            request.inputs[0].shape.extend(x.shape)
            response = infer(request.SerializeToString(), timeout=30)
            y = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(-1, 4)
            np.testing.assert_allclose(y, mlp_reference(x), rtol=RTOL, atol=ATOL)
            sent["valid"] += 1

        @settings(
            max_examples=BATCHES,
            deadline=None,
            derandomize=True,  # the same requests every run: a failure reproduces
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(st.lists(malformed(), min_size=MALFORMED_PER_BATCH, max_size=MALFORMED_PER_BATCH))
        def batch(bodies: list[bytes]) -> None:
            for body in bodies:
                try:
                    infer(body, timeout=30)
                    codes[grpc.StatusCode.OK] += 1
                except grpc.RpcError as exc:
                    codes[exc.code()] += 1
                    assert exc.code() not in BAD_CODES, (exc.code(), exc.details(), body[:200])
                    assert exc.details(), "every refusal says why"
                sent["malformed"] += 1
            valid()

        batch()
    assert sent["malformed"] >= BATCHES * MALFORMED_PER_BATCH >= 5000
    assert sent["valid"] >= BATCHES
    assert codes[grpc.StatusCode.INVALID_ARGUMENT] > 1000  # most were refused as malformed
