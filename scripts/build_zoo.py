"""Rebuild the shipped zoo models and their eval data, deterministically.

    python scripts/build_zoo.py            # writes src/edgeshift/zoo/{models,data}/digits-*

Trains on scikit-learn's digits (1797 8x8 images, 16 grey levels) with a fixed stratified
split: 1437 training samples, 360 held-out test samples. Inputs are the pixel values / 16 as
float32. Each model is exported with edgeshift.model.torch_export.from_torch (opset 17,
dynamic ``batch`` axis, input ``input``, output ``logits``), which checks the file against
torch with onnxruntime. The test accuracy measured with onnxruntime on the held-out split is
printed and stored in the model's metadata (``test_accuracy``); tests assert it.

Needs torch and scikit-learn (dev tools, not runtime dependencies of edgeshift). Seeds are
fixed and training runs on one thread, so a rebuild on the same torch version reproduces the
weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from edgeshift.model.torch_export import from_torch

ZOO_DIR = Path(__file__).resolve().parents[1] / "src" / "edgeshift" / "zoo"
SEED = 0
TEST_SAMPLES = 360


def make_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def make_cnn() -> nn.Module:
    # Conv-heavy on purpose: ORT dynamic int8 (ConvInteger) is slow and lossy on it.
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SAMPLES, random_state=SEED, stratify=y
    )
    return x_train, x_test, y_train, y_test


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Module:
    torch.manual_seed(SEED)
    for p in model.parameters():  # re-initialize under the fixed seed
        if p.dim() > 1:
            nn.init.kaiming_uniform_(p, a=5**0.5)
        else:
            nn.init.zeros_(p)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 32):
            idx = order[i : i + 32]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    return model.eval()


def ort_accuracy(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x})
    return float((logits.argmax(axis=1) == y).mean())


def build(
    name: str, model: nn.Module, shape: tuple[int, ...], epochs: int, zoo_dir: Path = ZOO_DIR
) -> float:
    x_train, x_test, y_train, y_test = split()
    x_train = x_train.reshape(-1, *shape)
    x_test = np.ascontiguousarray(x_test.reshape(-1, *shape))
    train(model, x_train, y_train, epochs)
    model_path = zoo_dir / "models" / f"{name}.onnx"
    from_torch(
        model, (torch.from_numpy(x_test[:4]),), model_path, input_names=["input"],
        output_names=["logits"],
    )  # fmt: skip
    accuracy = ort_accuracy(model_path, x_test, y_test)
    proto = onnx.load(str(model_path))
    proto.producer_name = "edgeshift scripts/build_zoo.py"
    proto.doc_string = (
        f"{name}: scikit-learn digits classifier, input = 8x8 pixels / 16 as float32, "
        f"output = 10 logits. Test accuracy {accuracy:.4f} on {len(y_test)} held-out samples."
    )
    for key, value in {
        "dataset": "sklearn.datasets.load_digits",
        "split": f"train_test_split(test_size={TEST_SAMPLES}, random_state={SEED}, stratify=y)",
        "input_scaling": "pixels / 16.0",
        "test_accuracy": f"{accuracy:.6f}",
        "test_samples": str(len(y_test)),
    }.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(model_path))
    np.savez_compressed(zoo_dir / "data" / f"{name}.npz", input=x_test, labels=y_test)
    print(f"{name}: test accuracy {accuracy:.4f} on {len(y_test)} samples -> {model_path}")
    return accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["digits-mlp", "digits-cnn"], default=None)
    parser.add_argument(
        "--out", type=Path, default=ZOO_DIR, help="zoo dir to write models/ and data/ into"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    (args.out / "data").mkdir(parents=True, exist_ok=True)
    if args.only in (None, "digits-mlp"):
        build("digits-mlp", make_mlp(), (64,), epochs=60, zoo_dir=args.out)
    if args.only in (None, "digits-cnn"):
        build("digits-cnn", make_cnn(), (1, 8, 8), epochs=30, zoo_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
