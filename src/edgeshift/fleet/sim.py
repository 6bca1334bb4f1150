"""Simulated devices for the fleet benchmark and tests: the REAL agent core (``Agent``, its
journal, A/B slots, ``DeviceTransport`` signing, ``TufInstaller`` verification, downloads) with
a light simulated ModelHost, many of them in one event loop.

Only the model is simulated: ``SimHost`` answers local requests from a behaviour read out of the
artifact's ``manifest.json`` (key ``"sim"``: ``outputs`` "good"/"wrong", ``latency_ms``,
``fail``), so a bad release is caught by the agent's real shadow and trial checks and the
control plane's real gates. Local traffic is driven by ``SimFleet.traffic``: every request is
counted as sent, and as answered when a model served it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import random
import resource
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgeshift.errors import EdgeshiftError, FleetError
from edgeshift.fleet.agent.agent import Agent, AgentOptions
from edgeshift.fleet.agent.host import ServingWindows
from edgeshift.fleet.agent.process import tls_verify
from edgeshift.fleet.agent.shadow import Outputs, ShadowComparator
from edgeshift.fleet.agent.transport import LIMITS, DeviceTransport, SignedFetcher
from edgeshift.fleet.agent.trust import TufInstaller
from edgeshift.fleet.auth import new_private_key, public_key_b64
from edgeshift.fleet.schema import EnrolRequest, Phase

SIM_KEY = "sim"  # manifest.json key that tells SimHost how the model behaves
_FEEDS: Outputs = {"x": np.ones((1, 4), np.float32)}
_GOOD: Outputs = {"scores": np.array([[3.0, 1.0, 0.5]], np.float32)}
_WRONG: Outputs = {"scores": np.array([[0.5, 1.0, 3.0]], np.float32)}


@dataclass(frozen=True)
class SimModel:
    name: str
    outputs: str = "good"  # "wrong": a different top-1 than last-good (shadow disagrees)
    latency_ms: float = 1.0
    fail: bool = False  # every request errors

    @classmethod
    def from_dir(cls, slot_dir: Path, name: str) -> SimModel:
        try:
            manifest = json.loads((slot_dir / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise FleetError(f"{slot_dir}: no readable manifest.json ({exc})", 400) from None
        sim = manifest.get(SIM_KEY) or {}
        if sim.get("load_error"):
            raise FleetError(f"{name}: the model does not load (simulated)", 400)
        return cls(
            name,
            str(sim.get("outputs", "good")),
            float(sim.get("latency_ms", 1.0)),
            bool(sim.get("fail", False)),
        )

    def answer(self) -> Outputs | None:
        if self.fail:
            return None
        return _WRONG if self.outputs == "wrong" else _GOOD


class SimHost(ServingWindows):
    """A ModelHost whose model is a SimModel; activation is atomic (no request is dropped)."""

    def __init__(self) -> None:
        self.active: SimModel | None = None
        self.sent = 0
        self.answered = 0
        super().__init__()
        self._shadow: ShadowComparator | None = None
        self._shadow_model: SimModel | None = None

    async def activate(self, slot_dir: Path, name: str) -> None:
        self.active = await asyncio.to_thread(SimModel.from_dir, slot_dir, name)

    async def start_shadow(self, slot_dir: Path) -> ShadowComparator:
        await self.stop_shadow()
        candidate = await asyncio.to_thread(SimModel.from_dir, slot_dir, "candidate")
        loop = asyncio.get_running_loop()

        def run(feeds: Outputs) -> asyncio.Future[Outputs]:
            future: asyncio.Future[Outputs] = loop.create_future()
            out = candidate.answer()
            if out is None:
                future.set_exception(EdgeshiftError("candidate failed (simulated)"))
            else:
                future.set_result(out)
            return future

        self._shadow_model = candidate
        self._shadow = ShadowComparator(run)
        return self._shadow

    async def stop_shadow(self) -> None:
        shadow, self._shadow = self._shadow, None
        if shadow is not None:
            await shadow.close()

    def request(self, rng: random.Random) -> bool:
        """One local request: answered when a model serves it (what a client would see)."""
        self.sent += 1
        model = self.active
        if model is None:
            return False
        outputs = model.answer()
        latency_s = model.latency_ms * rng.uniform(0.8, 1.2) / 1000.0
        ok = outputs is not None
        self._record(ok, latency_s)
        if self._shadow is not None and outputs is not None:
            self._shadow.observe(_FEEDS, outputs, latency_s)
        self.answered += ok
        return ok

    async def close(self) -> None:
        await self.stop_shadow()


_SHARED: dict[str, httpx.Client] = {}
_SHARED_LOCK = threading.Lock()


class SharedClientFetcher(SignedFetcher):
    """SignedFetcher's requests, signed the same way, over one kept-alive client for the whole
    process (httpx.Client is thread-safe). A client per device would build 1,000 SSL contexts
    (the CA bundle, ~20 ms of CPU each); one real device builds one."""

    def _http(self) -> httpx.Client:
        with _SHARED_LOCK:
            client = _SHARED.get(self.server_url)
            if client is None:
                client = _SHARED[self.server_url] = httpx.Client(
                    timeout=self.timeout_s, limits=LIMITS
                )
            return client

    def close(self) -> None:
        pass  # shared: lives as long as the process


@dataclass
class SimDevice:
    name: str
    data_dir: Path
    host: SimHost
    transport: DeviceTransport
    agent: Agent | None = None
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class SimFleet:
    """N simulated devices against the control plane at SERVER_URL, in this event loop."""

    def __init__(
        self,
        server_url: str,
        operator_token: str,
        root: Path,
        directory: Path,
        *,
        options: AgentOptions | None = None,
        devices_per_client: int = 1,
        tuf_bundles: bool = True,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.tuf_bundles = tuf_bundles  # False: TUF metadata per file (the benchmark's A/B)
        self.operator_token = operator_token
        self.root = root
        self.directory = directory
        self.options = options or AgentOptions()
        # A client per device, as a real agent has (``edgeshift agent``: one client, no CA
        # bundle for plain HTTP). A shared pool costs the simulator what no device pays:
        # httpcore assigns each request by a scan over every connection of its pool (and one
        # pool for 1,000 devices holding long polls spent most of the process' CPU on it).
        self.devices_per_client = devices_per_client
        self.client = httpx.AsyncClient(timeout=60.0)
        self._clients: list[httpx.AsyncClient] = []
        self.devices: list[SimDevice] = []
        self.first_index = 0  # device names count from here (a shard of a ShardedSimFleet)

    def _client_for(self, index: int) -> httpx.AsyncClient:
        while len(self._clients) <= index // self.devices_per_client:
            limits = httpx.Limits(
                max_connections=4 * self.devices_per_client,
                keepalive_expiry=LIMITS.keepalive_expiry,
            )
            self._clients.append(
                httpx.AsyncClient(timeout=60.0, limits=limits, verify=tls_verify(self.server_url))
            )
        return self._clients[index // self.devices_per_client]

    async def _token(self, labels: dict[str, str]) -> str:
        answer = await self.client.post(
            f"{self.server_url}/v1/enrolment-tokens",
            json={"labels": labels},
            headers={"Authorization": f"Bearer {self.operator_token}"},
        )
        if answer.status_code >= 300:
            raise FleetError(f"enrolment token: {answer.status_code} {answer.text[:200]}", 502)
        return str(answer.json()["token"])

    async def enrol(
        self, count: int, prefix: str = "sim", labels: dict[str, str] | None = None
    ) -> None:
        """Enrol COUNT devices (each its own key, data dir and trusted root), concurrently."""
        sem = asyncio.Semaphore(32)
        start = self.first_index + len(self.devices)

        async def one(i: int) -> SimDevice:
            async with sem:
                name = f"{prefix}-{i:05d}"
                data_dir = self.directory / name
                (data_dir / "tuf").mkdir(parents=True, exist_ok=True)
                (data_dir / "tuf" / "root.json").write_bytes(self.root.read_bytes())
                key = new_private_key()
                client = self._client_for(i - self.first_index)
                transport = DeviceTransport(self.server_url, "", key, client=client)
                token = await self._token(labels or {})
                await transport.enrol(
                    EnrolRequest(token=token, name=name, public_key=public_key_b64(key))
                )
                return SimDevice(name, data_dir, SimHost(), transport)

        self.devices += await asyncio.gather(*(one(start + i) for i in range(count)))

    def start(self, devices: list[SimDevice] | None = None) -> None:
        for device in devices or self.devices:
            t = device.transport
            fetcher = SharedClientFetcher(t.server_url, t.device_id, t.private_key)
            fetcher.bundles = self.tuf_bundles
            installer = TufInstaller(device.data_dir / "tuf", t.server_url, fetcher)
            device.stop = asyncio.Event()
            device.agent = Agent(device.data_dir, t, device.host, installer, options=self.options)
            device.task = asyncio.create_task(device.agent.run(device.stop), name=device.name)

    async def stop_all(self) -> None:
        for device in self.devices:
            device.stop.set()
        tasks = [d.task for d in self.devices if d.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=30.0)
            for task in late:  # the journal says where each was, as after a crash
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for device in self.devices:
            await device.host.close()

    async def aclose(self) -> None:
        await self.stop_all()
        for client in [self.client, *self._clients]:
            await client.aclose()

    async def traffic(self, stop: asyncio.Event, rate_hz: float = 20.0, seed: int = 0) -> None:
        """Each device gets about RATE_HZ local requests a second until STOP."""
        rng = random.Random(seed)
        period_s = 0.1
        per_tick = rate_hz * period_s
        carry = 0.0
        while not stop.is_set():
            carry += per_tick
            n, carry = int(carry), carry - int(carry)
            for device in self.devices:
                for _ in range(n):
                    device.host.request(rng)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period_s)

    def totals(self) -> tuple[int, int]:
        """(answered, sent) local requests over every device."""
        return (
            sum(d.host.answered for d in self.devices),
            sum(d.host.sent for d in self.devices),
        )

    def reset_counts(self) -> None:
        for d in self.devices:
            d.host.answered = d.host.sent = 0

    def serving(self) -> dict[str | None, int]:
        """How many devices serve which model name (None: nothing serves)."""
        out: dict[str | None, int] = {}
        for d in self.devices:
            key = d.agent.active.artifact_id if d.agent and d.agent.active else None
            out[key] = out.get(key, 0) + 1
        return out

    def phases(self) -> dict[Phase, int]:
        out: dict[Phase, int] = {}
        for d in self.devices:
            if d.agent is not None:
                out[d.agent.journal.phase] = out.get(d.agent.journal.phase, 0) + 1
        return out


# --- several processes ------------------------------------------------------------------------


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _shard(conn: Connection, fleet_args: dict[str, Any], first_index: int) -> None:
    """One worker: a SimFleet in this process' own event loop, driven by commands on CONN."""
    fleet = SimFleet(**fleet_args)
    fleet.first_index = first_index
    loop = asyncio.get_running_loop()
    pipe = ThreadPoolExecutor(1, thread_name_prefix="shard-pipe")  # recv blocks: not the loop's
    stop_traffic = asyncio.Event()
    traffic: asyncio.Task[None] | None = None
    conn.send(("ok", _rss_kb()))
    while True:
        command, arg = await loop.run_in_executor(pipe, conn.recv)
        try:
            answer: object = None
            if command == "enrol":
                await fleet.enrol(*arg)
            elif command == "start":
                fleet.start()
            elif command == "traffic":
                stop_traffic = asyncio.Event()
                traffic = asyncio.create_task(fleet.traffic(stop_traffic, *arg))
            elif command == "traffic_stop":
                stop_traffic.set()
                if traffic is not None:
                    await traffic
            elif command == "totals":
                answer = fleet.totals()
            elif command == "serving":
                answer = fleet.serving()
            elif command == "phases":
                answer = fleet.phases()
            elif command == "reset_counts":
                fleet.reset_counts()
            elif command == "rss_kb":
                answer = _rss_kb()
            elif command == "cpu_s":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                answer = usage.ru_utime + usage.ru_stime
            elif command == "close":
                stop_traffic.set()
                if traffic is not None:
                    await traffic
                await fleet.aclose()
                conn.send(("ok", None))
                return
            conn.send(("ok", answer))
        except Exception as exc:  # sent to the parent, which raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _shard_main(
    conn: Connection, fleet_args: dict[str, Any], first_index: int, log_level: int
) -> None:
    logging.getLogger("edgeshift").setLevel(log_level)  # as quiet as the parent
    asyncio.run(_shard(conn, fleet_args, first_index))


