"""edgeshift itself on an Arm box: `edgeshift serve` (HTTP and gRPC) and `inspect` inside the
arm64 userland, answered over 127.0.0.1 to tritonclient on the x86 side."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th

from edgeshift import zoo
from edgeshift.runtime import open_backend
from edgeshift.verify.runners import DEFAULT_CPU, guest_env
from edgeshift.verify.userland import Userland

pytestmark = pytest.mark.slow
READY_RE = re.compile(r"serving Open Inference Protocol v2 on http://(\S+)")
GRPC_RE = re.compile(r"serving gRPC on (\S+)")


def _guest(userland: Userland, *args: str) -> list[str]:
    return [
        "qemu-aarch64",
        "-cpu",
        DEFAULT_CPU,
        "-L",
        str(userland.root),
        str(userland.python),
        *args,
    ]


def test_serve_inside_arm64_answers_tritonclient(userland: Userland, tmp_path: Path) -> None:
    model = zoo.get("digits-mlp", tmp_path)
    argv = _guest(
        userland, "-m", "edgeshift", "serve", str(model.model_path), "--port", "0",
        "--grpc-port", "0",
    )  # fmt: skip
    proc = subprocess.Popen(
        argv, env={**guest_env(userland), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    try:
        url = grpc_url = None
        while url is None or grpc_url is None:
            line = lines.get(timeout=120)  # ~10 s of emulated imports
            if match := READY_RE.search(line):
                url = match.group(1)
            if match := GRPC_RE.search(line):
                grpc_url = match.group(1)
        client = th.InferenceServerClient(url, network_timeout=60)
        assert client.is_server_ready()
        x = np.load(model.data_path)["input"][:8]
        request = th.InferInput("input", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        got = client.infer(model.model_path.stem, [request]).as_numpy("logits")
        expected = open_backend(model.model_path).run({"input": x})["logits"]
        # Same fp32 graph, NEON vs AVX kernels: the verify policy's 1e-4 of the output range.
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
        assert (got.argmax(1) == expected.argmax(1)).all()
        grpc_input = tg.InferInput("input", list(x.shape), "FP32")
        grpc_input.set_data_from_numpy(x)
        with tg.InferenceServerClient(grpc_url) as grpc_client:
            via_grpc = grpc_client.infer(model.model_path.stem, [grpc_input]).as_numpy("logits")
        np.testing.assert_array_equal(via_grpc, got)  # one server, one model: the same numbers
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_inspect_runs_inside_arm64(userland: Userland, tmp_path: Path) -> None:
    model = zoo.get("digits-cnn", tmp_path)
    done = subprocess.run(
        _guest(userland, "-m", "edgeshift", "inspect", str(model.model_path), "--json"),
        env=guest_env(userland), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    host = subprocess.run(
        [sys.executable, "-m", "edgeshift", "inspect", str(model.model_path), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    expected = json.loads(host.stdout)
    for key in ("inputs", "outputs", "params", "opset"):
        assert report[key] == expected[key]  # static analysis: the same on both ISAs


def test_bench_runs_inside_arm64_and_says_it_is_emulated_nowhere_else(
    userland: Userland, tmp_path: Path
) -> None:
    # bench measures whatever CPU it runs on; under QEMU that is the emulator, so the test
    # checks that it runs and reports, not what it reports.
    model = zoo.get("digits-mlp", tmp_path)
    done = subprocess.run(
        _guest(userland, "-m", "edgeshift", "bench", str(model.model_path), "--iterations", "5",
               "--warmup", "1", "--json"),
        env=guest_env(userland), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["backend"] == "onnxruntime" and report["iterations"] == 5
    assert report["p50_ms"] > 0


def test_estimate_for_the_host_inside_arm64(userland: Userland, tmp_path: Path) -> None:
    # `targets host --recalibrate --quick` detects and calibrates the (emulated) Arm host, and
    # `estimate --target host` uses that calibration. A full calibration is ~40 s natively but
    # well over 10 minutes under QEMU's emulation (every conv and GEMM stack on ONNX Runtime
    # and OpenVINO); the quick one (one round at smaller sizes) is what emulated hosts are for.
    model = zoo.get("digits-mlp", tmp_path)
    env = {**guest_env(userland), "EDGESHIFT_CACHE_DIR": str(tmp_path / "cache")}
    calibrated = subprocess.run(
        _guest(userland, "-m", "edgeshift", "targets", "host", "--recalibrate", "--quick",
               "--json"),
        env=env, capture_output=True, text=True, timeout=480, check=False,
    )  # fmt: skip
    assert calibrated.returncode == 0, calibrated.stderr[-2000:]
    assert json.loads(calibrated.stdout)["calibration"]["achieved_gops"]["fp32"] > 0
    done = subprocess.run(
        _guest(userland, "-m", "edgeshift", "estimate", str(model.model_path), "--target", "host",
               "--json"),
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["target_id"] == "host" and report["fits"] and report["latency_ms"] > 0
    assert report["precision"] == "fp32"  # no bf16 on the Neoverse-N1 the userland describes
