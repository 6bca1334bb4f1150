"""``edgeshift cluster serve`` and ``edgeshift serve --ray``: real subprocesses on the test
cluster (JSON status, HTTP and gRPC infer, SIGTERM stops them), and their one-line errors
through CliRunner."""

from __future__ import annotations

import json
import re
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


def _error(args: list[str], verb: tuple[str, ...] = ("cluster", "serve")) -> str:
    result = runner.invoke(app, [*verb, *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_no_ray_at_the_address_is_one_line(tmp_path: Path) -> None:
    model = save_mlp(tmp_path / "mlp.onnx")
    line = _error([str(model), "--address", "127.0.0.1:1"])
    assert "no Ray cluster at 127.0.0.1:1" in line and "ray start --head" in line


def test_kernel_ingress_without_root_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = save_mlp(tmp_path / "mlp.onnx")
    fake = tmp_path / "iptables"
    fake.write_text(
        "#!/bin/sh\necho 'iptables v1.8.9 (nf_tables): Permission denied' >&2\nexit 4\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr("edgeshift.cluster.ingress_kernel.IPTABLES", str(fake))
    line = _error([str(model), "--address", "127.0.0.1:1", "--ingress-mode", "kernel"])
    assert "needs root (CAP_NET_ADMIN)" in line and "--ingress-mode http" in line


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--min-replicas", "3", "--max-replicas", "2"], "--max-replicas (2) must be >= 1"),
        (["--replicas", "0"], "--replicas must be >= 1"),
        (["--min-replicas", "-1"], "--min-replicas must be >= 0"),
        (["--max-delay-ms", "-1"], "--max-delay-ms must be >= 0, not -1"),
        (["--max-delay-ms", "soon"], "--max-delay-ms 'soon': give milliseconds"),
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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ray", "--tls-cert", "c.pem"], "--tls-cert does not combine with --ray"),
        (["--ray", "--auth-token-file", "t", "--max-rows", "9"], "--auth-token-file, --max-rows"),
        (["--plan", "plan.json"], "--plan only applies to a cluster — add --ray [ADDRESS]"),
        (["--replicas", "2", "--ingress-mode", "tcp"], "--replicas, --ingress-mode only applies"),
        (["--ray", "127.0.0.1:1", "--ingress-mode", "udp"], "'udp': use one of http, tcp, kernel"),
        (
            ["--ray", "127.0.0.1:1", "--ingress-mode", "kernel", "--host", "::1"],
            "--host ::1: the kernel ingress is IPv4 only — give an IPv4 address",
        ),
        (["--ray", "127.0.0.1:1", "--replica-host", "nodes"], "--replica-host 'nodes': give node"),
        (["--ray", "127.0.0.1:1", "--host", "example.com"], "--host 'example.com' is not an IP"),
        (["--ray", "127.0.0.1:1", "--grpc-port", "x"], "--grpc-port 'x': give a port"),
        (["--ray", "127.0.0.1:1"], "no Ray cluster at 127.0.0.1:1"),
        (["--ray", "--max-delay-ms", "-2"], "--max-delay-ms must be >= 0, not -2"),
    ],
)
def test_serve_ray_bad_combinations_are_one_line(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    model = save_mlp(tmp_path / "mlp.onnx")
    assert message in _error([str(model), *flags], verb=("serve",))


def test_serve_ray_reads_its_address_wherever_it_is(tmp_path: Path) -> None:
    from edgeshift.cli.cluster import split_ray_address

    model = save_mlp(tmp_path / "mlp.onnx")
    assert split_ray_address([model]) == ([model], "local")
    assert split_ray_address([Path("10.0.0.2:6379"), model]) == ([model], "10.0.0.2:6379")
    assert split_ray_address([model, Path("auto")]) == ([model], "auto")
    line = _error([str(model), "--ray", "auto", "10.0.0.2:6379"], verb=("serve",))
    assert "--ray takes one address, not auto, 10.0.0.2:6379" in line
    assert "--ray with no model" in _error(["--ray", "auto"], verb=("serve",))


def test_a_cluster_beyond_loopback_warns(tmp_path: Path) -> None:
    from edgeshift.cluster.bind import exposure_warning

    assert exposure_warning("127.0.0.1", "127.0.0.1") is None
    assert "the replicas on each node's IP" in (exposure_warning("127.0.0.1", None) or "")
    warning = exposure_warning("0.0.0.0", "::1") or ""
    assert "the ingress on 0.0.0.0" in warning and "replicas" not in warning


def _run_until_sigterm(command: list[str], seed: int) -> dict:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.startswith("{"):
            status = json.loads(line)
        else:  # the ready line: serving Open Inference Protocol v2 on URL and gRPC on ADDRESS (…)
            match = re.match(
                r"serving Open Inference Protocol v2 on (\S+)(?: and gRPC on (\S+))? \(", line
            )
            assert match, line
            status = {"url": match.group(1), "grpc": match.group(2), "line": line}
        client = httpclient.InferenceServerClient(status["url"].removeprefix("http://"))
        x = np.ones((2, 8), np.float32)
        inp = httpclient.InferInput("x", [2, 8], "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer("mlp", [inp]).as_numpy("y")
        np.testing.assert_allclose(got, mlp_reference(x, seed=seed), rtol=1e-5)
        if status["grpc"] is not None:
            import tritonclient.grpc as grpcclient

            grpc = grpcclient.InferenceServerClient(status["grpc"])
            ginp = grpcclient.InferInput("x", [2, 8], "FP32")
            ginp.set_data_from_numpy(x)
            got = grpc.infer("mlp", [ginp]).as_numpy("y")
            np.testing.assert_allclose(got, mlp_reference(x, seed=seed), rtol=1e-5)
            grpc.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        return status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.ray
def test_serve_ray_is_cluster_serve_with_grpc(ray_cluster, tmp_path: Path) -> None:
    model = save_mlp(tmp_path / "mlp.onnx", seed=6)
    status = _run_until_sigterm(
        [sys.executable, "-m", "edgeshift", "serve", str(model), "--ray", ray_cluster.address,
         "--port", "0", "--grpc-port", "0", "--replicas", "1", "--replica-host", "127.0.0.1",
         "--max-batch", "8"],
        seed=6,
    )  # fmt: skip
    assert status["grpc"].startswith("127.0.0.1:")
    assert "(1 replicas on 1 nodes)" in status["line"]


@pytest.mark.ray
def test_serves_until_sigterm(ray_cluster, tmp_path: Path) -> None:
    model = save_mlp(tmp_path / "mlp.onnx", seed=5)
    status = _run_until_sigterm(
        [sys.executable, "-m", "edgeshift", "cluster", "serve", str(model), "--json",
         "--address", ray_cluster.address, "--port", "0", "--replicas", "1",
         "--grpc-port", "0", "--replica-host", "127.0.0.1"],
        seed=5,
    )  # fmt: skip
    assert status["apps"] == {"edgeshift": 1}
    (replica,) = status["replicas"]
    assert replica["models"] == ["mlp"]
    assert replica["address"].startswith("127.0.0.1:")  # the bind address asked for
    assert replica["grpc_address"].startswith("127.0.0.1:")
    assert status["grpc"].startswith("127.0.0.1:") and status["ingress_mode"] == "http"
