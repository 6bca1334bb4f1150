"""Rebuild the zoo's keyword-spotting CNN (kws-cnn) on speech synthesized with espeak-ng.

    python scripts/build_kws.py            # writes src/edgeshift/zoo/{models,data}/kws-cnn.*

Data: 10 keywords (yes no up down left right on off stop go), an ``unknown`` class (20 other
words) and ``silence`` (noise only): 12 classes. Every clip is spoken by espeak-ng with one
of its English accents (en-us, en-gb, ...) and one of its voice variants (``+f3``, ``+m2``,
``+klatt`` ...), at a random speed, pitch and amplitude, resampled to 16 kHz, placed at a
random offset in a 1 s window and mixed with synthetic noise (white, pink, brown, mains hum)
at a random SNR. One variant in five (sorted by name) is held out: the eval clips are spoken
only by voices the model never heard in training.

Features: log-mel, 40 bands (20 Hz - 8 kHz), 30 ms Hann window, 20 ms hop, 512-point FFT:
49 frames x 40 bands, standardized with the training set's mean and std (stored in the
model's metadata). The model's input is that feature map, ``input [batch, 1, 49, 40]``
float32; its output ``logits [batch, 12]``.

Model: a VGG-style CNN of six 3x3 convs (32-64-64-128-128-128 channels, two of them
stride 2: 49x40 -> 25x20 -> 13x10), global average pooling and a linear layer; BatchNorm
after every conv, folded into the convs by the ONNX export (eval mode). ~57 M multiply-adds
per clip. (A DS-CNN of the same ONNX Runtime cost trains ~3x slower in torch on one CPU
thread: depthwise convs are slow there.) Trained with AdamW, one-cycle LR, label smoothing
and SpecAugment-style time/frequency masks.

Needs torch, scipy and the espeak-ng binary (dev tools, not runtime dependencies of
edgeshift). Seeds are fixed and training runs on one thread; espeak-ng is deterministic, so a
rebuild with the same torch and espeak-ng versions reproduces the weights. (The shipped
kws-cnn predates seeding the initial weights: the clips and eval data rebuild byte for byte,
the weights do not; a rebuild records its own accuracy, which the tests then check.)
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from scipy import signal
from torch import nn

from edgeshift.model.torch_export import from_torch

ZOO_DIR = Path(__file__).resolve().parents[1] / "src" / "edgeshift" / "zoo"
NAME = "kws-cnn"
SEED = 0
RATE = 16_000
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_WORDS = (
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "zero", "one", "two", "three", "four", "five", "forward", "backward", "follow", "learn",
)  # fmt: skip
CLASSES = (*KEYWORDS, "unknown", "silence")
ACCENTS = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
)  # fmt: skip
# Every fifth voice variant (sorted by name) speaks only eval clips. Robotic and whispering
# variants are kept: they are the hard cases.
HELD_OUT_EVERY = 5
WINDOW, HOP, NFFT, MELS = 480, 320, 512, 40
FRAMES = 1 + (RATE - WINDOW) // HOP  # 49
TRAIN_PER_CLASS = 400
EVAL_PER_CLASS = 25  # shipped: 300 clips
WIDTH = 32  # channels 32-64-64-128-128-128: ~57 M multiply-adds per clip


def variants() -> list[str]:
    """espeak-ng's voice variants: the files of its voices/!v directory."""
    out = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True)
    data_dir = Path(out.stdout.split("Data at:")[1].strip())
    # a file name with a space ("Mr serious") cannot be named after "+" on the command line
    return sorted(f.name for f in (data_dir / "voices" / "!v").iterdir() if " " not in f.name)


def split_variants(names: list[str]) -> tuple[list[str], list[str]]:
    held = [n for i, n in enumerate(names) if i % HELD_OUT_EVERY == 0]
    return [n for n in names if n not in held], held


