"""``edgeshift cluster serve``: a real subprocess on the test cluster (JSON status, infer,
SIGTERM stops it), and its one-line errors through CliRunner."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tests.serve.serve_models import mlp_reference, save_mlp
from typer.testing import CliRunner

from edgeshift.cli.main import app

runner = CliRunner()


def _error(args: list[str]) -> str:
    result = runner.invoke(app, ["cluster", "serve", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_no_ray_at_the_address_is_one_line(tmp_path: Path) -> None:
    model = save_mlp(tmp_path / "mlp.onnx")
    line = _error([str(model), "--address", "127.0.0.1:1"])
    assert "no Ray cluster at 127.0.0.1:1" in line and "ray start --head" in line


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--min-replicas", "3", "--max-replicas", "2"], "--max-replicas (2) must be >= 1"),
        (["--replicas", "0"], "--replicas must be >= 1"),
        (["--min-replicas", "-1"], "--min-replicas must be >= 0"),
    ],
)
def test_bad_counts_are_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    model = save_mlp(tmp_path / "mlp.onnx")
    assert message in _error([str(model), "--address", "127.0.0.1:1", *flags])


def test_a_plan_that_is_not_a_plan(tmp_path: Path) -> None:
    model = save_mlp(tmp_path / "mlp.onnx")
    (tmp_path / "plan.json").write_text("{}")
    plan = str(tmp_path / "plan.json")
    assert "not a plan.json" in _error([str(model), "--address", "127.0.0.1:1", "--plan", plan])


def test_without_ray_installed_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = save_mlp(tmp_path / "mlp.onnx")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    line = _error([str(model)])
    assert "Ray Serve is not installed" in line and "edgeshift[ray]" in line


def test_without_haproxy_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = save_mlp(tmp_path / "mlp.onnx")
    monkeypatch.setattr("edgeshift.cluster.ingress.HAPROXY_BINARY", str(tmp_path / "haproxy"))
    line = _error([str(model), "--address", "127.0.0.1:1"])
    assert "HAProxy is not at" in line and "apt-get install haproxy" in line


@pytest.mark.ray
def test_serves_until_sigterm(ray_cluster, tmp_path: Path) -> None:
    model = save_mlp(tmp_path / "mlp.onnx", seed=5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeshift", "cluster", "serve", str(model), "--json",
         "--address", ray_cluster.address, "--port", "0", "--replicas", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        status = json.loads(proc.stdout.readline())
        assert status["apps"] == {"edgeshift": 1}
        (replica,) = status["replicas"]
        assert replica["models"] == ["mlp"]
        client = httpclient.InferenceServerClient(status["url"].removeprefix("http://"))
        x = np.ones((2, 8), np.float32)
        inp = httpclient.InferInput("x", [2, 8], "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer("mlp", [inp]).as_numpy("y")
        np.testing.assert_allclose(got, mlp_reference(x, seed=5), rtol=1e-5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
