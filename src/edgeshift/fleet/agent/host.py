"""Where the agent's models run: the ModelHost protocol, and ServerHost, edgeshift's own
inference server in this process (a model swap is a repository load: atomic, the old model
drains while the new one answers)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeshift.fleet.agent.shadow import Comparator, Outputs, ShadowComparator
from edgeshift.fleet.schema import ServingStats
from edgeshift.runtime.base import trim_heap
from edgeshift.serve.metrics import ServerMetrics
from edgeshift.serve.repository import ModelRepository, ModelSource, ServeOptions
from edgeshift.serve.server import InferenceServer, ServerSettings

LATENCY_WINDOW = 4096  # latencies kept per window for percentiles (a ring: newest win)


class ServingWindow:
    """Requests, errors and latencies seen since it was opened or last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.errors = 0
        self._latencies_ms = np.zeros(LATENCY_WINDOW, dtype=np.float32)
        self._filled = 0

    def observe(self, ok: bool, latency_s: float) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1
            return
        self._latencies_ms[self._filled % LATENCY_WINDOW] = latency_s * 1000.0
        self._filled += 1

    def percentile_ms(self, q: float) -> float | None:
        n = min(self._filled, LATENCY_WINDOW)
        return float(np.percentile(self._latencies_ms[:n], q)) if n else None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def stats(self) -> ServingStats:
        return ServingStats(
            requests=self.requests,
            errors=self.errors,
            p50_ms=self.percentile_ms(50),
            p95_ms=self.percentile_ms(95),
            shadow_samples=0,
            shadow_agreement=None,
            shadow_drift=None,
        )


class ServingWindows:
    """A host's report window (reset after each accepted report) and the windows the agent
    opens to judge a shadow or trial: every answered or failed request goes to all of them."""

    def __init__(self) -> None:
        self._report = ServingWindow()
        self._watchers: list[ServingWindow] = []

    def _record(self, ok: bool, latency_s: float) -> None:
        self._report.observe(ok, latency_s)
        for window in self._watchers:
            window.observe(ok, latency_s)

    def stats(self) -> ServingWindow:
        return self._report

    def watch(self) -> ServingWindow:
        window = ServingWindow()
        self._watchers.append(window)
        return window

    def unwatch(self, window: ServingWindow) -> None:
        with contextlib.suppress(ValueError):
            self._watchers.remove(window)


class ModelHost(Protocol):
    """What the agent needs of whatever runs its models (a real server, or a simulation in the
    benchmark)."""

    async def activate(self, slot_dir: Path, name: str) -> None:
        """Serve the artifact in SLOT_DIR as model NAME (replacing what served before)."""

    async def start_shadow(self, slot_dir: Path) -> Comparator:
        """Load SLOT_DIR beside the served model, unserved, and compare it on live requests."""

    def stats(self) -> ServingWindow:
        """The report window (the agent resets it after each accepted report)."""

    def watch(self) -> ServingWindow:
        """A fresh window fed from now on until ``unwatch``."""

    def unwatch(self, window: ServingWindow) -> None: ...

    async def close(self) -> None: ...


async def _release_freed_memory() -> None:
    """Give the C heap's free pages back to the OS after a model was closed: a runtime frees
    its session into malloc's arenas, which keep it (measured on the fleet benchmark's model:
    ~2 MB of the agent's RSS after an update). On a worker thread: the trim locks the arenas
    for milliseconds."""
    await asyncio.to_thread(trim_heap)


class ServerHost(ServingWindows):
    """ModelHost over edgeshift's InferenceServer, in this process and event loop."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, options: ServeOptions | None = None
    ) -> None:
        self.options = options or ServeOptions()
        self.server = InferenceServer(
            ServerSettings([], host=host, port=port, options=self.options, access_log=False)
        )
        self.active_name: str | None = None
        super().__init__()
        self._shadow: ShadowComparator | None = None
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        self._serving = asyncio.create_task(self.server.serve(), name="agent-serve")
        while not self.server.started and not self._serving.done():
            await asyncio.sleep(0.005)
        if self._serving.done():
            self._serving.result()  # raises why it stopped

    @property
    def serving(self) -> asyncio.Task[None] | None:
        """The server's task: done when the server exited (SIGTERM in the CLI)."""
        return self._serving

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def repository(self) -> ModelRepository:
        assert self.server.repository is not None, "start() the host first"
        return self.server.repository

    def _observe(self, feeds: Outputs, outputs: Outputs | None, elapsed_s: float) -> None:
        self._record(outputs is not None, elapsed_s)
        if self._shadow is not None:
            self._shadow.observe(feeds, outputs, elapsed_s)

    async def activate(self, slot_dir: Path, name: str) -> None:
        repo = self.repository
        repo.sources[name] = ModelSource(name, {1: slot_dir}, None)
        repo.observers[name] = self._observe
        await repo.load(name)  # raises ProtocolError when the candidate cannot load
        previous, self.active_name = self.active_name, name
        if previous is not None and previous != name:
            await repo.unload(previous)
            repo.sources.pop(previous, None)
            repo.observers.pop(previous, None)
        await _release_freed_memory()  # the replaced model's

    async def start_shadow(self, slot_dir: Path) -> Comparator:
        await self.stop_shadow()
        name = self.active_name or "candidate"
        # A repository of its own: the candidate is loaded but no route reaches it.
        shadow_repo = ModelRepository(
            {name: ModelSource(name, {1: slot_dir}, None)}, self.options, ServerMetrics()
        )
        await shadow_repo.load(name)
        candidate = shadow_repo.get(name)
        comparator = ShadowComparator(candidate.batcher.enqueue, shadow_repo.close)
        self._shadow = comparator
        return comparator

    async def stop_shadow(self) -> None:
        shadow, self._shadow = self._shadow, None
        if shadow is not None:
            await shadow.close()
            await _release_freed_memory()  # the candidate's

    async def close(self) -> None:
        await self.stop_shadow()
        self.server.request_exit()
        if self._serving is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
