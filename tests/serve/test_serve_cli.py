"""``edgeshift serve`` as a real subprocess (tritonclient talks to it; SIGTERM drains it) and
the command's bad-input paths through CliRunner."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
import tritonclient.http.aio as tha
from serve_models import exchange, mlp_reference, save_mlp
from typer.testing import CliRunner

from edgeshift.cli.main import app

READY_RE = re.compile(r"serving Open Inference Protocol v2 on https?://(\S+)")
GRPC_RE = re.compile(r"serving gRPC on (\S+)")


class ServeProcess:
    """`python -m edgeshift serve ...` with its stderr read on a thread (never blocks the pipe)."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            # gRPC on a free port: Triton's 8001 may be taken by a neighbour.
            [sys.executable, "-m", "edgeshift", "serve", "--grpc-port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_ready()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def _wait_ready(self, timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = READY_RE.search(line)
            if match:
                return match.group(1)
        self.proc.kill()
        raise AssertionError("server did not start:\n" + "".join(self.stderr))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return save_mlp(tmp_path / "dense.onnx", seed=0)


@pytest.fixture
def served(model_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(str(model_path), "--port", "0", "--threads", "1")
    yield process
    process.stop()


@pytest.mark.slow
def test_real_cli_process_serves_tritonclient(served: ServeProcess) -> None:
    client = th.InferenceServerClient(served.url)
    assert client.is_server_ready()
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    inp = th.InferInput("x", [3, 8], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("dense", [inp])
    np.testing.assert_allclose(result.as_numpy("y"), mlp_reference(x, 0), rtol=1e-4, atol=1e-5)
    client.close()
    # gRPC beside HTTP, on the same models.
    grpc_url = None
    deadline = time.monotonic() + 10
    while grpc_url is None:
        assert time.monotonic() < deadline, "".join(served.stderr)
        found = [m for m in map(GRPC_RE.search, served.stderr) if m]
        grpc_url = found[0].group(1) if found else None
        time.sleep(0.02)
    import tritonclient.grpc as tg

    grpc_client = tg.InferenceServerClient(grpc_url)
    try:
        g_inp = tg.InferInput("x", [3, 8], "FP32")
        g_inp.set_data_from_numpy(x)
        y = grpc_client.infer("dense", [g_inp]).as_numpy("y")
        np.testing.assert_allclose(y, mlp_reference(x, 0), rtol=1e-4, atol=1e-5)
    finally:
        grpc_client.close()
    # The access log is on by default: one JSON line per request.
    deadline = time.monotonic() + 10
    while not any('"path":"/v2/models/dense/infer"' in line for line in served.stderr):
        assert time.monotonic() < deadline, "".join(served.stderr)
        time.sleep(0.02)


def _in_flight(url: str) -> float:
    body = exchange(url, "GET", "/metrics")[2].decode()
    match = re.search(r'edgeshift_inference_in_flight\{model="dense"\} (\S+)', body)
    return float(match.group(1)) if match else 0.0


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_then_exits_cleanly(model_path: Path) -> None:
    # A long batching delay keeps requests in flight while the signal arrives.
    process = ServeProcess(
        str(model_path),
        "--port",
        "0",
        "--max-delay-ms",
        "1500",
        "--max-batch",
        "64",
        "--no-access-log",
    )
    xs = [np.full((1, 8), i, np.float32) for i in range(8)]

    async def main() -> list[np.ndarray]:
        client = tha.InferenceServerClient(process.url)
        try:
            inputs = []
            for x in xs:
                inp = tha.InferInput("x", [1, 8], "FP32")
                inp.set_data_from_numpy(x)
                inputs.append(inp)
            tasks = [asyncio.ensure_future(client.infer("dense", [inp])) for inp in inputs]
            deadline = time.monotonic() + 20
            while await asyncio.to_thread(_in_flight, process.url) < len(xs):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            process.proc.send_signal(signal.SIGTERM)
            return [r.as_numpy("y") for r in await asyncio.gather(*tasks)]
        finally:
            await client.close()

    try:
        results = asyncio.run(main())
        assert process.proc.wait(30) == 0
    finally:
        process.stop()
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, mlp_reference(x, 0), rtol=1e-4, atol=1e-5)
    log = "".join(process.stderr)
    assert "SIGTERM: draining in-flight requests" in log
    assert '"path"' not in log  # --no-access-log


runner = CliRunner()


def _fails_cleanly(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["serve", *args])
    assert result.exit_code != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert message in lines[0], lines[0]


def test_missing_model_path(tmp_path: Path) -> None:
    _fails_cleanly([str(tmp_path / "nope.onnx")], "model not found")


def test_directory_without_a_model(tmp_path: Path) -> None:
    _fails_cleanly([str(tmp_path)], "holds no model")


def test_corrupt_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00garbage")
    # Alone in a repository it would be served as not ready; --strict refuses to start.
    _fails_cleanly([str(bad), "--strict"], "cannot load model 'broken'")


def test_two_models_with_one_name(tmp_path: Path, model_path: Path) -> None:
    other = save_mlp(tmp_path / "other" / "dense.onnx")
    _fails_cleanly([str(model_path), str(other)], "two models are named 'dense'")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--version-policy", "newest"], "bad --version-policy"),
        (["--max-batch", "0"], "--max-batch must be >= 1"),
        (["--max-queue", "0"], "--max-queue must be >= 1"),
        (["--max-delay-ms", "-1"], "--max-delay-ms must be >= 0"),
        (["--max-delay-ms", "soon"], "--max-delay-ms 'soon': give milliseconds"),
        (["--instances", "0"], "--instances must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--max-body-mb", "0"], "--max-body-mb must be > 0"),
        (["--port", "70000"], "cannot listen on 127.0.0.1:70000"),
        (["--grpc-port", "http"], "--grpc-port 'http': give a port"),
        (["--grpc-port", "70000"], "--grpc-port '70000': give a port"),
        (["--max-rows", "0"], "--max-rows must be >= 1"),
        (["--max-tensor-mb", "-1"], "--max-tensor-mb must be > 0"),
        (["--max-dims", "0"], "--max-dims must be >= 1"),
        (["--json-offload-mb", "0"], "--json-offload-mb must be > 0"),
        (["--memory-budget-mb", "0"], "--memory-budget-mb must be > 0"),
        (["--max-header-kb", "0.5"], "--max-header-kb must be >= 1"),
        (["--header-timeout-s", "0"], "--header-timeout-s must be > 0"),
        (["--body-timeout-s", "-1"], "--body-timeout-s must be > 0"),
        (["--keep-alive-s", "0"], "--keep-alive-s must be > 0"),
        (["--max-connections", "0"], "--max-connections must be >= 1"),
        (["--graceful-timeout-s", "-1"], "--graceful-timeout-s must be >= 0"),
        (["--grpc-max-streams", "0"], "--grpc-max-streams must be >= 1"),
        (["--grpc-max-calls", "-1"], "--grpc-max-calls must be >= 1"),
        (["--grpc-idle-timeout-s", "0"], "--grpc-idle-timeout-s must be > 0"),
        (["--tls-cert", "x.pem"], "TLS needs both --tls-cert and --tls-key"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--auth-token-file", "/nonexistent/tokens"], "cannot read --auth-token-file"),
    ],
)
def test_bad_flags(model_path: Path, flags: list[str], message: str) -> None:
    _fails_cleanly([str(model_path), *flags], message)


