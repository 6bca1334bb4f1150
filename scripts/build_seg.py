"""Rebuild the zoo's segmentation net (seg-unet) on rendered scenes.

    python scripts/build_seg.py            # writes src/edgeshift/zoo/{models,data}/seg-unet.*

Data: 96x96 RGB scenes drawn with Pillow. A textured background (a smooth random colour
field, stripes or checks, pixel noise), then filled shapes (rectangles, ellipses, triangles),
then straight lines and polyline strokes 1-4 px wide, then 1-3 words of text (random letters
and digits, 9-22 px) in a system TrueType font; a little blur and sensor noise at the end.
Every pixel is labelled with what was drawn on it last: 0 background, 1 text, 2 shape,
3 line. Text and lines are both thin strokes: telling them apart is the hard part. The
Liberation Serif fonts are held out: eval scenes use only them, training scenes only the
other DejaVu / Liberation fonts.

Input ``input [batch, 3, 96, 96]`` float32 (RGB / 255); output ``logits [batch, 4, 96, 96]``
(class axis 1).

Model: a U-Net (Ronneberger et al., 2015) with three 2x2 max-pool steps (8-16-32 channels,
a 64-channel bottleneck at 12x12; ~82 M multiply-adds per scene), ConvTranspose 2x2 upsampling, skip connections by
concatenation, two 3x3 conv + BatchNorm + ReLU per level, and a 1x1 conv to the 4 classes.
BatchNorm is folded into the convs by the ONNX export (eval mode).

Needs torch, Pillow and the DejaVu and Liberation fonts (fonts-dejavu-core, fonts-liberation)
— dev tools, not runtime dependencies of edgeshift. Seeds are fixed and training runs on one
thread, so a rebuild with the same torch, Pillow and fonts reproduces the weights. (The
shipped seg-unet predates seeding the initial weights: the scenes and eval data rebuild byte
for byte, the weights do not; a rebuild records its own scores, which the tests then check.)
"""

from __future__ import annotations

import argparse
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch import nn

from edgeshift.model.torch_export import from_torch

ZOO_DIR = Path(__file__).resolve().parents[1] / "src" / "edgeshift" / "zoo"
NAME = "seg-unet"
SEED = 0
SIZE = 96
CLASSES = ("background", "text", "shape", "line")
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"))
HELD_OUT_FONT = "LiberationSerif"
TRAIN_IMAGES = 1600
EVAL_IMAGES = 64  # ~2.3 MB compressed: pixel noise keeps float32 pixels from compressing
WIDTH = 8  # channels at full resolution, x2 per level: ~82 M multiply-adds per scene


def fonts() -> tuple[list[Path], list[Path]]:
    files = sorted(p for d in FONT_DIRS for p in d.glob("*.ttf") if "Math" not in p.name)
    held = [p for p in files if p.name.startswith(HELD_OUT_FONT)]
    train = [p for p in files if p not in held]
    if not held or len(train) < 4:
        raise SystemExit(
            f"fonts not found in {', '.join(map(str, FONT_DIRS))} — apt-get install "
            "fonts-dejavu-core fonts-liberation"
        )
    return train, held


def colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = rng.integers(0, 256, 3)
    return int(r), int(g), int(b)


def contrasting(rng: np.random.Generator, against: np.ndarray) -> tuple[int, int, int]:
    """A random colour whose luminance differs from AGAINST's by at least 60 of 255."""
    base = float(np.dot(against, [0.299, 0.587, 0.114]))
    for _ in range(20):
        c = colour(rng)
        if abs(float(np.dot(c, [0.299, 0.587, 0.114])) - base) >= 60:
            return c
    return (0, 0, 0) if base > 127 else (255, 255, 255)


