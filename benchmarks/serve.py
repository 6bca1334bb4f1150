"""`edgeshift serve` under load: binary vs JSON tensors, batching on vs off, and the served
throughput as a fraction of the in-process ceiling (direct batched runtime calls).

The script builds the model (default: a 784-2048-2048-10 MLP with a dynamic batch dim, random
weights), starts `edgeshift serve` as a subprocess on 127.0.0.1 (batching on: --max-batch 32;
off: --max-batch 1), and drives it with a bounded (closed-loop) async load generator at each
concurrency: every in-flight slot sends its next request as soon as the last one is answered.
Rounds interleave the configurations so a noisy neighbour hurts them alike; each number is the
median over rounds. The client runs on the same machine, so its CPU time counts against the
server: the ratios are what one box can do, client included.

Run: ``python benchmarks/serve.py [--rounds 3] [--seconds 3] [--model mlp|minilm|PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import onnx
import psutil
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

from edgeshift.runtime import open_backend

CONCURRENCY = (1, 8, 32)
MAX_BATCH = 32


def build_mlp(path: Path, sizes: tuple[int, ...] = (784, 2048, 2048, 10)) -> Path:
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(n_out, np.float32), f"b{i}"),
        ]
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def model_and_sample(choice: str, workdir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The model to serve and one request's inputs (one row)."""
    if choice == "mlp":
        path = build_mlp(workdir / "mlp.onnx")
        return path, {"x": np.random.default_rng(1).random((1, 784), dtype=np.float32)}
    if choice == "minilm":
        from edgeshift import zoo

        entry = zoo.get("minilm-l6", workdir / "minilm")
        data = np.load(entry.data_path)
        backend = open_backend(entry.model_path, threads=1)
        return entry.model_path, {i.name: data[i.name][:1] for i in backend.inputs}
    path = Path(choice)
    backend = open_backend(path, threads=1)
    rng = np.random.default_rng(1)
    sample = {}
    for spec in backend.inputs:
        dims = [1 if not isinstance(d, int) else d for d in spec.shape or ()]
        sample[spec.name] = rng.random(dims).astype(spec.dtype)
    return path, sample


_DATATYPES = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "float16": "FP16"}


def encode_request(sample: dict[str, np.ndarray], binary: bool) -> tuple[bytes, dict[str, str]]:
    """A request body the way tritonclient builds it (binary) or plain OIP JSON."""
    inputs, blobs = [], []
    for name, arr in sample.items():
        tensor = {"name": name, "datatype": _DATATYPES[arr.dtype.name], "shape": list(arr.shape)}
        if binary:
            raw = arr.tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = arr.ravel().tolist()
        inputs.append(tensor)
    request = {"inputs": inputs, "parameters": {"binary_data_output": binary}}
    header = json.dumps(request).encode()
    headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
    if binary:
        headers["Inference-Header-Content-Length"] = str(len(header))
    return header + b"".join(blobs), headers


@dataclass
class Server:
    max_batch: int
    model: Path
    proc: subprocess.Popen[str] | None = None
    url: str = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgeshift",
                "serve",
                str(self.model),
                "--port",
                "0",
                "--max-batch",
                str(self.max_batch),
                "--no-access-log",
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            match = re.search(r"on http://(\S+)", line)
            if "RSS" in line:
                print(
                    f"  server (--max-batch {self.max_batch}): {line.split(' INFO ')[-1].strip()}"
                )
            if match:
                self.url = f"http://{match.group(1)}"
                return
        raise RuntimeError(f"server did not start (exit {self.proc.wait()})")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(60)

    def cpu_s(self) -> float:
        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def batch_rows(self) -> tuple[float, float]:
        """(sum, count) of the batch-size histogram: rows run and backend calls so far."""
        import urllib.request

        text = urllib.request.urlopen(f"{self.url}/metrics").read().decode()
        total = count = 0.0
        for line in text.splitlines():
            if line.startswith("edgeshift_batch_size_sum{"):
                total += float(line.rsplit(" ", 1)[1])
            elif line.startswith("edgeshift_batch_size_count{"):
                count += float(line.rsplit(" ", 1)[1])
        return total, count


@dataclass
class Cell:
    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    mean_batch: list[float] = field(default_factory=list)
    server_cpu_us: list[float] = field(default_factory=list)  # server CPU time per request


