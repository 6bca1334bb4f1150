"""Shared test fixtures: tiny models built with onnx.helper, so numbers are hand-checkable."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def make_mlp(seed: int = 0, sizes: tuple[int, ...] = (8, 16, 4)) -> tuple[onnx.ModelProto, list]:
    """Gemm → Relu → Gemm with a dynamic batch dim; returns the model and its weights."""
    rng = np.random.default_rng(seed)
    weights = []
    nodes = []
    inits = []
    prev = "x"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.1).astype(np.float32)
        weights.append((w, b))
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(
            helper.make_node(
                "Gemm", [prev, f"w{i}", f"b{i}"], [out + "_pre" if out != "y" else out]
            )
        )
        if out != "y":
            nodes.append(helper.make_node("Relu", [out + "_pre"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model, weights


def mlp_reference(x: np.ndarray, weights: list) -> np.ndarray:
    h = x.astype(np.float64)
    for i, (w, b) in enumerate(weights):
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    return h


@pytest.fixture
def mlp(tmp_path: Path) -> tuple[Path, list]:
    model, weights = make_mlp()
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    return path, weights


@pytest.fixture
def mlp_path(mlp: tuple[Path, list]) -> Path:
    return mlp[0]


@pytest.fixture
def embedding_path(tmp_path: Path) -> Path:
    """input_ids [batch, seq] int64 → Gather into a 10-row table → ReduceMean: token ids matter."""
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
            helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0),
        ],
        "emb",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / "emb.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture
def custom_op_path(tmp_path: Path) -> Path:
    """A valid ONNX file whose op lives in a domain no runtime knows."""
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    model.ir_version = 9
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    return path


# The Cortex-M toolchain. Tests that build or run firmware take ``arm_toolchain``: it skips
# where arm-none-eabi-gcc or qemu-system-arm is missing on a developer's machine and fails
# under CI (CI=true), where .ci/run installs them, so CI never passes by skipping that path.
ARM_TOOLS = (
    "arm-none-eabi-gcc",
    "arm-none-eabi-size",
    "arm-none-eabi-nm",
    "qemu-system-arm",
    "gcc",
)


@pytest.fixture(scope="session")
def arm_toolchain() -> None:
    missing = [t for t in ARM_TOOLS if shutil.which(t) is None]
    if missing:
        message = (
            f"missing {', '.join(missing)}: apt-get install gcc-arm-none-eabi "
            "libnewlib-arm-none-eabi qemu-system-arm"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
