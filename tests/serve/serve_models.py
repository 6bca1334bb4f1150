"""Small ONNX models for the serve tests, built with onnx.helper so outputs are hand-checkable,
and a model repository laid out as REPO/NAME/VERSION/model.onnx."""

from __future__ import annotations

import http.client
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tests.conftest import make_mlp
from tests.conftest import mlp_reference as reference

from edgeshift.serve import ServerThread


def save_graph(graph: onnx.GraphProto, path: Path) -> Path:
    """GRAPH as an opset 17 model file at PATH (checked)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def save_mlp(path: Path, seed: int = 0, sizes: tuple[int, ...] = (8, 16, 4)) -> Path:
    """x [batch, 8] float32 -> Gemm, Relu, Gemm -> y [batch, 4] (the suite's shared MLP)."""
    model, _ = make_mlp(seed, sizes)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def mlp_reference(x: np.ndarray, seed: int = 0, sizes: tuple[int, ...] = (8, 16, 4)) -> np.ndarray:
    return reference(x, make_mlp(seed, sizes)[1])


def save_fixed(path: Path) -> Path:
    """x [1, 4] float32 -> y = 2x: a fixed batch of 1, so it can never be batched."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    return save_graph(graph, path)


def save_multi(path: Path) -> Path:
    """a [n, 3] float32, b [n, 3] int64 -> sum = a + float(b), twice = 2 * b (int64)."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "bf"], ["sum"]),
            helper.make_node("Add", ["b", "b"], ["twice"]),
        ],
        "multi",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["n", 3]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("twice", TensorProto.INT64, ["n", 3]),
        ],
    )
    return save_graph(graph, path)


def save_strings(path: Path) -> Path:
    """text [n] string -> same [n] string (Identity): BYTES end to end."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["n"])],
    )
    return save_graph(graph, path)


def make_repository(root: Path) -> Path:
    """root/mlp/{1,2}/model.onnx (weights seeded 1 and 2), root/double/1/model.onnx (fixed)."""
    save_mlp(root / "mlp" / "1" / "model.onnx", seed=1)
    save_mlp(root / "mlp" / "2" / "model.onnx", seed=2)
    save_fixed(root / "double" / "1" / "model.onnx")
    return root


def exchange(
    url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP exchange with the server at host:port: (status, headers, body)."""
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def metric(server: ServerThread, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples whose labels include LABELS."""
    status, _, body = exchange(server.url, "GET", "/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


class GatedBackend:
    """A real backend whose run waits for a gate: holds the batcher busy on demand."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.concurrent_runs = inner.concurrent_runs
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.gate = threading.Event()
        self.entered = threading.Event()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        assert self.gate.wait(30)
        return self.inner.run(feeds)

    def close(self) -> None:
        self.inner.close()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll CONDITION until it holds; fail the test (never hang it) after TIMEOUT_S."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.005)


def gate_backends(monkeypatch: Any) -> list[GatedBackend]:
    """Make the repository open GatedBackends (a pytest MonkeyPatch undoes it); the list fills
    as models load."""
    import edgeshift.serve.repository as repository_module
    from edgeshift.runtime import open_backend

    gated: list[GatedBackend] = []

    def open_gated(*args: Any, **kwargs: Any) -> GatedBackend:
        gated.append(GatedBackend(open_backend(*args, **kwargs)))
        return gated[-1]

    monkeypatch.setattr(repository_module, "open_backend", open_gated)
    return gated


READY_RE = re.compile(r"serving Open Inference Protocol v2 on http://(\S+)")
GRPC_READY_RE = re.compile(r"serving gRPC on (\S+)")


class ServeProcess:
    """``python -m edgeshift serve ARGS --port 0 --grpc-port off`` (``--grpc-port 0`` with
    GRPC) as a real process (to kill, signal or limit for real), started once it announces
    its address(es). Its stderr is drained on a thread, so a chatty server never blocks on a
    full pipe."""

    def __init__(
        self,
        *args: str,
        preexec_fn: Callable[[], None] | None = None,
        timeout_s: float = 60.0,
        grpc: bool = False,
    ) -> None:
        command = [sys.executable, "-m", "edgeshift", "serve", *args, "--port", "0"]
        self.proc = subprocess.Popen(
            [*command, "--grpc-port", "0" if grpc else "off"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=preexec_fn,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        url: str | None = None
        self.grpc_url: str | None = None  # host:port, with GRPC
        while url is None or (grpc and self.grpc_url is None):
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.proc.kill()
                raise AssertionError("the server did not start") from None
            if match := READY_RE.search(line):
                url = match.group(1)
            if match := GRPC_READY_RE.search(line):
                self.grpc_url = match.group(1)
        self.url: str = url  # host:port

    def _read(self, lines: queue.Queue[str]) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            lines.put(line)