def background(rng: np.random.Generator) -> np.ndarray:
    """[SIZE, SIZE, 3] float: a smooth colour field plus a texture."""
    coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    field = np.asarray(
        Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.float64
    )
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    kind = rng.integers(3)
    if kind == 0:  # stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
        texture = rng.uniform(10, 50) * wave
    elif kind == 1:  # checks
        cell = int(rng.integers(4, 14))
        texture = rng.uniform(10, 50) * (((x // cell + y // cell) % 2) * 2 - 1)
    else:  # blotchy noise
        texture = rng.uniform(10, 40) * rng.standard_normal((SIZE, SIZE))
    return field + texture[..., None]


def random_word(rng: np.random.Generator) -> str:
    letters = string.ascii_letters + string.digits
    return "".join(rng.choice(list(letters), int(rng.integers(2, 8))))


def scene(rng: np.random.Generator, font_files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(image [SIZE, SIZE, 3] uint8, label map [SIZE, SIZE] uint8)."""
    bg = background(rng)
    image = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    draw = ImageDraw.Draw(image)

    def paint(cls: int, shape_fn: Callable[[ImageDraw.ImageDraw, int], object]) -> None:
        mask = Image.new("L", (SIZE, SIZE), 0)
        shape_fn(ImageDraw.Draw(mask), 255)
        m = np.asarray(mask) > 127
        labels[m] = cls

    for _ in range(int(rng.integers(0, 4))):  # shapes
        x0, y0 = rng.integers(-10, SIZE - 10, 2)
        w, h = rng.integers(10, 45, 2)
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        kind = rng.integers(3)
        fill = colour(rng)
        if kind == 0:
            draw.rectangle(box, fill=fill)
            paint(2, lambda d, v, box=box: d.rectangle(box, fill=v))
        elif kind == 1:
            draw.ellipse(box, fill=fill)
            paint(2, lambda d, v, box=box: d.ellipse(box, fill=v))
        else:
            pts = [tuple(int(c) for c in rng.integers(-5, SIZE + 5, 2)) for _ in range(3)]
            draw.polygon(pts, fill=fill)
            paint(2, lambda d, v, pts=pts: d.polygon(pts, fill=v))

    for _ in range(int(rng.integers(0, 4))):  # lines and polylines
        pts = [tuple(int(c) for c in rng.integers(0, SIZE, 2)) for _ in range(rng.integers(2, 4))]
        width = int(rng.integers(1, 5))
        fill = contrasting(rng, np.asarray(image)[pts[0][1], pts[0][0]])
        draw.line(pts, fill=fill, width=width)
        paint(3, lambda d, v, pts=pts, width=width: d.line(pts, fill=v, width=width))

    for _ in range(int(rng.integers(1, 4))):  # text on top
        font = ImageFont.truetype(str(rng.choice(font_files)), int(rng.integers(9, 23)))
        word = random_word(rng)
        left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
        x = int(rng.integers(-left - 4, max(SIZE - right + 4, -left - 3)))
        y = int(rng.integers(-top - 4, max(SIZE - bottom + 4, -top - 3)))
        region = np.asarray(image)[max(y + top, 0) : y + bottom, max(x + left, 0) : x + right]
        local = region.reshape(-1, 3).mean(axis=0) if region.size else np.full(3, 127.0)
        draw.text((x, y), word, font=font, fill=contrasting(rng, local))
        paint(1, lambda d, v, xy=(x, y), w=word, f=font: d.text(xy, w, font=f, fill=v))

    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, rng.uniform(0, 8), (SIZE, SIZE, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), labels


def make_set(
    rng: np.random.Generator, font_files: list[Path], count: int
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*(scene(rng, font_files) for _ in range(count)), strict=True)
    x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return np.ascontiguousarray(x), np.stack(labels)


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class UNet(nn.Module):
    def __init__(self, width: int = WIDTH, classes: int = len(CLASSES), levels: int = 3) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(levels + 1)]  # 8 16 32 | 64 bottleneck
        self.down = nn.ModuleList(
            double_conv(cin, cout) for cin, cout in zip([3, *chans[:-2]], chans[:-1], strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(chans[-2], chans[-1])
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(c * 2, c, 2, stride=2) for c in reversed(chans[:-1])
        )
        self.merge = nn.ModuleList(double_conv(c * 2, c) for c in reversed(chans[:-1]))
        self.head = nn.Conv2d(chans[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Module:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    # text and lines cover few pixels: weight classes by inverse sqrt frequency
    freq = np.bincount(y.ravel(), minlength=len(CLASSES)) / y.size
    weight = torch.tensor((freq.max() / freq) ** 0.5, dtype=torch.float32)
    batch = 16
    steps = epochs * ((len(xt) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        started, total = time.perf_counter(), 0.0
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = order[i : i + batch]
            xb, yb = xt[idx], yt[idx]
            if torch.rand((), generator=gen) < 0.5:  # mirror: scenes have no preferred side
                xb, yb = xb.flip(-1), yb.flip(-1)
            loss = nn.functional.cross_entropy(model(xb), yb, weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(
            f"  epoch {epoch + 1}/{epochs}: loss {total / len(xt):.3f} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    return model.eval()


def pixel_scores(pred: np.ndarray, labels: np.ndarray) -> tuple[float, float, list[float]]:
    """(pixel accuracy, mean IoU over the classes, IoU per class)."""
    ious = []
    for c in range(len(CLASSES)):
        union = np.sum((pred == c) | (labels == c))
        ious.append(float(np.sum((pred == c) & (labels == c)) / union) if union else 1.0)
    return float(np.mean(pred == labels)), float(np.mean(ious)), ious


def ort_predict(model_path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x})
    return logits.argmax(axis=1)


def build(zoo_dir: Path, epochs: int, train_images: int) -> tuple[float, float]:
    train_fonts, held_fonts = fonts()
    started = time.perf_counter()
    x_train, y_train = make_set(np.random.default_rng(SEED), train_fonts, train_images)
    x_test, y_test = make_set(np.random.default_rng(SEED + 1), held_fonts, EVAL_IMAGES)
    print(
        f"{NAME}: {len(x_train)} training scenes, {len(x_test)} held-out scenes "
        f"({len(held_fonts)} held-out fonts) in {time.perf_counter() - started:.0f} s; "
        f"class shares {np.bincount(y_train.ravel(), minlength=4) / y_train.size}"
    )
    torch.manual_seed(SEED)  # the initial weights too, not only the training order
    model = train(UNet(), x_train, y_train, epochs)
    model_path = zoo_dir / "models" / f"{NAME}.onnx"
    from_torch(
        model, (torch.from_numpy(x_test[:2]),), model_path, input_names=["input"],
        output_names=["logits"],
    )  # fmt: skip
    accuracy, miou, ious = pixel_scores(ort_predict(model_path, x_test), y_test)
    proto = onnx.load(str(model_path))
    proto.producer_name = "edgeshift scripts/build_seg.py"
    proto.doc_string = (
        f"{NAME}: U-Net segmentation of rendered {SIZE}x{SIZE} scenes; input = RGB / 255 "
        f"[3, {SIZE}, {SIZE}], output = {len(CLASSES)} logits per pixel ({', '.join(CLASSES)}). "
        f"Pixel accuracy {accuracy:.4f}, mIoU {miou:.4f} on {len(x_test)} held-out scenes."
    )
    for key, value in {
        "dataset": "scenes rendered by scripts/build_seg.py (Pillow, DejaVu/Liberation fonts)",
        "classes": ",".join(CLASSES),
        "held_out_fonts": ",".join(p.name for p in held_fonts),
        "input_scaling": "RGB / 255.0",
        "test_accuracy": f"{accuracy:.6f}",
        "test_miou": f"{miou:.6f}",
        "test_iou_per_class": ",".join(f"{v:.6f}" for v in ious),
        "test_samples": str(len(x_test)),
    }.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(model_path))
    # x_test is pixels / 255 of uint8 pixels: it compresses well as it is
    np.savez_compressed(zoo_dir / "data" / f"{NAME}.npz", input=x_test, labels=y_test)
    print(
        f"{NAME}: pixel accuracy {accuracy:.4f}, mIoU {miou:.4f} (IoU per class "
        f"{', '.join(f'{c} {v:.3f}' for c, v in zip(CLASSES, ious, strict=True))}) on "
        f"{len(x_test)} held-out scenes -> {model_path}"
    )
    return accuracy, miou


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ZOO_DIR, help="zoo dir to write models/ and data/ into"
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES)
    parser.add_argument("--preview", type=Path, help="write a few scenes as PNG here and stop")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.preview:
        args.preview.mkdir(parents=True, exist_ok=True)
        train_fonts, _ = fonts()
        rng = np.random.default_rng(SEED)
        for i in range(8):
            image, labels = scene(rng, train_fonts)
            Image.fromarray(image).save(args.preview / f"scene{i}.png")
            Image.fromarray(labels * 80).save(args.preview / f"labels{i}.png")
        return 0
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    (args.out / "data").mkdir(parents=True, exist_ok=True)
    build(args.out, args.epochs, args.train_images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
