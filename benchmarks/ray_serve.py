"""edgeshift on Ray against edgeshift in one process and against plain Ray Serve, on the same
model and the same cores, from one run.

Configurations, each driven by the closed-loop raw-socket load generator of
``benchmarks/serve.py`` at ``--concurrency`` (default 32) with OIP JSON tensors (what a plain
Ray Serve user's endpoint would parse) and, for edgeshift, binary tensors and gRPC
(``ModelInfer`` of pre-serialized bytes on one HTTP/2 channel, serve.py's ``drive_grpc``) too:

- ``single``: ``edgeshift serve MODEL`` as one process;
- ``haproxy-1``, ``haproxy-2``, ``haproxy-1-tcp``: HaproxyIngress in front of 1 or 2
  ``edgeshift serve`` processes, no Ray (``-tcp``: the L4 ingress mode);
- ``kernel-1``, ``kernel-2``: KernelIngress (the kernel's NAT, iptables; root) in front of 1
  or 2 ``edgeshift serve`` processes, no Ray;
- ``ray-1``, ``ray-2``, ``ray-1-tcp``, ``ray-1-kernel``, ``ray-2-kernel``: ``ClusterServer``
  on a local Ray cluster (``ray.cluster_utils.Cluster``, a head and logical worker nodes on
  this machine): the ingress -> the replicas' own edgeshift servers (``-tcp``:
  ``ingress_mode="tcp"``; ``-kernel``: ``ingress_mode="kernel"``);
- ``plain-ray``: a Ray Serve deployment as a Ray user writes it: the default proxy,
  ``@serve.batch`` with its defaults, an onnxruntime session in the replica, JSON in and out.

Server CPU per request is the CPU time of every process under this one (edgeshift server;
Ray's GCS, raylets, workers, proxy and controller; HAProxy) over the run, divided by the
answered requests; the load generator and ClusterServer's own threads in this process are
not counted, except the kernel ingress's health checker (its thread's CPU time). Machine CPU
per request is every CPU of the box busy over the run (/proc/stat: every process, the load
generator included, and the kernel's own work such as NAT in softirqs) over the answers: it
shows any cost that moved out of the server processes. Memory is the RSS of the Ray processes
(and HAProxy) after deployment.

``--ab-rounds N``: then ``single`` and ``ray-1-kernel`` both up, measured in turn for N
rounds, each with its own processes' CPU: the per-round ratio, for a box whose speed drifts
between the cells of a long run.

Then, on ``ray`` (needs ``ClusterServer``): seconds from a load step to a new replica serving
(autoscaling from 1 to 2); and for ``ray-2`` and ``ray-2-kernel``: from a node kill to its
replica out of rotation and to capacity back, and the failed requests across a rolling model
update under load.

Run: ``python benchmarks/ray_serve.py [--model mlp|mlp-wide|PATH] [--seconds 5]
[--concurrency 32] [--skip ray-failures|grpc|http|tcp|kernel|plain-ray|ray] [--max-delay-ms MS]``
(``--skip http`` / ``tcp`` / ``kernel``: leave out that ingress mode's configurations).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import queue
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

_spec = importlib.util.spec_from_file_location("serve_bench", Path(__file__).with_name("serve.py"))
assert _spec is not None and _spec.loader is not None
serve_bench = importlib.util.module_from_spec(_spec)
sys.modules["serve_bench"] = serve_bench  # dataclasses look their module up there
_spec.loader.exec_module(serve_bench)
# serve.py's raw keep-alive load generator (it reads chunked answers, which Ray Serve's proxy
# sends, too): (requests/s, p50 ms, p99 ms)
drive = serve_bench.drive_raw

GOALS = {  # from issue #18
    "cpu_ratio": 1.2,  # server CPU per request, Ray / single process, at most
    "throughput_ratio": 5.0,  # edgeshift on Ray / plain Ray Serve, at least
    "out_of_rotation_s": 1.0,
    "capacity_back_s": 10.0,
    "new_replica_s": 10.0,
}
OBJECT_STORE_BYTES = 80 * 1024 * 1024
CPUS = len(os.sched_getaffinity(0))
POOL = "bench/a"


def plan_file(directory: Path, model_name: str, replicas: int) -> Path:
    """A plan.json placing the model's REPLICAS on the worker nodes' pool."""
    workload = {"workload": model_name, "placed": True, "pool": POOL, "tier": "server"}
    path = directory / f"plan-{replicas}.json"
    path.write_text(json.dumps({"workloads": [{**workload, "replicas": replicas}], "pools": []}))
    return path


@dataclass
class Result:
    name: str
    tensors: str
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float
    errors: int = 0
    machine_cpu_us: float = 0.0  # every CPU of the box (the load generator and kernel too)


class Server:
    """`edgeshift serve MODEL --port 0` (HTTP only, as the Ray configurations serve), its
    stderr read on a thread so it never blocks on a full pipe."""

    def __init__(
        self, model: Path, threads: int | None = None, max_delay_ms: float | None = None
    ) -> None:
        self.model = model
        self.extra = ["--threads", str(threads)] if threads else []
        if max_delay_ms is not None:
            self.extra += ["--max-delay-ms", str(max_delay_ms)]
        self.url = ""
        self.grpc_url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgeshift",
                "serve",
                str(self.model),
                "--port",
                "0",
                "--grpc-port",
                "0",  # idle unless a gRPC row drives it
                "--no-access-log",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            with suppress(queue.Empty):
                line = lines.get(timeout=0.5)
                if match := re.search(r"on http://(\S+)", line):
                    self.url = f"http://{match.group(1)}"
                if match := re.search(r"serving gRPC on (\S+)", line):
                    self.grpc_url = match.group(1)
                    return
        self.stop()
        raise RuntimeError(f"edgeshift serve did not start within {timeout_s} s")

    def _read(self, lines: queue.Queue[str]) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            lines.put(line)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_processes() -> list[psutil.Process]:
    """Every process under this one: the servers, Ray's, HAProxy."""
    return psutil.Process().children(recursive=True)


