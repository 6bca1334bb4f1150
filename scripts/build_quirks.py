"""Rebuild the exporter-quirk zoo models (quirk-paddle, quirk-nhwc) and their eval data.

    python scripts/build_quirks.py            # writes src/edgeshift/zoo/{models,data}/quirk-*

One glyph classifier is trained, then written twice, each time the way a real exporter writes
it, so that every verb meets those exporters' quirks on a model with real weights:

- ``quirk-paddle``: as Paddle2ONNX 0.9 writes a PaddleClas-style model: opset 11, IR 6, every
  parameter a ``Constant`` node at the head of the graph (no initializers; Paddle2ONNX's
  ExportParameters -> MakeConstant), dynamic dims stored as ``dim_value: -1`` (as 0.9.x did;
  1.x writes ``p2o.DynamicDimension.N``), Paddle tensor names (input ``x``, parameters
  ``conv2d_0.w_0``, ``batch_norm_0.w_1``..., output ``save_infer_model/scale_0.tmp_0`` through
  the Identity that the ``scale`` mapper writes for scale 1, bias 0), BatchNormalization left
  unfolded (the batch_norm mapper writes one node), ``paddle.flatten(x, 1)`` as the
  flatten_contiguous_range mapper writes it (Shape -> Slice -> Concat with -1 -> Reshape), and
  ``nn.Linear`` as MatMul on an ``[in, out]`` weight + Add.
- ``quirk-nhwc``: as tf2onnx writes a Keras model: opset 13, NHWC input ``input_1``
  ``[unk__N, 32, 32, 1]``, one Transpose (perm 0,3,1,2) to NCHW in front of the convs, the
  BatchNorm folded into the Conv weights (tf2onnx's optimizer folds constants, named
  ``const_fold_opt__N``), a Transpose back to NHWC before Keras' Flatten (so the Dense kernel's
  rows are in H, W, C order), Dense as MatMul + Add, output ``dense/Softmax:0``.

Data: the 62 characters 0-9, A-Z, a-z rendered with every font ``fc-list`` lists (sorted by
path; the list is stored in the metadata) at 32x32, white on black, pixel / 255, with random
size, shift, rotation, shear and stroke width. Training and evaluation use disjoint random
renderings (different seeds): the eval images are renderings the model never saw. The eval
set is EVAL_PER_CLASS per class, stored as ``x`` [N, 1, 32, 32] (quirk-paddle) and
``input_1`` [N, 32, 32, 1] (quirk-nhwc), plus ``labels``.

The script checks that both ONNX files give the torch model's probabilities (onnxruntime,
fp32) and prints and stores the eval accuracy in each model's metadata (``test_accuracy``).
Needs torch and Pillow (dev tools). Seeds are fixed and torch runs on one thread.
"""

from __future__ import annotations

import argparse
import string
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch import nn

ZOO_DIR = Path(__file__).resolve().parents[1] / "src" / "edgeshift" / "zoo"
CLASSES = string.digits + string.ascii_uppercase + string.ascii_lowercase
SIZE = 32
SEED = 0
TRAIN_PER_GLYPH = 8  # renderings of each (font, character) pair for training
EVAL_PER_CLASS = 10
EPOCHS = 5
CHANNELS = (32, 64, 96, 128)
BN_EPS = 1e-5
# ORT fp32 vs torch: summation order only; probabilities are in [0, 1].
PROB_ATOL = 1e-5


# --- data -----------------------------------------------------------------------------------


def system_fonts() -> list[str]:
    out = subprocess.run(
        ["fc-list", "--format", "%{file}\n"], capture_output=True, text=True, check=True
    ).stdout
    fonts = sorted({f for f in out.splitlines() if f.lower().endswith((".ttf", ".otf"))})
    if not fonts:
        raise SystemExit("fc-list found no TrueType/OpenType fonts — apt-get install fonts-dejavu")
    return fonts