def speak(word: str, voice: str, speed: int, pitch: int, amplitude: int) -> np.ndarray:
    """espeak-ng's waveform for WORD at 16 kHz, float32 in [-1, 1]."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude),
         "--stdout", word],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    audio = pcm.astype(np.float32) / 32768.0
    if rate != RATE:
        g = np.gcd(rate, RATE)
        audio = signal.resample_poly(audio, RATE // g, rate // g).astype(np.float32)
    # espeak pads with silence; keep the spoken part so the shift below decides the offset
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0] : loud[-1] + 1] if len(loud) else audio


def noise(rng: np.random.Generator, n: int) -> np.ndarray:
    kind = rng.integers(4)
    white = rng.standard_normal(n)
    if kind == 0:
        out = white
    elif kind == 1:  # pink: 1/f power via a 1/sqrt(f) amplitude spectrum
        spec = np.fft.rfft(white)
        spec[1:] /= np.sqrt(np.arange(1, len(spec)))
        out = np.fft.irfft(spec, n)
    elif kind == 2:  # brown: integrated white noise, high-passed to drop the drift
        out = signal.lfilter([1.0, -1.0], [1.0, -0.995], np.cumsum(white))
    else:  # mains hum and harmonics over a little white noise
        t = np.arange(n) / RATE
        f0 = rng.choice([50.0, 60.0])
        out = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3))
        out = out + 0.1 * white
    out = np.asarray(out, dtype=np.float64)
    return (out / (np.std(out) + 1e-12)).astype(np.float32)


def clip(rng: np.random.Generator, speech: np.ndarray | None) -> np.ndarray:
    """A 1 s clip: SPEECH at a random offset plus noise (noise alone for silence)."""
    out = np.zeros(RATE, dtype=np.float32)
    if speech is not None:
        speech = speech[:RATE]
        start = int(rng.integers(0, RATE - len(speech) + 1))
        out[start : start + len(speech)] = speech
        rms = float(np.sqrt(np.mean(speech**2)))
        snr_db = rng.uniform(5.0, 30.0)
        level = rms / 10 ** (snr_db / 20)
    else:
        level = 10 ** rng.uniform(-3.5, -1.0)
    return out + level * noise(rng, RATE)


def mel_filterbank() -> np.ndarray:
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    mel_points = np.linspace(hz_to_mel(np.array(20.0)), hz_to_mel(np.array(RATE / 2)), MELS + 2)
    hz = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    bins = hz / RATE * NFFT
    freqs = np.arange(NFFT // 2 + 1)
    bank = np.zeros((MELS, len(freqs)))
    for m in range(MELS):
        lo, mid, hi = bins[m], bins[m + 1], bins[m + 2]
        rising = (freqs - lo) / (mid - lo)
        falling = (hi - freqs) / (hi - mid)
        bank[m] = np.clip(np.minimum(rising, falling), 0.0, None)
    return bank


MEL_BANK = mel_filterbank()


def log_mel(audio: np.ndarray) -> np.ndarray:
    """[FRAMES, MELS] log-mel energies of a 1 s clip."""
    frames = np.lib.stride_tricks.sliding_window_view(audio, WINDOW)[::HOP][:FRAMES]
    spectrum = np.abs(np.fft.rfft(frames * signal.get_window("hann", WINDOW), NFFT)) ** 2
    return np.log(spectrum @ MEL_BANK.T + 1e-6).astype(np.float32)


def make_set(
    rng: np.random.Generator, voices: list[str], per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    feats, labels = [], []
    for label, name in enumerate(CLASSES):
        for _ in range(per_class):
            speech = None
            if name != "silence":
                word = name if name != "unknown" else str(rng.choice(UNKNOWN_WORDS))
                voice = f"{rng.choice(ACCENTS)}+{rng.choice(voices)}"
                speed = int(rng.integers(110, 230))
                pitch = int(rng.integers(15, 85))
                amplitude = int(rng.integers(40, 200))
                speech = speak(word, voice, speed, pitch, amplitude)
            feats.append(log_mel(clip(rng, speech)))
            labels.append(label)
    return np.stack(feats)[:, None], np.asarray(labels, dtype=np.int64)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


def make_model(width: int = WIDTH) -> nn.Module:
    # 49x40 -> 25x20 -> 13x10: most of the work at 25x20 and 13x10, like DS-CNN's stride-2 stem
    return nn.Sequential(
        *conv_bn_relu(1, width),
        *conv_bn_relu(width, 2 * width, stride=2),
        *conv_bn_relu(2 * width, 2 * width),
        *conv_bn_relu(2 * width, 4 * width, stride=2),
        *conv_bn_relu(4 * width, 4 * width),
        *conv_bn_relu(4 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(4 * width, len(CLASSES)),
    )


def spec_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random time mask (<= 8 frames) and one frequency mask (<= 6 bands) per sample."""
    x = x.clone()
    n = x.shape[0]
    t0 = torch.randint(0, FRAMES, (n,), generator=gen)
    tw = torch.randint(0, 9, (n,), generator=gen)
    f0 = torch.randint(0, MELS, (n,), generator=gen)
    fw = torch.randint(0, 7, (n,), generator=gen)
    t = torch.arange(FRAMES)[None]
    f = torch.arange(MELS)[None]
    tmask = (t >= t0[:, None]) & (t < (t0 + tw)[:, None])
    fmask = (f >= f0[:, None]) & (f < (f0 + fw)[:, None])
    mask = tmask[:, :, None] | fmask[:, None, :]
    return x.masked_fill(mask[:, None], 0.0)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Module:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    batch = 64
    steps = epochs * ((len(xt) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        started, total, correct = time.perf_counter(), 0.0, 0
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = order[i : i + batch]
            logits = model(spec_augment(xt[idx], gen))
            loss = nn.functional.cross_entropy(logits, yt[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yt[idx]).sum())
        print(
            f"  epoch {epoch + 1}/{epochs}: loss {total / len(xt):.3f}, train acc "
            f"{correct / len(xt):.3f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    return model.eval()


def ort_accuracy(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x})
    return float((logits.argmax(axis=1) == y).mean())


def build(zoo_dir: Path, epochs: int, train_per_class: int) -> float:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found — apt-get install espeak-ng")
    train_voices, held_voices = split_variants(variants())
    started = time.perf_counter()
    x_train, y_train = make_set(np.random.default_rng(SEED), train_voices, train_per_class)
    x_test, y_test = make_set(np.random.default_rng(SEED + 1), held_voices, EVAL_PER_CLASS)
    print(
        f"{NAME}: {len(y_train)} training clips ({len(train_voices)} variants), {len(y_test)} "
        f"held-out clips ({len(held_voices)} variants) in {time.perf_counter() - started:.0f} s"
    )
    mean, std = float(x_train.mean()), float(x_train.std())
    x_train = ((x_train - mean) / std).astype(np.float32)
    # The shipped eval features are rounded to float16's grid (stored as float32): the file
    # compresses to about half, and the accuracy below is measured on exactly these values.
    x_test = np.ascontiguousarray(((x_test - mean) / std).astype(np.float16), dtype=np.float32)

    torch.manual_seed(SEED)  # the initial weights too, not only the training order
    model = train(make_model(), x_train, y_train, epochs)
    model_path = zoo_dir / "models" / f"{NAME}.onnx"
    from_torch(
        model, (torch.from_numpy(x_test[:4]),), model_path, input_names=["input"],
        output_names=["logits"],
    )  # fmt: skip
    accuracy = ort_accuracy(model_path, x_test, y_test)
    proto = onnx.load(str(model_path))
    proto.producer_name = "edgeshift scripts/build_kws.py"
    proto.doc_string = (
        f"{NAME}: keyword spotter (6-conv CNN, width {WIDTH}) on espeak-ng speech; input = "
        f"log-mel [1, {FRAMES}, {MELS}] standardized, output = {len(CLASSES)} logits "
        f"({', '.join(CLASSES)}). Test accuracy {accuracy:.4f} on {len(y_test)} clips spoken "
        "by held-out voice variants."
    )
    for key, value in {
        "dataset": "espeak-ng " + _espeak_version(),
        "classes": ",".join(CLASSES),
        "held_out_variants": ",".join(held_voices),
        "features": (
            f"log-mel {MELS} bands 20-8000 Hz, hann {WINDOW} samples, hop {HOP}, nfft {NFFT}, "
            f"{RATE} Hz; (log(mel + 1e-6) - {mean:.6f}) / {std:.6f}"
        ),
        "test_accuracy": f"{accuracy:.6f}",
        "test_samples": str(len(y_test)),
    }.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(model_path))
    np.savez_compressed(zoo_dir / "data" / f"{NAME}.npz", input=x_test, labels=y_test)
    print(f"{NAME}: test accuracy {accuracy:.4f} on {len(y_test)} held-out clips -> {model_path}")
    return accuracy


def _espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    return out.split()[3] if len(out.split()) > 3 else out.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ZOO_DIR, help="zoo dir to write models/ and data/ into"
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-per-class", type=int, default=TRAIN_PER_CLASS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    (args.out / "data").mkdir(parents=True, exist_ok=True)
    build(args.out, args.epochs, args.train_per_class)
    return 0


if __name__ == "__main__":
    sys.exit(main())
