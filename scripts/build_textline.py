"""Build the shipped text-line recognizer ``textline-crnn`` and its eval crops, deterministically.

    python scripts/build_textline.py       # writes src/edgeshift/zoo/{models,data}/textline-crnn.*

Data: single lines of random text (digit groups, lower/upper/capitalized words, a few
punctuation marks; 8-20 characters) rendered with PIL in the system's TrueType fonts (DejaVu
Sans/Serif/Mono and their condensed cuts, Liberation Sans/Serif/Mono; regular, bold, italic),
with random size, position, contrast (15% light on dark), blur and pixel noise, as grey crops
of 32 x 200 quantized to 8 bits. The 256 eval crops are new strings (none seen in training);
half of them use Liberation Sans Narrow, a family never seen in training; a quarter of them
carry pixel noise (noise does not compress, and the eval npz ships in the package).

Model: a CRNN. Four 3x3 conv blocks (16, 32, 64, 64 channels; BatchNorm, folded into the
convs by the exporter; ReLU), max pooling the height to 1 and the width by 4 (50 steps), a
2-layer bidirectional LSTM (64 hidden per direction), a linear head to 75 classes,
log-softmax. Trained with CTC loss, blank
= class 0 (characters are 1..74 in ALPHABET order). Input ``input`` float32
``[batch, 1, 32, 200]`` = grey pixels / 255 (ink dark on light, or the reverse); output
``log_probs`` float32 ``[batch, 50, 75]``: the layout the optimize metric ``sequence`` reads.

Exported with edgeshift.model.torch_export.from_torch (opset 17, dynamic ``batch``), which
checks the file against torch with onnxruntime. Exact-match and character error rate of greedy
CTC decodes on the eval crops, measured with onnxruntime, are printed and stored in the
model's metadata with the alphabet and the blank index.

Training: 24,000 lines, 3 epochs (2,250 steps of 32), Adam with a one-cycle schedule (peak
3e-3), CTC loss. Needs torch and Pillow (dev tools). Seeds are fixed and everything runs on one
thread (0.35-0.5 s a step on one core: about 15 minutes), so a rebuild on the same torch
version and fonts reproduces the weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch import nn

from edgeshift.model.torch_export import from_torch
from edgeshift.optimize.sequence import ctc_greedy_decode, edit_distance

ZOO_DIR = Path(__file__).resolve().parents[1] / "src" / "edgeshift" / "zoo"
NAME = "textline-crnn"
SEED = 0
HEIGHT, WIDTH = 32, 200
STEPS = WIDTH // 4
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;-'!?()/"
BLANK = 0  # torch's CTC default; characters are 1 + their index in ALPHABET
MIN_CHARS, MAX_CHARS = 8, 20
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"))
TRAIN_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSansCondensed.ttf", "DejaVuSansCondensed-Bold.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerifCondensed.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "LiberationSans-Regular.ttf", "LiberationSans-Bold.ttf", "LiberationSans-Italic.ttf",
    "LiberationSerif-Regular.ttf", "LiberationSerif-Bold.ttf", "LiberationSerif-Italic.ttf",
    "LiberationMono-Regular.ttf", "LiberationMono-Bold.ttf",
)  # fmt: skip
HELD_OUT_FONTS = (
    "LiberationSansNarrow-Regular.ttf", "LiberationSansNarrow-Bold.ttf",
    "LiberationSansNarrow-Italic.ttf",
)  # fmt: skip
TRAIN_LINES = 24_000
EVAL_LINES = 256
# Pixel noise on a quarter of the eval crops only: noise does not compress, and the npz ships.
EVAL_NOISE = 0.25
EPOCHS = 3
BATCH = 32


def font_path(name: str) -> Path:
    for folder in FONT_DIRS:
        if (folder / name).is_file():
            return folder / name
    raise SystemExit(f"font {name} not found under {', '.join(map(str, FONT_DIRS))} — "
                     "install fonts-dejavu-core and fonts-liberation")  # fmt: skip


# --- text -------------------------------------------------------------------------------------

LOWER, UPPER, DIGITS = ALPHABET[10:36], ALPHABET[36:62], ALPHABET[:10]


def random_token(rng: np.random.Generator) -> str:
    kind = rng.choice(["lower", "capital", "upper", "number", "mixed"], p=[0.4, 0.2, 0.1, 0.2, 0.1])
    n = int(rng.integers(2, 9))
    if kind == "number":
        text = "".join(rng.choice(list(DIGITS), size=int(rng.integers(1, 6))))
        if rng.random() < 0.3:
            text += rng.choice([".", ",", ":", "/", "-"]) + "".join(rng.choice(list(DIGITS), 2))
    elif kind == "mixed":
        text = "".join(rng.choice(list(ALPHABET[:62]), size=n))
    else:
        text = "".join(rng.choice(list(UPPER if kind == "upper" else LOWER), size=n))
        if kind == "capital":
            text = text[0].upper() + text[1:]
    if rng.random() < 0.15:
        text = "(" + text + ")" if rng.random() < 0.3 else "'" + text + "'"
    if rng.random() < 0.2:
        text += str(rng.choice(list(".,:;!?-")))
    return text


def random_line(rng: np.random.Generator) -> str:
    target = int(rng.integers(MIN_CHARS, MAX_CHARS + 1))
    text = random_token(rng)
    while len(text) < target:
        text += " " + random_token(rng)
    text = text[:target].strip()
    while len(text) < MIN_CHARS:  # the cut ended on a space
        text += str(rng.choice(list(LOWER)))
    return text


# --- rendering --------------------------------------------------------------------------------


def render(text: str, font_file: Path, rng: np.random.Generator, noise: float) -> np.ndarray:
    """One crop [HEIGHT, WIDTH] uint8: TEXT in FONT_FILE at a random size and position, with
    pixel noise at probability NOISE."""
    size = int(rng.integers(16, 27))
    font = ImageFont.truetype(str(font_file), size)
    left, top, right, bottom = font.getbbox(text)
    room = WIDTH - 4
    if right - left > room or bottom - top > HEIGHT - 2:  # shrink until the line fits
        scale = min(room / (right - left), (HEIGHT - 2) / (bottom - top))
        font = ImageFont.truetype(str(font_file), max(8, int(size * scale)))
        left, top, right, bottom = font.getbbox(text)
    bg, fg = int(rng.integers(150, 256)), int(rng.integers(0, 110))
    if rng.random() < 0.15:
        bg, fg = 255 - bg, 255 - fg
    image = Image.new("L", (WIDTH, HEIGHT), bg)
    x = int(rng.integers(0, max(1, WIDTH - (right - left) - 1))) - left
    y = int(rng.integers(0, max(1, HEIGHT - (bottom - top) - 1))) - top
    ImageDraw.Draw(image).text((x, y), text, font=font, fill=fg)
    blur = float(rng.uniform(0.0, 1.0))
    if blur > 0.3:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(image, dtype=np.float32)
    if rng.random() < noise:
        pixels = pixels + rng.normal(0.0, float(rng.uniform(0.0, 8.0)), pixels.shape)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def encode(text: str) -> list[int]:
    return [ALPHABET.index(c) + 1 for c in text]


def make_set(
    lines: int, fonts: list[Path], rng: np.random.Generator, noise: float, avoid: set[str]
) -> tuple[np.ndarray, list[str]]:
    images = np.empty((lines, 1, HEIGHT, WIDTH), dtype=np.uint8)
    texts: list[str] = []
    while len(texts) < lines:
        text = random_line(rng)
        if text in avoid:
            continue
        avoid.add(text)
        font = fonts[int(rng.integers(len(fonts)))]
        images[len(texts), 0] = render(text, font, rng, noise)
        texts.append(text)
    return images, texts


def padded_labels(texts: list[str]) -> np.ndarray:
    labels = np.full((len(texts), MAX_CHARS), -1, dtype=np.int64)
    for i, text in enumerate(texts):
        labels[i, : len(text)] = encode(text)
    return labels


# --- model ------------------------------------------------------------------------------------


def conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class CRNN(nn.Module):
    def __init__(self, classes: int = len(ALPHABET) + 1, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_block(1, 16), nn.MaxPool2d(2),  # 16 x 100
            *conv_block(16, 32), nn.MaxPool2d(2),  # 8 x 50
            *conv_block(32, 64), *conv_block(64, 64), nn.MaxPool2d((8, 1)),  # 1 x 50
        )  # fmt: skip
        self.rnn = nn.LSTM(64, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).squeeze(2).transpose(1, 2)  # [N, T, 64]
        out, _ = self.rnn(f)
        return torch.log_softmax(self.head(out), dim=-1)  # [N, T, classes]


def train(
    model: CRNN,
    images: np.ndarray,
    texts: list[str],
    epochs: int,
    check: tuple[np.ndarray, list[str]],
) -> CRNN:
    torch.manual_seed(SEED)
    x = torch.from_numpy(images)
    targets = [torch.tensor(encode(t), dtype=torch.long) for t in texts]
    steps = epochs * (len(x) // BATCH)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    ctc = nn.CTCLoss(blank=BLANK, zero_infinity=True)
    gen = torch.Generator().manual_seed(SEED)
    start, step = time.monotonic(), 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x) - BATCH + 1, BATCH):
            idx = order[i : i + BATCH]
            batch = x[idx].float() / 255.0
            ys = [targets[j] for j in idx.tolist()]
            log_probs = model(batch).transpose(0, 1)  # CTC wants [T, N, C]
            loss = ctc(
                log_probs, torch.cat(ys), torch.full((len(ys),), STEPS, dtype=torch.long),
                torch.tensor([len(y) for y in ys], dtype=torch.long),
            )  # fmt: skip
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total += float(loss.detach())
            step += 1
            if step % 250 == 0:
                model.eval()
                with torch.no_grad():
                    exact, cer = scores(model(torch.from_numpy(check[0])).numpy(), check[1])
                model.train()
                print(f"step {step}/{steps}: loss {float(loss.detach()):.3f}, eval exact {exact:.3f} "
                      f"CER {cer:.4f} ({time.monotonic() - start:.0f} s)", flush=True)  # fmt: skip
        print(f"epoch {epoch + 1}/{epochs}: ctc loss {total / (len(x) // BATCH):.4f} "
              f"({time.monotonic() - start:.0f} s)", flush=True)  # fmt: skip
    return model.eval()


# --- scoring and export -----------------------------------------------------------------------


def scores(log_probs: np.ndarray, texts: list[str]) -> tuple[float, float]:
    """(exact-match rate, character error rate) of greedy CTC decodes, both as fractions."""
    decoded = ctc_greedy_decode(log_probs, BLANK)
    wanted = [tuple(encode(t)) for t in texts]
    exact = float(np.mean([d == w for d, w in zip(decoded, wanted, strict=True)]))
    errors = sum(edit_distance(d, w) for d, w in zip(decoded, wanted, strict=True))
    return exact, errors / sum(len(w) for w in wanted)


def build(zoo_dir: Path, lines: int, epochs: int) -> tuple[float, float]:
    rng = np.random.default_rng(SEED)
    train_fonts = [font_path(f) for f in TRAIN_FONTS]
    held_out = [font_path(f) for f in HELD_OUT_FONTS]
    seen: set[str] = set()
    start = time.monotonic()
    # Eval first: half in the unseen family, half in training fonts, all strings new.
    x_a, t_a = make_set(EVAL_LINES // 2, held_out, rng, EVAL_NOISE, avoid=seen)
    x_b, t_b = make_set(EVAL_LINES - EVAL_LINES // 2, train_fonts, rng, EVAL_NOISE, seen)
    x_train, t_train = make_set(lines, train_fonts, rng, 1.0, avoid=seen)
    print(f"rendered {lines} training + {EVAL_LINES} eval lines ({time.monotonic() - start:.0f} s)")
    x_eval = np.concatenate([x_a, x_b]).astype(np.float32) / 255.0
    t_eval = t_a + t_b

    torch.manual_seed(SEED)
    model = train(CRNN(), x_train, t_train, epochs, (x_eval, t_eval))
    model_path = zoo_dir / "models" / f"{NAME}.onnx"
    from_torch(
        model, (torch.from_numpy(x_eval[:4]),), model_path, input_names=["input"],
        output_names=["log_probs"],
    )  # fmt: skip
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (log_probs,) = session.run(["log_probs"], {"input": x_eval})
    exact, cer = scores(log_probs, t_eval)
    half = EVAL_LINES // 2
    unseen = scores(log_probs[:half], t_eval[:half])
    seen_fonts = scores(log_probs[half:], t_eval[half:])
    proto = onnx.load(str(model_path))
    proto.producer_name = "edgeshift scripts/build_textline.py"
    proto.doc_string = (
        f"{NAME}: CRNN (4 conv blocks, 2-layer BiLSTM 64, CTC) text-line recognizer on rendered "
        f"text; input = grey {HEIGHT}x{WIDTH} pixels / 255, output = log-probs [batch, {STEPS}, "
        f"{len(ALPHABET) + 1}], blank {BLANK}. Exact lines {exact:.4f}, CER {cer:.4f} on "
        f"{len(t_eval)} held-out crops."
    )
    for key, value in {
        "dataset": "lines rendered by scripts/build_textline.py (system TrueType fonts)",
        "split": f"{EVAL_LINES} new strings; first half in Liberation Sans Narrow (unseen family)",
        "input_scaling": "grey pixels / 255.0",
        "alphabet": ALPHABET,
        "blank_index": str(BLANK),
        "labels": "class = 1 + index in alphabet; -1 pads",
        "test_accuracy": f"{exact:.6f}",
        "test_cer": f"{cer:.6f}",
        "test_samples": str(len(t_eval)),
    }.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(model_path))
    np.savez_compressed(
        zoo_dir / "data" / f"{NAME}.npz", input=x_eval, labels=padded_labels(t_eval)
    )
    print(f"{NAME}: exact lines {exact:.4f}, CER {cer:.4f} on {len(t_eval)} crops "
          f"(unseen font: {unseen[0]:.4f} / {unseen[1]:.4f}; training fonts: "
          f"{seen_fonts[0]:.4f} / {seen_fonts[1]:.4f}) -> {model_path}")  # fmt: skip
    return exact, cer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ZOO_DIR, help="zoo dir to write models/ and data/ into"
    )
    parser.add_argument("--lines", type=int, default=TRAIN_LINES, help="training lines")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    (args.out / "data").mkdir(parents=True, exist_ok=True)
    build(args.out, args.lines, args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