def test_port_in_use(model_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _fails_cleanly([str(model_path), "--port", str(port)], f"cannot listen on 127.0.0.1:{port}")


def test_version_policy_matching_nothing(tmp_path: Path) -> None:
    save_mlp(tmp_path / "repo" / "m" / "1" / "model.onnx")
    _fails_cleanly(
        [str(tmp_path / "repo"), "--version-policy", "specific:5", "--strict"], "no version matches"
    )


def test_listening_socket_is_tcp_so_responses_skip_nagle() -> None:
    # asyncio sets TCP_NODELAY only on accepted sockets whose proto is IPPROTO_TCP; without it
    # every keep-alive response waited ~40 ms for a delayed ACK.
    from edgeshift.serve.server import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


@pytest.mark.slow
def test_security_flags_reach_the_server(model_path: Path, tmp_path: Path) -> None:
    inference, repository = "cli-inference-token-0123456789", "cli-repository-token-0123456789"
    (tmp_path / "inference").write_text(inference + "\n")
    (tmp_path / "repository").write_text(repository + "\n")
    process = ServeProcess(
        str(model_path),
        "--port",
        "0",
        "--auth-token-file",
        str(tmp_path / "inference"),
        "--repository-api",
        "--repository-token-file",
        str(tmp_path / "repository"),
        "--allowed-host",
        "edge.local",
        "--max-header-kb",
        "4",
    )
    try:
        url = process.url
        assert exchange(url, "GET", "/v2/models/dense")[0] == 401
        ok = {"Authorization": f"Bearer {inference}", "Host": "edge.local"}
        assert exchange(url, "GET", "/v2/models/dense", headers=ok)[0] == 200
        index = "/v2/repository/index"
        assert exchange(url, "POST", index, headers=ok)[0] == 401
        repo = {"Authorization": f"Bearer {repository}"}
        assert exchange(url, "POST", index, headers=repo)[0] == 200
        big = {**ok, "X-Pad": "p" * 5000}
        assert exchange(url, "GET", "/v2/health/live", headers=big)[0] == 431
        assert inference not in " ".join(process.proc.args)  # type: ignore[arg-type]
    finally:
        process.stop()


def test_grpc_limit_flags_reach_the_server(model_path: Path) -> None:
    """--grpc-max-calls 1: with one stream held open, the port refuses the next call."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    process = ServeProcess(str(model_path), "--port", "0", "--grpc-max-calls", "1")
    try:
        deadline = time.monotonic() + 10
        while not (found := [m for m in map(GRPC_RE.search, process.stderr) if m]):
            assert time.monotonic() < deadline, "".join(process.stderr)
            time.sleep(0.02)
        with grpc.insecure_channel(found[0].group(1)) as channel:
            outbox: queue.Queue[bytes | None] = queue.Queue()
            stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
            held = stream(iter(outbox.get, None))
            outbox.put(pb.ModelInferRequest(model_name="nope").SerializeToString())
            assert b"unknown model" in next(held)  # the server holds the stream: one call open
            live = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerLive",
                request_serializer=pb.ServerLiveRequest.SerializeToString,
                response_deserializer=pb.ServerLiveResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as refused:
                live(pb.ServerLiveRequest(), timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            outbox.put(None)
            for _ in held:
                pass
            assert live(pb.ServerLiveRequest(), timeout=30).live  # the call ended: room again
    finally:
        process.stop()