def role(proc: psutil.Process) -> str:
    """What a server-side process is, for the CPU breakdown."""
    with suppress(psutil.Error):
        cmdline = " ".join(proc.cmdline())
        if "haproxy" in proc.name():
            return "haproxy"
        if "ServeReplica" in cmdline or "edgeshift serve" in cmdline or " serve " in cmdline:
            return "replica"
        return "ray"
    return "gone"


def kind(proc: psutil.Process) -> str:
    """A finer breakdown than role(): which Ray process (by its title) or which server."""
    with suppress(psutil.Error):
        cmdline = " ".join(proc.cmdline())
        for needle, name in (
            ("haproxy", "haproxy"),
            ("gcs_server", "Ray GCS"),
            ("raylet", "raylet"),
            ("DashboardAgent", "dashboard agent"),
            ("RuntimeEnvAgent", "runtime-env agent"),
            ("dashboard", "dashboard head"),
            ("log_monitor", "log monitor"),
            ("monitor.py", "autoscaler monitor"),
            ("ServeController", "Serve controller"),
            ("ProxyActor", "Serve proxy"),
            ("Registry", "edgeshift registry"),
            ("ServeReplica", "replica"),
            ("ray::IDLE", "idle Ray worker"),
        ):
            if needle in cmdline:
                return name
        return role(proc)
    return "gone"


