from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import mlp_reference

from edgeshift.errors import BackendError, DataError
from edgeshift.runtime import open_backend
from edgeshift.runtime.openvino import cpu_capabilities

HAS_BF16 = "BF16" in cpu_capabilities()


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_matches_numpy_reference(
    mlp: tuple[Path, list], batch: np.ndarray, backend: str
) -> None:
    path, weights = mlp
    rt = open_backend(path, backend, "fp32", threads=1)
    out = rt.run({"x": batch})["y"]
    assert out.shape == (5, 4) and out.dtype == np.float32
    # fp32 accumulation over 8 and 16 terms of O(1) values: a few ulps of ~1e-7 relative.
    np.testing.assert_allclose(out, mlp_reference(batch, weights), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16")
def test_openvino_bf16_is_close_but_not_exact(mlp: tuple[Path, list], batch: np.ndarray) -> None:
    path, weights = mlp
    out = open_backend(path, "openvino", "bf16", threads=1).run({"x": batch})["y"]
    ref = mlp_reference(batch, weights)
    # bf16 keeps 8 mantissa bits (relative step 2^-8 ≈ 0.4%) on inputs and weights of two layers;
    # outputs are O(1), so 5e-2 absolute covers the rounding with margin.
    np.testing.assert_allclose(out, ref, atol=5e-2)
    assert not np.array_equal(out, ref.astype(np.float32)), "bf16 hint was not applied"


def test_precision_is_recorded(mlp_path: Path) -> None:
    rt = open_backend(mlp_path, "openvino", "f32", threads=1)
    assert rt.precision == "fp32"
    assert rt.runtime_options()["precision"] == "fp32"


def test_threads_are_applied(mlp_path: Path) -> None:
    rt = open_backend(mlp_path, "onnxruntime", threads=1)
    assert rt.threads == 1
    assert rt.session.get_session_options().intra_op_num_threads == 1


def test_unknown_backend(mlp_path: Path) -> None:
    with pytest.raises(BackendError, match="unknown backend 'tensorrt'"):
        open_backend(mlp_path, "tensorrt")


def test_unknown_precision(mlp_path: Path) -> None:
    with pytest.raises(BackendError, match="unknown precision"):
        open_backend(mlp_path, "openvino", "int3")


def test_onnxruntime_does_not_pretend_bf16(mlp_path: Path) -> None:
    with pytest.raises(BackendError, match="optimize"):
        open_backend(mlp_path, "onnxruntime", "bf16")


def test_bad_thread_count(mlp_path: Path) -> None:
    with pytest.raises(BackendError, match="threads"):
        open_backend(mlp_path, threads=0)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_model_a_runtime_cannot_load(custom_op_path: Path, backend: str) -> None:
    with pytest.raises(
        BackendError, match=f"{'OpenVINO' if backend == 'openvino' else 'onnxruntime'} cannot load"
    ):
        open_backend(custom_op_path, backend)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_bad_feeds_are_data_errors(mlp_path: Path, backend: str) -> None:
    rt = open_backend(mlp_path, backend, threads=1)
    good = np.zeros((2, 8), np.float32)
    with pytest.raises(DataError, match="unknown input 'z'"):
        rt.run({"x": good, "z": good})
    with pytest.raises(DataError, match="missing input 'x'"):
        rt.run({})
    with pytest.raises(DataError, match="dtype float64"):
        rt.run({"x": good.astype(np.float64)})
    with pytest.raises(DataError, match="rank 2"):
        rt.run({"x": good[0]})
    with pytest.raises(DataError, match="axis 1 must be 8"):
        rt.run({"x": np.zeros((2, 7), np.float32)})
    with pytest.raises(DataError, match="unknown output"):
        rt.run({"x": good}, ["nope"])
    assert rt.run({"x": good})["y"].shape == (2, 4)  # still usable afterwards


def test_artifact_manifest_options_are_applied(tmp_path: Path, mlp_path: Path) -> None:
    art = tmp_path / "artifact"
    art.mkdir()
    (art / "model.onnx").write_bytes(mlp_path.read_bytes())
    manifest = {
        "model_file": "model.onnx",
        "backend": "openvino",
        "runtime_options": {"precision": "bf16" if HAS_BF16 else "fp32", "num_streams": 1},
    }
    (art / "manifest.json").write_text(json.dumps(manifest))
    rt = open_backend(art, threads=1)
    assert rt.name == "openvino"
    assert rt.precision == manifest["runtime_options"]["precision"]
    # An explicit backend overrides the artifact's and drops the other runtime's options.
    assert open_backend(art, "onnxruntime", threads=1).name == "onnxruntime"


def test_onnxruntime_spinning_can_be_turned_off(mlp_path: Path) -> None:
    spinning = open_backend(mlp_path, "onnxruntime", threads=1)
    quiet = open_backend(mlp_path, "onnxruntime", threads=1, options={"allow_spinning": False})
    key = "session.intra_op.allow_spinning"
    assert quiet.session.get_session_options().get_session_config_entry(key) == "0"
    assert quiet.runtime_options()["allow_spinning"] is False
    assert "allow_spinning" not in spinning.runtime_options()  # the default is not recorded