def render(font_path: str, char: str, rng: np.random.Generator) -> np.ndarray:
    """One augmented rendering: glyph on its baseline (so case and height stay visible)."""
    size_pt = int(rng.integers(20, 27))
    font = ImageFont.truetype(font_path, size_pt)
    canvas = Image.new("L", (SIZE * 2, SIZE * 2), 0)
    draw = ImageDraw.Draw(canvas)
    ascent, descent = font.getmetrics()
    width = draw.textlength(char, font=font)
    x = SIZE - width / 2
    y = SIZE - (ascent + descent) / 2
    draw.text((x, y), char, fill=255, font=font)
    # rotation, shear and shift about the centre, as one affine map (output -> input)
    angle = np.deg2rad(rng.uniform(-10, 10))
    shear = rng.uniform(-0.15, 0.15)
    dx, dy = rng.uniform(-2, 2, size=2)
    cos, sin = np.cos(angle), np.sin(angle)
    a, b, d, e = cos, -sin + shear, sin, cos
    c = SIZE - a * SIZE - b * SIZE - dx
    f = SIZE - d * SIZE - e * SIZE - dy
    canvas = canvas.transform(canvas.size, Image.Transform.AFFINE, (a, b, c, d, e, f),
                              resample=Image.Resampling.BILINEAR)  # fmt: skip
    stroke = rng.integers(0, 4)  # 0: as drawn, 1: thicker, 2: thinner, 3: as drawn
    if stroke == 1:
        canvas = canvas.filter(ImageFilter.MaxFilter(3))
    elif stroke == 2:
        canvas = canvas.filter(ImageFilter.MinFilter(3))
    crop = canvas.crop((SIZE // 2, SIZE // 2, SIZE // 2 + SIZE, SIZE // 2 + SIZE))
    return np.asarray(crop, dtype=np.float32) / 255.0


def make_set(fonts: list[str], per_glyph: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for font in fonts:
        for label, char in enumerate(CLASSES):
            for _ in range(per_glyph):
                images.append(render(font, char, rng))
                labels.append(label)
    return np.stack(images)[:, None], np.asarray(labels, np.int64)


def make_eval_set(fonts: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """EVAL_PER_CLASS fresh renderings per class, each in a font drawn at random."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, char in enumerate(CLASSES):
        for font_index in rng.choice(len(fonts), EVAL_PER_CLASS, replace=False):
            images.append(render(fonts[font_index], char, rng))
            labels.append(label)
    return np.stack(images)[:, None], np.asarray(labels, np.int64)


# --- model ----------------------------------------------------------------------------------


class GlyphNet(nn.Module):
    """4 x (Conv 3x3 no bias, BatchNorm, ReLU, MaxPool 2) then Linear 2x2xC -> 62, Softmax."""

    def __init__(self) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_ch = 1
        for ch in CHANNELS:
            blocks += [nn.Conv2d(in_ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch),
                       nn.ReLU(), nn.MaxPool2d(2)]  # fmt: skip
            in_ch = ch
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_ch * 2 * 2, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # logits
        return self.fc(torch.flatten(self.features(x), 1))


def train(model: GlyphNet, x: np.ndarray, y: np.ndarray) -> GlyphNet:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = EPOCHS * ((len(xt) + 63) // 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            batch = xt[idx] + 0.05 * torch.randn(xt[idx].shape, generator=gen)  # sensor noise
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(batch), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(f"  epoch {epoch + 1}/{EPOCHS}: loss {total / len(xt):.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    return model.eval()


def weights(model: GlyphNet) -> tuple[list[dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    """Per block: conv weight and BatchNorm scale/bias/mean/var; then fc weight and bias."""
    blocks = []
    mods = list(model.features)
    for i in range(0, len(mods), 4):
        conv, bn = mods[i], mods[i + 1]
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        blocks.append({
            "w": conv.weight.detach().numpy().copy(),
            "scale": bn.weight.detach().numpy().copy(),
            "bias": bn.bias.detach().numpy().copy(),
            "mean": bn.running_mean.numpy().copy(),
            "var": bn.running_var.numpy().copy(),
        })  # fmt: skip
    return blocks, model.fc.weight.detach().numpy().copy(), model.fc.bias.detach().numpy().copy()


# --- the Paddle2ONNX-style file --------------------------------------------------------------


def paddle_graph(model: GlyphNet) -> onnx.ModelProto:
    blocks, fc_w, fc_b = weights(model)
    params: list[onnx.NodeProto] = []
    nodes: list[onnx.NodeProto] = []
    counter = iter(range(10_000))

    def p2o(op: str, inputs: list[str], outputs: list[str] | None = None, **attrs):  # type: ignore[no-untyped-def]
        name = f"p2o.{op}.{next(counter)}"  # MapperHelper::GenName
        nodes.append(helper.make_node(op, inputs, outputs or [name], name=name, **attrs))
        return nodes[-1].output[0]

    def param(name: str, value: np.ndarray) -> str:
        tensor = numpy_helper.from_array(value.astype(value.dtype), name)
        params.append(helper.make_node("Constant", [], [name], value=tensor))
        return name

    def const(value: np.ndarray) -> str:  # helper->Constant: a Constant node among the ops
        name = f"p2o.Constant.{next(counter)}"
        tensor = numpy_helper.from_array(value, name)
        nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        return name

    h = "x"
    for i, blk in enumerate(blocks):
        w = param(f"conv2d_{i}.w_0", blk["w"])
        h = p2o("Conv", [h, w], [f"conv2d_{i}.tmp_0"], dilations=[1, 1], group=1,
                kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])  # fmt: skip
        bn = [param(f"batch_norm_{i}.{k}", blk[v]) for k, v in
              (("w_0", "scale"), ("b_0", "bias"), ("w_1", "mean"), ("w_2", "var"))]  # fmt: skip
        h = p2o("BatchNormalization", [h, *bn], [f"batch_norm_{i}.tmp_2"], epsilon=BN_EPS,
                momentum=0.9)  # fmt: skip
        h = p2o("Relu", [h], [f"relu_{i}.tmp_0"])
        h = p2o("MaxPool", [h], [f"pool2d_{i}.tmp_0"], kernel_shape=[2, 2], strides=[2, 2],
                pads=[0, 0, 0, 0])  # fmt: skip
    # paddle.flatten(x, 1): flatten_contiguous_range(start_axis=1, stop_axis=-1)
    minus_one = const(np.asarray([-1], np.int64))
    shape = p2o("Shape", [h])
    first = p2o("Slice", [shape, const(np.asarray([0], np.int64)),
                          const(np.asarray([1], np.int64)), const(np.asarray([0], np.int64))])  # fmt: skip
    new_shape = p2o("Concat", [first, minus_one], axis=0)
    h = p2o("Reshape", [h, new_shape], ["flatten_0.tmp_0"])
    # nn.Linear: matmul_v2 on a [in, out] weight, then elementwise_add
    h = p2o("MatMul", [h, param("linear_0.w_0", fc_w.T.copy())], ["linear_0.tmp_0"])
    h = p2o("Add", [h, param("linear_0.b_0", fc_b)], ["linear_0.tmp_1"])
    h = p2o("Softmax", [h], ["softmax_0.tmp_0"], axis=1)
    p2o("Identity", [h], ["save_infer_model/scale_0.tmp_0"])  # scale op, scale 1 bias 0
    graph = helper.make_graph(
        params + nodes,
        "PaddlePaddle Graph 0",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 1, SIZE, SIZE])],
        [helper.make_tensor_value_info(
            "save_infer_model/scale_0.tmp_0", TensorProto.FLOAT, [-1, len(CLASSES)])],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    proto.ir_version = 6  # Paddle2ONNX GetIRVersion: opset 11 -> IR 6
    return proto


# --- the tf2onnx-style file ------------------------------------------------------------------


def nhwc_graph(model: GlyphNet) -> onnx.ModelProto:
    blocks, fc_w, fc_b = weights(model)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    counter = iter(range(20, 10_000))

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, name: str, inputs: list[str], out: str | None = None, **attrs) -> str:  # type: ignore[no-untyped-def]
        nodes.append(helper.make_node(op, inputs, [out or f"{name}:0"], name=name, **attrs))
        return nodes[-1].output[0]

    suffix = ["", "_1", "_2", "_3"]
    h = node("Transpose", f"model/conv2d/Conv2D__{next(counter)}", ["input_1"], perm=[0, 3, 1, 2])
    for i, blk in enumerate(blocks):
        s = suffix[i]
        # BatchNorm folded into the conv: w' = w * g / sqrt(v + eps), b' = beta - m * g / sqrt
        k = blk["scale"] / np.sqrt(blk["var"] + BN_EPS)
        w = (blk["w"] * k[:, None, None, None]).astype(np.float32)
        b = (blk["bias"] - blk["mean"] * k).astype(np.float32)
        h = node("Conv", f"model/conv2d{s}/Conv2D",
                 [h, init(f"const_fold_opt__{next(counter)}", w),
                  init(f"const_fold_opt__{next(counter)}", b)],
                 f"model/batch_normalization{s}/FusedBatchNormV3:0", dilations=[1, 1], group=1,
                 kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])  # fmt: skip
        h = node("Relu", f"model/re_lu{s}/Relu", [h])
        h = node("MaxPool", f"model/max_pooling2d{s}/MaxPool", [h], kernel_shape=[2, 2],
                 strides=[2, 2])  # fmt: skip
    h = node("Transpose", f"model/max_pooling2d_3/MaxPool__{next(counter)}", [h], perm=[0, 2, 3, 1])
    c = CHANNELS[-1]
    h = node("Reshape", "model/flatten/Reshape",
             [h, init(f"const_fold_opt__{next(counter)}", np.asarray([-1, 4 * c], np.int64))])  # fmt: skip
    # Keras' Flatten is in NHWC order: the torch kernel's input rows (C, H, W) become (H, W, C)
    kernel = fc_w.reshape(len(CLASSES), c, 2, 2).transpose(2, 3, 1, 0).reshape(4 * c, -1)
    h = node("MatMul", "model/dense/MatMul",
             [h, init("model/dense/MatMul/ReadVariableOp:0", np.ascontiguousarray(kernel))])  # fmt: skip
    h = node("Add", "model/dense/BiasAdd",
             [h, init("model/dense/BiasAdd/ReadVariableOp:0", fc_b)])  # fmt: skip
    node("Softmax", "model/dense/Softmax", [h], "dense/Softmax:0", axis=-1)
    graph = helper.make_graph(
        nodes,
        "tf2onnx",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__64", SIZE, SIZE, 1])],
        [helper.make_tensor_value_info("dense/Softmax:0", TensorProto.FLOAT,
                                       ["unk__65", len(CLASSES)])],
        inits,
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 7  # opset 13 -> IR 7, as tf2onnx writes it
    return proto


# --- build ----------------------------------------------------------------------------------


def ort_probs(proto: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def finish(
    proto: onnx.ModelProto, name: str, what: str, accuracy: float, n: int, fonts: list[str]
) -> None:
    onnx.checker.check_model(proto)
    proto.producer_name = "edgeshift scripts/build_quirks.py"
    proto.doc_string = (
        f"{name}: glyph classifier (62 classes: 0-9 A-Z a-z, 32x32 grey, pixel / 255) written "
        f"{what}. Test accuracy {accuracy:.4f} on {n} held-out renderings."
    )
    for key, value in {
        "dataset": "characters 0-9A-Za-z rendered with the fonts listed in 'fonts'",
        "fonts": ";".join(Path(f).name for f in fonts),
        "classes": CLASSES,
        "input_scaling": "pixels / 255.0, white glyph on black",
        "test_accuracy": f"{accuracy:.6f}",
        "test_samples": str(n),
    }.items():
        proto.metadata_props.add(key=key, value=value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ZOO_DIR, help="zoo dir (models/, data/)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    fonts = system_fonts()
    start = time.perf_counter()
    x_train, y_train = make_set(fonts, TRAIN_PER_GLYPH, seed=SEED)
    x_eval, y_eval = make_eval_set(fonts, seed=SEED + 1)
    print(f"{len(fonts)} fonts: {len(y_train)} training and {len(y_eval)} eval renderings "
          f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    model = train(GlyphNet(), x_train, y_train)
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x_eval)), dim=1).numpy()
    accuracy = float((want.argmax(1) == y_eval).mean())
    x_nhwc = np.ascontiguousarray(x_eval.transpose(0, 2, 3, 1))
    builds = {
        "quirk-paddle": (paddle_graph(model), {"x": x_eval}, "as Paddle2ONNX 0.9 writes it "
                         "(opset 11, Constant weights, -1 dims, unfolded BatchNormalization)"),
        "quirk-nhwc": (nhwc_graph(model), {"input_1": x_nhwc}, "as tf2onnx writes a Keras "
                       "model (opset 13, NHWC input, Transposes, folded BatchNorm)"),
    }  # fmt: skip
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    (args.out / "data").mkdir(parents=True, exist_ok=True)
    for name, (proto, feed, what) in builds.items():
        got = ort_probs(proto, feed)
        np.testing.assert_allclose(got, want, atol=PROB_ATOL, err_msg=f"{name} != torch")
        file_accuracy = float((got.argmax(1) == y_eval).mean())
        assert file_accuracy == accuracy, (name, file_accuracy, accuracy)
        finish(proto, name, what, accuracy, len(y_eval), fonts)
        path = args.out / "models" / f"{name}.onnx"
        onnx.save(proto, str(path))
        np.savez_compressed(args.out / "data" / f"{name}.npz", **feed, labels=y_eval)
        print(f"{name}: test accuracy {accuracy:.4f} on {len(y_eval)} renderings -> {path}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