def cpu_by_kind(procs: list[psutil.Process]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for proc in procs:
        totals[kind(proc)] = totals.get(kind(proc), 0.0) + cpu_s([proc])
    return totals


def own_cpu_s() -> float:
    """This process: ClusterServer's threads and the Ray driver (and the load, if running)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


def idle_cpu(seconds: float) -> dict[str, float]:
    """CPU ms per second of each kind of process over SECONDS with no requests."""
    procs = server_processes()
    before, own = cpu_by_kind(procs), own_cpu_s()
    time.sleep(seconds)
    after = cpu_by_kind(procs)
    used = {k: (after[k] - before.get(k, 0.0)) / seconds * 1000 for k in after if k != "gone"}
    used["ClusterServer (this process)"] = (own_cpu_s() - own) / seconds * 1000
    return used


def cpu_by_role(procs: list[psutil.Process]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for proc in procs:
        totals[role(proc)] = totals.get(role(proc), 0.0) + cpu_s([proc])
    return totals


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass  # gone: its CPU is lost to the figure (rare: workers that exit mid-run)
    return total


def machine_busy_s() -> float:
    """CPU-seconds the whole machine has been busy (every process, softirqs: NAT included)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


# CPU seconds of server-side work done inside this process (the kernel ingress's health
# checker), by role: set while such an ingress runs, so its CPU is counted too.
IN_PROCESS_CPU: dict[str, Callable[[], float]] = {}


def checker_cpu(ingress: Any) -> Callable[[], float]:
    """The kernel ingress's health-checker thread's CPU seconds so far, read at call time."""
    return lambda: float(ingress.check_cpu_s)


def rss_mib(procs: list[psutil.Process]) -> float:
    total = 0
    for proc in procs:
        with suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / (1 << 20)


def measure(
    name: str,
    tensors: str,
    url: str,
    body: bytes,
    headers: dict[str, str],
    args: Any,
    procs: list[psutil.Process] | None = None,
) -> Result:
    return measure_with(
        name,
        tensors,
        lambda seconds: drive(url, body, headers, args.concurrency, seconds),
        args,
        procs,
    )


def measure_grpc(
    name: str,
    url: str,
    model: str,
    sample: Any,
    args: Any,
    procs: list[psutil.Process] | None = None,
) -> Result:
    """gRPC ModelInfer (pre-serialized, raw tensor contents) at the same concurrency."""

    def run(seconds: float) -> Any:
        return serve_bench.drive_grpc(url, model, sample, args.concurrency, seconds, "raw")

    return measure_with(name, "gRPC", run, args, procs)


def measure_with(
    name: str,
    tensors: str,
    run: Callable[[float], Any],
    args: Any,
    procs: list[psutil.Process] | None = None,
) -> Result:
    """PROCS: the server's processes (default: every process under this one)."""
    # Warm up: Ray's proxy and replica take a while to reach their steady rate.
    asyncio.run(run(2.0 if "ray" in name else 0.5))
    procs = server_processes() if procs is None else procs
    before = cpu_by_role(procs)
    before.update({k: f() for k, f in IN_PROCESS_CPU.items()})
    kinds_before = cpu_by_kind(procs)
    busy_before = machine_busy_s()
    rps, p50, p99 = asyncio.run(run(args.seconds))
    busy = machine_busy_s() - busy_before
    after = cpu_by_role(procs)
    after.update({k: f() for k, f in IN_PROCESS_CPU.items()})
    kinds_after = cpu_by_kind(procs)
    answered = max(rps * args.seconds, 1)
    used_us = {k: (after[k] - before.get(k, 0.0)) / answered * 1e6 for k in after}
    result = Result(
        name, tensors, rps, p50, p99, sum(used_us.values()), machine_cpu_us=busy / answered * 1e6
    )
    parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(used_us.items()) if k != "gone")
    print(
        f"  {name:12s} {tensors:6s} {rps:8.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
        f"server CPU {result.server_cpu_us:5.0f} µs/req ({parts}); machine "
        f"{result.machine_cpu_us:5.0f}"
    )
    if "ray" in name:
        by_kind = {
            k: (v - kinds_before.get(k, 0.0)) / answered * 1e6
            for k, v in kinds_after.items()
            if k != "gone"
        }
        print("    µs/req: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(by_kind.items())))
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- plain Ray Serve, as a Ray user writes it -------------------------------------------------


def plain_ray_serve_app(model_path: Path) -> Any:
    from ray import serve
    from starlette.requests import Request

    @serve.deployment
    class OnnxModel:
        def __init__(self, path: str) -> None:
            import onnxruntime as ort

            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name

        @serve.batch
        async def run(self, rows: list[np.ndarray]) -> list[np.ndarray]:
            batch = np.concatenate(rows)
            out = self.session.run(None, {self.input_name: batch})[0]
            return list(np.split(out, np.cumsum([len(r) for r in rows])[:-1]))

        async def __call__(self, request: Request) -> dict[str, Any]:
            tensor = (await request.json())["inputs"][0]
            x = np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])
            y = await self.run(x)
            return {
                "outputs": [
                    {
                        "name": "y",
                        "datatype": "FP32",
                        "shape": list(y.shape),
                        "data": y.ravel().tolist(),
                    }
                ]
            }

    return OnnxModel.bind(str(model_path))


