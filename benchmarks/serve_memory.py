"""`edgeshift serve` memory and isolation: what the largest allowed request costs in RSS and
whether it comes back, and how long a small request waits while someone else sends a large or
slow one.

The server runs in a child process (ServerThread in ``python -c``, so no CLI flag is needed
for the budget) on the zoo's digits CNN by default; its RSS is read with psutil. The largest
allowed request comes from the server's RequestLimits (rows, body and decoded-tensor bytes),
not from literals here.

Memory table: idle RSS after a warm-up of small requests; peak RSS sampled every 2 ms while
each large request (binary, then JSON, each twice) is in flight; RSS 0.5 s after its answer.
"peak/(3*body+model)" is the growth over idle divided by the goal's allowance (three times the
body plus the model file); "after/idle" the RSS after over the idle RSS.

Interference table: a client sends 1-row binary requests back to back for ``--seconds`` while
one disturber runs (none; the largest binary request in a loop; the largest JSON request in a
loop; an upload at 1 KB/s; a client that sends a large request and reads its answer at
1 KB/s); p50/p99/max of the small requests' latency, each the median over ``--rounds``
rounds (disturbers interleaved within each round).

Run: ``python benchmarks/serve_memory.py [--model PATH] [--backend onnxruntime|openvino]
[--budget-mb N] [--rounds 3] [--seconds 3] [--skip-interference]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edgeshift.serve.limits import RequestLimits

MIB = 1 << 20
HEADER_ROOM_BYTES = 4096  # the JSON header of a binary request, and slack for rounding
SAMPLE_S = 0.002
MODEL_NAME = "m"
SETTLE_S = 0.5  # after an answer: the server drops the request's buffers on its next turns

_CHILD = """
import json, sys
from edgeshift.serve import ServeOptions, ServerSettings, ServerThread
budget, backend = json.loads(sys.argv[2]), json.loads(sys.argv[3])
options = ServeOptions(memory_budget_bytes=budget, backend=backend)
settings = ServerSettings([sys.argv[1]], port=0, access_log=False, options=options)
with ServerThread(settings) as server:
    print(server.url, flush=True)
    sys.stdin.read()
"""


def default_model(workdir: Path) -> Path:
    from edgeshift import zoo

    return zoo.get("digits-cnn", workdir / "digits-cnn").model_path


class ServerProcess:
    """A server for MODEL in a child process; ``url`` and ``rss_bytes()`` while it runs."""

    def __init__(
        self, model: Path, memory_budget_bytes: int | None = None, backend: str | None = None
    ) -> None:
        self.model = model
        self._dir = tempfile.TemporaryDirectory()
        served = Path(self._dir.name) / f"{MODEL_NAME}.onnx"  # served under its file's stem
        shutil.copyfile(model, served)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(served),
                json.dumps(memory_budget_bytes),
                json.dumps(backend),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip().removeprefix("http://")
        if ":" not in line:
            self.stop()
            raise RuntimeError(f"the server did not start (exit {self.proc.returncode})")
        self.url = line  # host:port, as ServerThread.url gives it
        self.host, port = line.rsplit(":", 1)
        self.port = int(port)
        self._ps = psutil.Process(self.proc.pid)

    def rss_bytes(self) -> int:
        return int(self._ps.memory_info().rss)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the child leaves its with-block: drains and stops
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._dir.cleanup()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PeakSampler:
    """The largest value of READ() sampled every SAMPLE_S while the block runs."""

    def __init__(self, read: Callable[[], int]) -> None:
        self.read = read
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(SAMPLE_S)

    def __enter__(self) -> PeakSampler:
        self.peak = self.read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


# --- requests -------------------------------------------------------------------------------


def model_input(model: Path) -> tuple[str, tuple[int, ...], np.dtype[Any]]:
    """(name, per-row shape, dtype) of MODEL's single input with a dynamic first axis."""
    from edgeshift.runtime import open_backend

    backend = open_backend(model, threads=1)
    if len(backend.inputs) != 1:
        raise SystemExit(f"{model.name}: give a model with one input, not {len(backend.inputs)}")
    spec = backend.inputs[0]
    dims = spec.shape or ()
    if not dims or isinstance(dims[0], int) or not all(isinstance(d, int) for d in dims[1:]):
        raise SystemExit(f"{model.name}: its input must be [batch, fixed dims...], not {dims}")
    return spec.name, tuple(int(d) for d in dims[1:] if d is not None), np.dtype(spec.dtype)


_DATATYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}


def encode(name: str, arr: np.ndarray, binary: bool, binary_output: bool | None = None) -> bytes:
    """A whole HTTP request (head and body) for the v2 infer route of model ``m``."""
    tensor: dict[str, Any] = {"name": name, "datatype": _DATATYPES[arr.dtype.name]}
    tensor["shape"] = list(arr.shape)
    if binary:
        tensor["parameters"] = {"binary_data_size": arr.nbytes}
    else:
        tensor["data"] = arr.ravel().tolist()
    wants_binary = binary if binary_output is None else binary_output
    head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": wants_binary}})
    body = head.encode() + (arr.tobytes() if binary else b"")
    headers = [f"Content-Length: {len(body)}"]
    if binary:
        headers += ["Content-Type: application/octet-stream"]
        headers += [f"Inference-Header-Content-Length: {len(head.encode())}"]
    else:
        headers += ["Content-Type: application/json"]
    start = f"POST /v2/models/{MODEL_NAME}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    return (start + "\r\n".join(headers) + "\r\n\r\n").encode() + body


def largest_rows(row_bytes: int, limits: RequestLimits) -> int:
    """The most rows of ROW_BYTES each that one request may carry under LIMITS."""
    return max(
        1,
        min(
            limits.max_rows,
            (limits.max_body_bytes - HEADER_ROOM_BYTES) // row_bytes,
            limits.max_tensor_bytes // row_bytes,
        ),
    )


def largest_requests(model: Path, limits: RequestLimits) -> dict[str, tuple[bytes, int]]:
    """{"binary"|"json": (whole request, body bytes)} of the largest request LIMITS allow."""
    name, row_shape, dtype = model_input(model)
    rng = np.random.default_rng(0)
    row_raw = int(np.prod(row_shape)) * dtype.itemsize
    binary = rng.random((largest_rows(row_raw, limits), *row_shape)).astype(dtype)
    # Random floats print at full length (~19 characters): the most JSON text per value.
    sample = rng.random((64, *row_shape)).astype(dtype)
    row_json = len(json.dumps(sample.ravel().tolist())) // len(sample) + 1
    as_json = rng.random((largest_rows(row_json, limits), *row_shape)).astype(dtype)
    out: dict[str, tuple[bytes, int]] = {}
    for kind, arr in (("binary", binary), ("json", as_json)):
        request = encode(name, arr, binary=kind == "binary")
        out[kind] = (request, len(request) - request.index(b"\r\n\r\n") - 4)
    return out


def small_request(model: Path) -> bytes:
    name, row_shape, dtype = model_input(model)
    return encode(name, np.zeros((1, *row_shape), dtype), binary=True)


def exchange(sock: socket.socket, request: bytes) -> int:
    """Send REQUEST on SOCK and read its whole answer; its HTTP status."""
    sock.sendall(request)
    reader = sock.makefile("rb")
    try:
        status = int(reader.readline().split()[1])
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        reader.read(length)
    finally:
        reader.close()
    return status


