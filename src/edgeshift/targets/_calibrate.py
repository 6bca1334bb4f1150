"""Microbenchmarks behind the host calibration: small ONNX graphs on the real runtimes.

Each figure is the median of timed ``Backend.run`` calls (``edgeshift.bench.measure``), so
it includes what a real inference pays: feed checks, the runtime's dispatch, allocation of
outputs. Compute figures subtract the measured per-call overhead.
"""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import psutil
from onnx import TensorProto, helper, numpy_helper

from edgeshift.bench import measure
from edgeshift.errors import BackendError
from edgeshift.runtime import open_backend
from edgeshift.targets.roofline import STREAM_FRACTION
from edgeshift.targets.schema import Calibration

_F = TensorProto.FLOAT


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: list) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def _vi(name: str, elem: int, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def chain_model(path: Path, n_ops: int, numel: int) -> Path:
    """x → Add → Mul → Add → … (n_ops nodes) on a [1, numel] float tensor."""
    nodes, inits = [], []
    prev = "x"
    for i in range(n_ops):
        out = "y" if i == n_ops - 1 else f"t{i}"
        c = np.full((1,), 1.0 + 1e-3 * (i % 7), np.float32)
        inits.append(numpy_helper.from_array(c, f"c{i}"))
        nodes.append(helper.make_node("Add" if i % 2 == 0 else "Mul", [prev, f"c{i}"], [out]))
        prev = out
    return _save(path, nodes, [_vi("x", _F, [1, numel])], [_vi("y", _F, [1, numel])], inits)


def matmul_model(path: Path, m: int, k: int, n: int, int8: bool = False) -> Path:
    rng = np.random.default_rng(0)
    if int8:
        w = rng.integers(-127, 127, (k, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
        return _save(path, [node], [_vi("x", TensorProto.UINT8, [m, k])],
                     [_vi("y", TensorProto.INT32, [m, n])], [numpy_helper.from_array(w, "w")])  # fmt: skip
    wf = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    return _save(path, [node], [_vi("x", _F, [m, k])], [_vi("y", _F, [m, n])],
                 [numpy_helper.from_array(wf, "w")])  # fmt: skip


def conv_model(path: Path, c: int, hw: int) -> Path:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    return _save(path, [node], [_vi("x", _F, [1, c, hw, hw])], [_vi("y", _F, [1, c, hw, hw])],
                 [numpy_helper.from_array(w, "w")])  # fmt: skip


def _median_run_s(
    model: Path, feed: dict[str, np.ndarray], duration_s: float, backend: str = "onnxruntime",
    precision: str = "fp32",
) -> float:  # fmt: skip
    runtime = open_backend(model, backend=backend, precision=precision)
    try:
        times = measure(runtime, feed, duration_s=duration_s, warmup=3)
    finally:
        runtime.close()
    return statistics.median(times)


def _copy_gbs(nbytes: int, repeats: int) -> float:
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(best) / 1e9  # read + write


def run_calibration(
    host: object,
    *,
    peak_fn: Callable[[str], float | None],
    quick: bool = False,
    progress: bool = False,
) -> Calibration:
    """Time the microbenchmarks on this host; HOST is a :class:`~edgeshift.targets.host.HostInfo`."""
    from edgeshift.targets.host import HostInfo

    assert isinstance(host, HostInfo)
    t_start = time.perf_counter()
    dur = 0.15 if quick else 0.6
    rng = np.random.default_rng(0)
    steps: list[tuple[str, Callable[[], None]]] = []
    out: dict[str, float] = {}
    achieved: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="edgeshift-cal-") as tmp:
        d = Path(tmp)
        tiny = {"x": np.ones((1, 16), np.float32)}
        chain_ops = 32

        def overheads() -> None:
            rss_before = psutil.Process().memory_info().rss
            runtime = open_backend(chain_model(d / "one.onnx", 1, 16))
            out["runtime_rss"] = max(psutil.Process().memory_info().rss, rss_before)
            times = measure(runtime, tiny, duration_s=dur, warmup=20)
            runtime.close()
            out["call"] = statistics.median(times)
            chain = _median_run_s(chain_model(d / "chain.onnx", chain_ops + 1, 16), tiny, dur)
            out["op"] = max(chain - out["call"], 0.0) / chain_ops

        def gemm() -> None:
            m, k, n = (128, 512, 512) if quick else (256, 1024, 1024)
            path = matmul_model(d / "mm.onnx", m, k, n)
            feed = {"x": rng.standard_normal((m, k)).astype(np.float32)}
            t = _median_run_s(path, feed, dur) - out["call"]
            achieved["fp32"] = 2 * m * k * n / t / 1e9
            try:  # bf16 only where OpenVINO offers it on this CPU
                t = _median_run_s(path, feed, dur, backend="openvino", precision="bf16")
                achieved["bf16"] = 2 * m * k * n / max(t - out["call"], 1e-9) / 1e9
            except BackendError:
                pass
            qpath = matmul_model(d / "mm8.onnx", m, k, n, int8=True)
            qfeed = {"x": rng.integers(0, 255, (m, k), dtype=np.uint8)}
            try:
                t = _median_run_s(qpath, qfeed, dur) - out["call"]
                achieved["int8"] = 2 * m * k * n / t / 1e9
            except BackendError:
                pass

        def conv() -> None:
            c, hw = (32, 28) if quick else (64, 56)
            feed = {"x": rng.standard_normal((1, c, hw, hw)).astype(np.float32)}
            t = _median_run_s(conv_model(d / "conv.onnx", c, hw), feed, dur) - out["call"]
            out["conv"] = 2 * c * c * 9 * hw * hw / t / 1e9

        def bandwidth() -> None:
            big = (16 << 20) if quick else (64 << 20)  # bytes per tensor, well past the LLC
            out["copy"] = _copy_gbs(2 * big, 3 if quick else 5)
            feed = {"x": np.ones((1, big // 4), np.float32)}
            t = _median_run_s(chain_model(d / "big.onnx", 1, big // 4), feed, dur) - out["call"]
            out["elementwise"] = 2 * big / t / 1e9
            small = 256 << 10  # stays in L2 on anything that has one
            n_ops = 16
            feed = {"x": np.ones((1, small // 4), np.float32)}
            t = _median_run_s(chain_model(d / "small.onnx", n_ops, small // 4), feed, dur)
            per_op = max((t - out["call"]) / n_ops - out["op"], 1e-9)
            out["cache"] = 2 * small / per_op / 1e9

        steps = [("overheads", overheads), ("gemm", gemm), ("conv", conv), ("bandwidth", bandwidth)]
        if progress:
            from rich.progress import Progress

            from edgeshift.cli.render import err_console

            with Progress(console=err_console, transient=True) as bar:
                task = bar.add_task("calibrating host", total=len(steps))
                for name, step in steps:
                    bar.update(task, description=f"calibrating: {name}")
                    step()
                    bar.advance(task)
        else:
            for _, step in steps:
                step()

    peak32 = peak_fn("fp32") or 1.0
    efficiency = {
        "gemm": achieved["fp32"] / peak32,
        "conv": out["conv"] / peak32,
        "memory": out["elementwise"] / (out["copy"] / STREAM_FRACTION),
    }
    for p, gops in achieved.items():
        peak = peak_fn(p)
        if peak:
            efficiency[f"gemm_{p}"] = gops / peak
    return Calibration(
        key=host.cache_key,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        cpu_model=host.cpu_model,
        threads=host.usable_cores,
        runtime_versions=host.runtime_versions,
        achieved_gops=achieved,
        conv_gflops=out["conv"],
        dram_copy_gbs=out["copy"],
        elementwise_gbs=out["elementwise"],
        cache_gbs=out["cache"],
        call_overhead_us=out["call"] * 1e6,
        op_overhead_us=out["op"] * 1e6,
        runtime_overhead_bytes=int(out["runtime_rss"]),
        efficiency=efficiency,
        seconds=time.perf_counter() - t_start,
    )