# --- load with failures counted (for the failure timings) -------------------------------------


class CountingLoad:
    """Closed-loop clients on their own threads that count answers by status; never raise."""

    def __init__(self, url: str, path: str, body: bytes, headers: dict[str, str], clients: int):
        import http.client

        self._http = http.client
        self.url, self.path, self.body, self.headers = url, path, body, headers
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        host, port = self.url.rsplit(":", 1)
        conn = self._http.HTTPConnection(host, int(port), timeout=10)
        while not self._stop.is_set():
            try:
                conn.request("POST", self.path, body=self.body, headers=self.headers)
                response = conn.getresponse()
                response.read()
                self.statuses.append(response.status)
            except (OSError, self._http.HTTPException):
                self.statuses.append(-1)
                conn.close()

    def failed(self) -> int:
        return sum(1 for s in self.statuses if s != 200)

    @contextmanager
    def running(self) -> Iterator[CountingLoad]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(15)


def wait_for(condition: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until CONDITION held, or None after TIMEOUT_S."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if condition():
            return time.perf_counter() - started
        time.sleep(0.01)
    return None


def up_count(cluster_server: Any) -> int:
    return sum(1 for s in cluster_server.ingress.server_states().values() if s.startswith("UP"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="mlp", help="mlp (784-2048-2048-10), mlp-wide, or a path"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per measured cell")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["plain-ray", "ray", "ray-failures", "grpc", "tcp", "kernel", "http"],
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=20.0, help="idle CPU window per Ray config"
    )
    parser.add_argument(
        "--max-delay-ms",
        type=float,
        default=None,
        help="every edgeshift server's batching wait (serve --max-delay-ms; default: auto)",
    )
    parser.add_argument(
        "--ab-rounds",
        type=int,
        default=0,
        help="then single and ray-1-kernel in turn, both up at once, this many rounds",
    )
    parser.add_argument(
        "--ray-defaults",
        action="store_true",
        help="Ray's own settings, not edgeshift's quiet ones (edgeshift.cluster.quiet)",
    )
    args = parser.parse_args()
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    results: list[Result] = []
    timings: dict[str, float | None] = {}
    memory: dict[str, float] = {}
    rolling_failed: dict[str, int] = {}
    ab_lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        model, sample = serve_bench.model_and_sample(args.model, Path(tmp))
        name = model.stem
        bodies = {
            "JSON": serve_bench.encode_request(sample, False),
            "binary": serve_bench.encode_request(sample, True),
        }
        print(f"model {args.model} ({model.name}), {os.cpu_count()} CPUs, conc {args.concurrency}")

        single = Server(model, max_delay_ms=args.max_delay_ms)
        single.start()
        try:
            for tensors, (body, headers) in bodies.items():
                url = f"{single.url}/v2/models/{name}/infer"
                results.append(measure("single", tensors, url, body, headers, args))
            if "grpc" not in args.skip:
                results.append(measure_grpc("single", single.grpc_url, name, sample, args))
            memory["single server RSS"] = rss_mib(server_processes())
        finally:
            single.stop()
        results += run_haproxy_only(model, name, bodies, sample, args)

        import ray
        from ray.cluster_utils import Cluster

        from edgeshift.cluster import quiet

        # A dead node noticed in ~1.5 s, not Ray's default ~15 s (docs/scale-out.md).
        head: dict[str, Any] = {"_system_config": dict(quiet.NODE_HEALTH_SYSTEM_CONFIG)}
        if not args.ray_defaults:
            # What edgeshift sets on a cluster it starts (--address local).
            quiet.apply_quiet_env()
            head["_system_config"].update(quiet.QUIET_SYSTEM_CONFIG)
            head["include_log_monitor"] = False
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "include_dashboard": False,
                "object_store_memory": OBJECT_STORE_BYTES,
                **head,
            },
        )
        workers = [
            cluster.add_node(
                num_cpus=1,
                object_store_memory=OBJECT_STORE_BYTES,
                resources={f"edgeshift-pool:{POOL}": 1},  # one replica per node, as per machine
            )
            for _ in range(3)
        ]
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            memory["Ray idle (GCS, raylets, workers)"] = rss_mib(server_processes())
            if args.idle_seconds > 0:
                print_idle("Ray alone (head + 3 nodes)", idle_cpu(args.idle_seconds))
            if "plain-ray" not in args.skip:
                results += run_plain_ray(model, name, bodies["JSON"], args, memory)
            if "ray" not in args.skip:
                r, t, failed = run_edgeshift_on_ray(
                    model,
                    name,
                    bodies,
                    sample,
                    args,
                    memory,
                    cluster,
                    workers,
                    "ray-failures" not in args.skip,
                )
                results += r
                timings.update(t)
                rolling_failed = failed
            if args.ab_rounds > 0:
                ab_lines = run_ab(model, name, bodies, sample, args, cluster)
        finally:
            ray.shutdown()
            cluster.shutdown()

    report(results, timings, memory, rolling_failed)
    print("\n".join(ab_lines))
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def print_idle(what: str, used: dict[str, float]) -> None:
    total = sum(v for k, v in used.items() if not k.startswith("ClusterServer"))
    print(f"  idle, {what}: server processes {total:.0f} ms CPU per s")
    print("    " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(used.items(), key=lambda x: -x[1])))