def connect(server: ServerProcess, rcvbuf_bytes: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf_bytes:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.connect((server.host, server.port))
    sock.settimeout(120)
    return sock


# --- memory table ---------------------------------------------------------------------------


def memory_table(
    model: Path | None = None,
    memory_budget_bytes: int | None = None,
    limits: RequestLimits | None = None,
    repeats: int = 2,
    backend: str | None = None,
) -> list[dict[str, Any]]:
    """One row per large request (binary and JSON, REPEATS times each) against one server."""
    limits = limits or RequestLimits()
    with tempfile.TemporaryDirectory() as tmp:
        model = model or default_model(Path(tmp))
        requests = largest_requests(model, limits)
        model_bytes = model.stat().st_size
        with ServerProcess(model, memory_budget_bytes, backend) as server:
            small = small_request(model)
            with connect(server) as sock:
                for _ in range(200):  # the hot path's buffers exist before idle is read
                    exchange(sock, small)
            time.sleep(SETTLE_S)
            idle = server.rss_bytes()
            rows: list[dict[str, Any]] = []
            for kind in ("binary", "json"):
                request, body_bytes = requests[kind]
                for i in range(repeats):
                    with connect(server) as sock, PeakSampler(server.rss_bytes) as peak:
                        status = exchange(sock, request)
                    time.sleep(SETTLE_S)
                    after = server.rss_bytes()
                    rows.append(
                        {
                            "request": f"{kind} #{i + 1}",
                            "status": status,
                            "body_mb": body_bytes / MIB,
                            "model_mb": model_bytes / MIB,
                            "idle_rss_mb": idle / MIB,
                            "peak_rss_mb": peak.peak / MIB,
                            "peak_over_allowance": (peak.peak - idle)
                            / (3 * body_bytes + model_bytes),
                            "after_rss_mb": after / MIB,
                            "after_over_idle": after / idle,
                        }
                    )
    return rows


# --- interference table ---------------------------------------------------------------------


@dataclass
class Disturber:
    name: str
    run: Callable[[ServerProcess, threading.Event], None]  # until the event is set


def _loop_request(request: bytes) -> Callable[[ServerProcess, threading.Event], None]:
    def run(server: ServerProcess, stop: threading.Event) -> None:
        with connect(server) as sock:
            while not stop.is_set():
                exchange(sock, request)

    return run


def _slow_upload(server: ServerProcess, stop: threading.Event) -> None:
    """Declares a 1 MiB body and sends it at 1 KB/s, reconnecting when the server gives up."""
    while not stop.is_set():
        with connect(server) as sock:
            head = (
                f"POST /v2/models/{MODEL_NAME}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
            )
            try:
                sock.sendall(head.encode())
                while not stop.wait(1.0):
                    sock.sendall(b" " * 1024)
            except OSError:
                continue  # timed out by the server: what it should do


def _slow_reader(request: bytes) -> Callable[[ServerProcess, threading.Event], None]:
    def run(server: ServerProcess, stop: threading.Event) -> None:
        while not stop.is_set():
            with connect(server, rcvbuf_bytes=4096) as sock:
                try:
                    sock.sendall(request)
                    while not stop.wait(1.0):
                        if not sock.recv(1024):
                            break
                except OSError:
                    continue

    return run


def _small_latencies_ms(server: ServerProcess, request: bytes, seconds: float) -> list[float]:
    out: list[float] = []
    with connect(server) as sock:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            status = exchange(sock, request)
            out.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                raise RuntimeError(f"a small request got {status}")
    return out


def interference_table(
    model: Path | None = None,
    memory_budget_bytes: int | None = None,
    limits: RequestLimits | None = None,
    seconds: float = 3.0,
    rounds: int = 3,
    backend: str | None = None,
    only: str | None = None,
) -> list[dict[str, Any]]:
    """Small-request latency while each disturber runs (those whose name contains ONLY, if
    given); medians over ROUNDS, the best round's max, and an undisturbed run's figures taken
    just before each disturbed one."""
    limits = limits or RequestLimits()
    with tempfile.TemporaryDirectory() as tmp:
        model = model or default_model(Path(tmp))
        requests = largest_requests(model, limits)
        name, row_shape, dtype = model_input(model)
        rows = largest_rows(int(np.prod(row_shape)) * dtype.itemsize, limits)
        big_json_answer = encode(name, np.zeros((rows, *row_shape), dtype), True, False)
        disturbers = [
            Disturber("none", lambda server, stop: None),
            Disturber("largest binary request", _loop_request(requests["binary"][0])),
            Disturber("largest JSON request", _loop_request(requests["json"][0])),
            Disturber("slow upload (1 KB/s)", _slow_upload),
            Disturber("slow reader (1 KB/s)", _slow_reader(big_json_answer)),
        ]
        if only:
            disturbers = [d for d in disturbers if d.name == "none" or only in d.name]
        small = small_request(model)
        figures: dict[str, list[tuple[float, float, float, int]]] = {d.name: [] for d in disturbers}
        baselines: dict[str, list[tuple[float, float, float, int]]] = {
            d.name: [] for d in disturbers
        }
        with ServerProcess(model, memory_budget_bytes, backend) as server:
            _small_latencies_ms(server, small, 0.5)  # warm-up
            for _ in range(rounds):
                for d in disturbers[1:]:
                    # The box is shared: an undisturbed run right before each disturbed one
                    # shows what the noise alone does to the same figures.
                    baselines[d.name].append(_measure(server, small, disturbers[0], seconds))
                    figures[d.name].append(_measure(server, small, d, seconds))
    figures["none"] = [f for d in disturbers[1:] for f in baselines[d.name]]
    baselines["none"] = figures["none"]

    def med(rows: list[tuple[float, float, float, int]], i: int) -> float:
        return statistics.median(f[i] for f in rows)

    return [
        {
            "disturber": d.name,
            "requests": int(med(figures[d.name], 3)),
            "p50_ms": med(figures[d.name], 0),
            "p99_ms": med(figures[d.name], 1),
            "max_ms": med(figures[d.name], 2),
            "best_max_ms": min(f[2] for f in figures[d.name]),
            "undisturbed_p50/p99/max_ms": "/".join(
                f"{med(baselines[d.name], i):.2f}" for i in range(3)
            ),
        }
        for d in disturbers
    ]


def _measure(
    server: ServerProcess, small: bytes, d: Disturber, seconds: float
) -> tuple[float, float, float, int]:
    """(p50, p99, max, count) of back-to-back small requests while D runs."""
    stop = threading.Event()
    thread = threading.Thread(target=_quiet(d.run), args=(server, stop))
    thread.start()
    time.sleep(0.2)  # the disturber is under way
    lat = sorted(_small_latencies_ms(server, small, seconds))
    stop.set()
    thread.join(30)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return statistics.median(lat), p99, lat[-1], len(lat)


def _quiet(
    run: Callable[[ServerProcess, threading.Event], None],
) -> Callable[[ServerProcess, threading.Event], None]:
    def wrapped(server: ServerProcess, stop: threading.Event) -> None:
        try:
            run(server, stop)
        except (OSError, http.client.HTTPException) as exc:
            if not stop.is_set():
                print(f"  disturber stopped early: {exc}", file=sys.stderr)

    return wrapped


# --- printing -------------------------------------------------------------------------------


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    cells = [[k for k in keys]] + [
        [f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the zoo's digits CNN")
    parser.add_argument("--budget-mb", type=float, default=None, help="default: the server's")
    parser.add_argument("--backend", default=None, help="onnxruntime or openvino")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--skip-interference", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--only", default=None, help="disturbers whose name contains this")
    args = parser.parse_args()
    budget = int(args.budget_mb * MIB) if args.budget_mb else None
    if not args.skip_memory:
        print("memory (largest allowed requests, one server):")
        print(format_table(memory_table(args.model, budget, backend=args.backend)))
    if not args.skip_interference:
        print("\nsmall-request latency while another client disturbs (medians over rounds):")
        table = interference_table(
            args.model, budget, None, args.seconds, args.rounds, args.backend, args.only
        )
        print(format_table(table))


if __name__ == "__main__":
    main()