async def drive(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float
) -> tuple[float, float, float]:
    """Closed-loop load for SECONDS: (requests/s, p50 ms, p99 ms)."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = time.perf_counter() + seconds

        async def slot() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(slot() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return len(latencies) / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


async def drive_raw(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float
) -> tuple[float, float, float]:
    """As :func:`drive`, over raw keep-alive sockets: a client that costs the shared CPUs
    ~50 us per request instead of aiohttp's ~200 us, so the server gets the machine."""
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, port = host_port.rsplit(":", 1)
    head = f"POST /{path} HTTP/1.1\r\nHost: {host_port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    length_re = re.compile(rb"(?im)^content-length: *(\d+)")
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def slot() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(request)
                header = await reader.readuntil(b"\r\n\r\n")
                match = length_re.search(header)
                assert match is not None, header
                answer = await reader.readexactly(int(match.group(1)))
                if not header.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"{header.splitlines()[0]!r}: {answer[:200]!r}")
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return len(latencies) / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def ceiling(model: Path, sample: dict[str, np.ndarray], batch: int, seconds: float) -> float:
    """Rows/s of direct backend.run calls at BATCH rows: the in-process ceiling."""
    backend = open_backend(model)
    feeds = {name: np.repeat(arr, batch, axis=0) for name, arr in sample.items()}
    for _ in range(3):
        backend.run(feeds)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        backend.run(feeds)
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def check_answer(url: str, sample: dict[str, np.ndarray], model: Path) -> None:
    import tritonclient.http as th

    client = th.InferenceServerClient(url.removeprefix("http://"))
    inputs = []
    for name, arr in sample.items():
        inp = th.InferInput(name, list(arr.shape), _DATATYPES[arr.dtype.name])
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    result = client.infer(model.stem if model.is_file() else model.name, inputs)
    direct = open_backend(model, threads=1).run(sample)
    for name, want in direct.items():
        np.testing.assert_allclose(result.as_numpy(name), want, rtol=1e-4, atol=1e-5)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", help="mlp (default), minilm, or a .onnx path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell and round")
    parser.add_argument(
        "--client", choices=("raw", "aiohttp"), default="raw", help="load generator's HTTP client"
    )
    args = parser.parse_args()
    console = Console()

    with tempfile.TemporaryDirectory() as tmp:
        model, sample = model_and_sample(args.model, Path(tmp))
        name = model.stem if model.is_file() else model.name
        console.print(f"model {args.model} ({model.name}), {os.cpu_count()} CPUs; ceiling...")
        ceilings = {
            b: ceiling(model, sample, b, args.seconds) for b in sorted({*CONCURRENCY, MAX_BATCH})
        }
        servers = {True: Server(MAX_BATCH, model), False: Server(1, model)}
        for server in servers.values():
            server.start()
        try:
            for server in servers.values():
                check_answer(server.url, sample, model)
            bodies = {binary: encode_request(sample, binary) for binary in (True, False)}
            load = drive_raw if args.client == "raw" else drive
            cells: dict[tuple[bool, bool, int], Cell] = {}
            for round_index in range(args.rounds):
                console.print(f"round {round_index + 1}/{args.rounds}")
                for batching, binary, concurrency in itertools.product(
                    (True, False), (True, False), CONCURRENCY
                ):
                    server = servers[batching]
                    url = f"{server.url}/v2/models/{name}/infer"
                    body, headers = bodies[binary]
                    asyncio.run(load(url, body, headers, concurrency, 0.3))  # warm up
                    rows0, calls0 = server.batch_rows()
                    cpu0 = server.cpu_s()
                    rps, p50, p99 = asyncio.run(load(url, body, headers, concurrency, args.seconds))
                    cpu_s = server.cpu_s() - cpu0
                    rows1, calls1 = server.batch_rows()
                    cell = cells.setdefault((batching, binary, concurrency), Cell())
                    cell.rps.append(rps)
                    cell.p50_ms.append(p50)
                    cell.p99_ms.append(p99)
                    cell.mean_batch.append((rows1 - rows0) / max(calls1 - calls0, 1))
                    cell.server_cpu_us.append(cpu_s / max(rps * args.seconds, 1) * 1e6)
        finally:
            for server in servers.values():
                server.stop()

    med = statistics.median
    table = Table(
        title=f"edgeshift serve · {name} · medians of {args.rounds} rounds × {args.seconds:g} s"
    )
    for column in (
        "batching",
        "tensors",
        "conc",
        "req/s",
        "p50 ms",
        "p99 ms",
        "mean batch",
        "ceiling req/s",
        "served/ceiling",
    ):
        table.add_column(column, justify="right")
    for (batching, binary, concurrency), cell in cells.items():
        cap = ceilings[min(concurrency, MAX_BATCH) if batching else 1]
        table.add_row(
            "on" if batching else "off",
            "binary" if binary else "JSON",
            str(concurrency),
            f"{med(cell.rps):.0f}",
            f"{med(cell.p50_ms):.2f}",
            f"{med(cell.p99_ms):.2f}",
            f"{med(cell.mean_batch):.1f}",
            f"{med(cell.server_cpu_us):.0f}",
            f"{cap:.0f}",
            f"{med(cell.rps) / cap:.0%}",
        )
    console.print(table)
    on32 = med(cells[(True, True, 32)].rps)
    console.print(
        "in-process ceiling (direct backend.run) rows/s by batch: "
        + ", ".join(f"{b}: {v:.0f}" for b, v in ceilings.items())
    )
    console.print(
        f"conc 32, binary: served/ceiling(batch {MAX_BATCH}) = {on32 / ceilings[MAX_BATCH]:.0%} "
        f"(goal >= 85%); batching on/off = {on32 / med(cells[(False, True, 32)].rps):.2f}x (goal >= 2x); "
        f"binary/JSON (batching on) = {on32 / med(cells[(True, False, 32)].rps):.2f}x"
    )


if __name__ == "__main__":
    main()