def ingress_configs(args: Any) -> list[tuple[int, str]]:
    """(replicas, ingress mode) to run, as --skip leaves them."""
    configs = [(1, "http"), (2, "http"), (1, "tcp"), (1, "kernel"), (2, "kernel")]
    return [(n, mode) for n, mode in configs if mode not in args.skip]


def ingress_label(prefix: str, count: int, mode: str) -> str:
    return f"{prefix}-{count}" + ("" if mode == "http" else f"-{mode}")


def run_haproxy_only(
    model: Path,
    name: str,
    bodies: dict[str, tuple[bytes, dict[str, str]]],
    sample: Any,
    args: Any,
) -> list[Result]:
    """An ingress in front of 1 and 2 `edgeshift serve` processes, no Ray: what the ingress
    itself costs per request (HTTP, gRPC): HAProxy L7 and L4, and the kernel's NAT."""
    from edgeshift.cluster.ingress import HaproxyIngress, ReplicaEndpoint
    from edgeshift.cluster.ingress_kernel import KernelIngress

    results = []
    for count, mode in ingress_configs(args):
        servers = [Server(model, max(1, CPUS // count), args.max_delay_ms) for _ in range(count)]
        for server in servers:
            server.start()
        grpc = "grpc" not in args.skip and mode != "tcp"
        endpoints = []
        for i, s in enumerate(servers):
            host, port = s.url.removeprefix("http://").rsplit(":", 1)
            grpc_port = int(s.grpc_url.rsplit(":", 1)[1]) if grpc else None
            endpoints.append(ReplicaEndpoint(f"r{i}", "local", host, int(port), (name,), grpc_port))
        ingress: Any
        if mode == "kernel":
            kernel = KernelIngress(grpc_port=0 if grpc else None)
            IN_PROCESS_CPU["kernel ingress"] = checker_cpu(kernel)
            ingress = kernel
        else:
            ingress = HaproxyIngress(grpc_port=0 if grpc else None, mode=mode)
        label = f"kernel-{count}" if mode == "kernel" else ingress_label("haproxy", count, mode)
        try:
            ingress.start(endpoints)
            for tensors, (body, headers) in bodies.items():
                url = f"http://{ingress.url}/v2/models/{name}/infer"
                results.append(measure(label, tensors, url, body, headers, args))
            if grpc and ingress.grpc_url is not None:
                results.append(measure_grpc(label, ingress.grpc_url, name, sample, args))
        finally:
            IN_PROCESS_CPU.clear()
            ingress.stop()
            for server in servers:
                server.stop()
    return results


def run_plain_ray(
    model: Path,
    name: str,
    json_body: tuple[bytes, dict[str, str]],
    args: Any,
    memory: dict[str, float],
) -> list[Result]:
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(plain_ray_serve_app(model), name="plain", route_prefix=f"/v2/models/{name}/infer")
    try:
        memory["plain Ray Serve (all Ray processes)"] = rss_mib(server_processes())
        body, headers = json_body
        return [
            measure(
                "plain-ray",
                "JSON",
                f"http://127.0.0.1:{port}/v2/models/{name}/infer",
                body,
                headers,
                args,
            )
        ]
    finally:
        serve.shutdown()


def run_edgeshift_on_ray(
    model: Path,
    name: str,
    bodies: dict[str, tuple[bytes, dict[str, str]]],
    sample: Any,
    args: Any,
    memory: dict[str, float],
    cluster: Any,
    workers: list[Any],
    failures: bool,
) -> tuple[list[Result], dict[str, float | None], dict[str, int]]:
    from edgeshift.cluster.controller import ClusterServer
    from edgeshift.serve import ServeOptions

    results: list[Result] = []
    timings: dict[str, float | None] = {}
    rolling_failed: dict[str, int] = {}
    for replicas, mode in ingress_configs(args):
        grpc = "grpc" not in args.skip and mode != "tcp"
        label = ingress_label("ray", replicas, mode)
        server = ClusterServer(
            [model],
            address=cluster.address,
            plan=plan_file(model.parent, name, replicas),
            # The replicas share the box's cores: ORT threads split, as for haproxy-N.
            options=ServeOptions(threads=max(1, CPUS // replicas), max_delay_ms=args.max_delay_ms),
            host="127.0.0.1",
            port=0,
            name=f"bench-{replicas}-{mode}",
            grpc_port=0 if grpc else None,
            ingress_mode=mode,
        )
        server.start()
        if mode == "kernel":
            IN_PROCESS_CPU["kernel ingress"] = checker_cpu(server.ingress)
        try:
            wanted = replicas
            up = wait_for(lambda s=server, n=wanted: up_count(s) == n, 60)  # type: ignore[misc]
            assert up is not None, "replicas never up"
            memory[f"edgeshift on Ray, {label} (all Ray processes + any HAProxy)"] = rss_mib(
                server_processes()
            )
            if args.idle_seconds > 0 and mode == "http":
                time.sleep(2.0)  # past the deploy's own work
                print_idle(label, idle_cpu(args.idle_seconds))
            url = f"http://{server.url}/v2/models/{name}/infer"
            for tensors, (body, headers) in bodies.items():
                results.append(measure(label, tensors, url, body, headers, args))
            if grpc and server.grpc_url is not None:
                results.append(measure_grpc(label, server.grpc_url, name, sample, args))
            if failures and replicas == 2:
                kill = node_kill(server, cluster, workers, name, bodies["binary"])
                timings.update({f"{k} ({label})": v for k, v in kill.items()})
                rolling_failed[label] = rolling_update(server, model, name, bodies["binary"])
                # The killed node is gone: a fresh one keeps a spare for the next config.
                workers.append(
                    cluster.add_node(
                        num_cpus=1,
                        object_store_memory=OBJECT_STORE_BYTES,
                        resources={f"edgeshift-pool:{POOL}": 1},
                    )
                )
        finally:
            IN_PROCESS_CPU.clear()
            server.stop()
    if failures:
        timings["load step -> new replica serving, s"] = load_step(
            model, name, bodies["binary"], cluster
        )
    return results, timings, rolling_failed


def run_ab(
    model: Path,
    name: str,
    bodies: dict[str, tuple[bytes, dict[str, str]]],
    sample: Any,
    args: Any,
    cluster: Any,
) -> list[str]:
    """`single` and `ray-1-kernel` measured in turn, round after round, both up at once: on a
    VM whose speed drifts over minutes, the per-round ratio is what compares them. Server CPU
    is each one's own processes (the single server's; Ray's, the replica and the kernel
    ingress's health thread)."""
    from edgeshift.cluster.controller import ClusterServer
    from edgeshift.serve import ServeOptions

    single = Server(model, max_delay_ms=args.max_delay_ms)
    single.start()
    assert single.proc is not None
    single_procs = [psutil.Process(single.proc.pid)]
    server = ClusterServer(
        [model],
        address=cluster.address,
        plan=plan_file(model.parent, name, 1),
        options=ServeOptions(threads=CPUS, max_delay_ms=args.max_delay_ms),
        host="127.0.0.1",
        port=0,
        name="bench-ab",
        grpc_port=0,
        ingress_mode="kernel",
    )
    server.start()
    checker = {"kernel ingress": checker_cpu(server.ingress)}  # counted for ray-1-kernel only
    lines = []
    try:
        assert wait_for(lambda: up_count(server) == 1, 60) is not None, "replica never up"
        time.sleep(2.0)
        ray_procs = [p for p in server_processes() if p.pid != single.proc.pid]
        ratios: dict[str, list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.ab_rounds):
            for tensors in ("JSON", "binary", "gRPC"):
                pair = []
                for label, url, grpc_url, procs, in_process in (
                    ("single", single.url, single.grpc_url, single_procs, {}),
                    ("ray-1-kernel", f"http://{server.url}", server.grpc_url, ray_procs, checker),
                ):
                    IN_PROCESS_CPU.clear()
                    IN_PROCESS_CPU.update(in_process)
                    if tensors == "gRPC":
                        r = measure_grpc(label, str(grpc_url), name, sample, args, procs)
                    else:
                        body, headers = bodies[tensors]
                        path = f"{url}/v2/models/{name}/infer"
                        r = measure(label, tensors, path, body, headers, args, procs)
                    cpu.setdefault((label, tensors), []).append(r.server_cpu_us)
                    pair.append(r.server_cpu_us)
                ratios.setdefault(tensors, []).append(pair[1] / pair[0])
            print(
                f"  A/B round {round_ + 1}: "
                + ", ".join(f"{t} {v[-1]:.2f}x" for t, v in ratios.items())
            )
        for tensors, values in ratios.items():
            base = statistics.median(cpu[("single", tensors)])
            kernel = statistics.median(cpu[("ray-1-kernel", tensors)])
            lines.append(
                f"- A/B ({args.ab_rounds} rounds) {tensors}: ray-1-kernel / single server CPU "
                f"per request, median of per-round ratios {statistics.median(values):.2f}x "
                f"(range {min(values):.2f}-{max(values):.2f}x; medians {kernel:.0f} / "
                f"{base:.0f} µs; goal <= {GOALS['cpu_ratio']}x)"
            )
    finally:
        IN_PROCESS_CPU.clear()
        server.stop()
        single.stop()
    return lines


def node_kill(
    server: Any, cluster: Any, workers: list[Any], name: str, body: tuple[bytes, dict[str, str]]
) -> dict[str, float | None]:
    endpoints = server.endpoints()
    by_node = {w.node_id: w for w in workers}
    victim = next((e for e in endpoints if e.node_id in by_node), None)
    if victim is None:
        print("  node kill: no replica on a worker node (all on the head); skipped")
        return {}
    load = CountingLoad(server.url, f"/v2/models/{name}/infer", *body, clients=8)
    with load.running():
        time.sleep(1.0)
        killed_at = time.perf_counter()
        cluster.remove_node(by_node[victim.node_id], allow_graceful=False)
        # Out: DOWN or MAINT or deleted ("UP 1/2" is one failed check, still in rotation).
        out = wait_for(
            lambda: not server.ingress.server_states().get(victim.replica_id, "-").startswith("UP"),
            10,
        )

        def others_up() -> int:
            states = server.ingress.server_states()
            return sum(s == "UP" for r, s in states.items() if r != victim.replica_id)

        back = wait_for(lambda: others_up() >= len(endpoints), 60)
        capacity_s = None if back is None else time.perf_counter() - killed_at
        time.sleep(1.0)
    print(f"  node kill: {load.failed()} of {len(load.statuses)} requests failed under load")
    return {"node kill -> out of rotation, s": out, "node kill -> capacity back, s": capacity_s}


def rolling_update(server: Any, model: Path, name: str, body: tuple[bytes, dict[str, str]]) -> int:
    load = CountingLoad(server.url, f"/v2/models/{name}/infer", *body, clients=8)
    with load.running():
        time.sleep(0.5)
        started = time.perf_counter()
        server.update_model([model])
        took_s = time.perf_counter() - started
        time.sleep(0.5)
    print(f"  rolling update: {took_s:.1f} s, {load.failed()} of {len(load.statuses)} failed")
    return load.failed()


def load_step(
    model: Path, name: str, body: tuple[bytes, dict[str, str]], cluster: Any
) -> float | None:
    from edgeshift.cluster.controller import ClusterServer
    from edgeshift.serve import ServeOptions

    server = ClusterServer(
        [model],
        address=cluster.address,
        plan=plan_file(model.parent, name, 1),
        options=ServeOptions(),
        host="127.0.0.1",
        port=0,
        min_replicas=1,
        max_replicas=2,
        name="bench-step",
    )
    server.start()
    try:
        wait_for(lambda: up_count(server) >= 1, 60)
        load = CountingLoad(server.url, f"/v2/models/{name}/infer", *body, clients=64)
        with load.running():
            took = wait_for(lambda: up_count(server) >= 2, 60)
        return took
    finally:
        server.stop()


def report(
    results: list[Result],
    timings: dict[str, float | None],
    memory: dict[str, float],
    rolling_failed: dict[str, int],
) -> None:
    print()
    print(
        "| config | tensors | req/s | p50 ms | p99 ms | server CPU µs/req | CPU vs single "
        "| machine CPU µs/req | machine vs single |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    single = {r.tensors: r for r in results if r.name == "single"}
    for r in results:
        base = single.get(r.tensors)
        ratio = f"{r.server_cpu_us / base.server_cpu_us:.2f}x" if base else "-"
        machine = f"{r.machine_cpu_us / base.machine_cpu_us:.2f}x" if base else "-"
        print(
            f"| {r.name} | {r.tensors} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.server_cpu_us:.0f} | {ratio} | {r.machine_cpu_us:.0f} | {machine} |"
        )
    print()
    for what, mib in memory.items():
        print(f"- RSS, {what}: {mib:.0f} MiB")
    plain = next((r for r in results if r.name == "plain-ray"), None)
    for r in results:
        if r.name.startswith("ray-"):
            base = single[r.tensors]
            cpu_ok = r.server_cpu_us / base.server_cpu_us <= GOALS["cpu_ratio"]
            line = f"- {r.name} {r.tensors}: CPU/request {r.server_cpu_us / base.server_cpu_us:.2f}x single"
            line += f" (goal <= {GOALS['cpu_ratio']}x: {'met' if cpu_ok else 'NOT met'})"
            if plain is not None:
                speedup = r.rps / plain.rps
                line += f"; throughput {speedup:.1f}x plain Ray Serve (goal >= {GOALS['throughput_ratio']}x: "
                line += f"{'met' if speedup >= GOALS['throughput_ratio'] else 'NOT met'})"
            print(line)
    goals = {
        "node kill -> out of rotation, s": GOALS["out_of_rotation_s"],
        "node kill -> capacity back, s": GOALS["capacity_back_s"],
        "load step -> new replica serving, s": GOALS["new_replica_s"],
    }
    for what, seconds in timings.items():
        goal = next((g for key, g in goals.items() if what.startswith(key)), None)
        shown = "never (timed out)" if seconds is None else f"{seconds:.2f}"
        verdict = (
            ""
            if goal is None
            else f" (goal <= {goal}: {'met' if seconds is not None and seconds <= goal else 'NOT met'})"
        )
        print(f"- {what}: {shown}{verdict}")
    for label, failed in rolling_failed.items():
        print(f"- failed requests across a rolling update ({label}): {failed} (goal 0)")
    print(
        f"- medians: {statistics.median(r.rps for r in results):.0f} req/s over all cells"
        if results
        else ""
    )
    print(
        json.dumps(
            {"results": [r.__dict__ for r in results], "timings": timings, "memory_mib": memory}
        )
    )


if __name__ == "__main__":
    sys.exit(main())