class ShardedSimFleet:
    """SimFleet's devices spread over PROCS worker processes (spawned, each its own event loop),
    so that the simulator uses more than one core; totals are summed over the shards. Same
    arguments as SimFleet; every method is a coroutine."""

    def __init__(
        self,
        server_url: str,
        operator_token: str,
        root: Path,
        directory: Path,
        *,
        options: AgentOptions | None = None,
        devices_per_client: int = 1,
        procs: int = 2,
        tuf_bundles: bool = True,
    ) -> None:
        self._fleet_args: dict[str, Any] = {
            "server_url": server_url,
            "operator_token": operator_token,
            "root": root,
            "directory": directory,
            "options": options,
            "devices_per_client": devices_per_client,
            "tuf_bundles": tuf_bundles,
        }
        self.procs = max(1, procs)
        self._conns: list[Connection] = []
        self._workers: list[BaseProcess] = []
        self._locks: list[threading.Lock] = []
        self.base_rss_kb: list[int] = []
        self.count = 0

    def _call(self, shard: int, command: str, arg: object = None) -> Any:
        with self._locks[shard]:
            self._conns[shard].send((command, arg))
            status, answer = self._conns[shard].recv()
        if status != "ok":
            raise FleetError(f"simulator shard {shard}: {answer}", 500)
        return answer

    async def _all(self, command: str, args: list[object] | None = None) -> list[Any]:
        args = args if args is not None else [None] * len(self._conns)
        return list(
            await asyncio.gather(
                *(asyncio.to_thread(self._call, i, command, a) for i, a in enumerate(args))
            )
        )

    async def enrol(self, count: int, prefix: str = "sim") -> None:
        """Start the workers and enrol COUNT devices, split evenly over them."""
        ctx = multiprocessing.get_context("spawn")
        shares = [count // self.procs + (i < count % self.procs) for i in range(self.procs)]
        first = 0
        level = logging.getLogger("edgeshift").getEffectiveLevel()
        for share in shares:
            parent, child = ctx.Pipe()
            worker = ctx.Process(
                target=_shard_main,
                args=(child, self._fleet_args, first, level),
                daemon=True,
            )
            worker.start()
            child.close()
            self._conns.append(parent)
            self._workers.append(worker)
            self._locks.append(threading.Lock())
            first += share
        self.base_rss_kb = [(await asyncio.to_thread(conn.recv))[1] for conn in self._conns]
        await self._all("enrol", [(share, prefix) for share in shares])
        self.count = count

    async def start(self) -> None:
        await self._all("start")

    async def traffic(self, stop: asyncio.Event, rate_hz: float = 20.0) -> None:
        """Local traffic in every worker (SimFleet.traffic, its own seed each) until STOP."""
        await self._all("traffic", [(rate_hz, seed) for seed in range(len(self._conns))])
        await stop.wait()
        await self._all("traffic_stop")

    async def totals(self) -> tuple[int, int]:
        parts = await self._all("totals")
        return sum(a for a, _ in parts), sum(s for _, s in parts)

    async def serving(self) -> dict[str | None, int]:
        out: dict[str | None, int] = {}
        for part in await self._all("serving"):
            for key, n in part.items():
                out[key] = out.get(key, 0) + n
        return out

    async def phases(self) -> dict[Phase, int]:
        out: dict[Phase, int] = {}
        for part in await self._all("phases"):
            for key, n in part.items():
                out[key] = out.get(key, 0) + n
        return out

    async def reset_counts(self) -> None:
        await self._all("reset_counts")

    async def rss_kb(self) -> list[int]:
        """Each worker's RSS now (the workers' interpreters and imports included)."""
        return await self._all("rss_kb")

    async def cpu_s(self) -> float:
        """CPU seconds the workers have used so far (every thread), summed."""
        return float(sum(await self._all("cpu_s")))

    async def aclose(self) -> None:
        if self._conns:
            await self._all("close")
        for worker in self._workers:
            await asyncio.to_thread(worker.join, 30)
            if worker.is_alive():
                worker.kill()
        for conn in self._conns:
            conn.close()
        self._conns, self._workers = [], []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
