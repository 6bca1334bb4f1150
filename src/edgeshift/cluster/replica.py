"""One replica: a Ray Serve replica that runs edgeshift's own server (repository, batcher,
uvicorn fast path; gRPC beside it when asked) on ports of its node, registers them, and
answers Ray handle calls (``infer``) through the same repository and batcher.

Lifecycle, so a rolling update or a scale-down fails no request:
start the server (models loaded, socket bound) -> register -> serve; on stop (Ray Serve calls
``__del__``): wait until another replica holds this one's models (bounded), unregister, wait
for the ingress to drain it, let its clients leave (each connection closes after its next
answer: what an L4 ingress needs), then stop the server gracefully (in-flight requests
answered).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeshift.cluster.ingress import ReplicaEndpoint
from edgeshift.serve import InferenceServer, ServeOptions, ServerSettings
from edgeshift.serve.protocol import InferRequest, datatype_of
from edgeshift.serve.server import new_event_loop

log = logging.getLogger("edgeshift.cluster")

# How long a stopping replica waits for a successor before it leaves anyway.
HANDOFF_TIMEOUT_S = 15.0
# Time for the controller (woken by the registry when this replica unregisters) to drain it
# from HAProxy.
DRAIN_GRACE_S = 1.0
# Then, how long its clients get to leave (each connection closes after its next answer;
# an L4 ingress keeps a client's connection on the replica it was opened to).
DRAIN_CONNECTIONS_S = 5.0
# Registering again this often brings a replica back after the registry restarted or the
# controller pruned it by mistake (a port that did not answer for a moment).
HEARTBEAT_S = 2.0


class _ServerLoop:
    """An InferenceServer on its own thread and event loop; ``call`` runs a coroutine there."""

    def __init__(self, settings: ServerSettings) -> None:
        self.server = InferenceServer(settings)
        self.loop = new_event_loop()  # the loop `edgeshift serve` runs on
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgeshift-replica", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self.loop.create_task(self._signal_ready())
        self.loop.run_until_complete(self.server.serve())
        self._ready.set()

    async def _signal_ready(self) -> None:
        while not self.server.started:
            await asyncio.sleep(0.005)
        self._ready.set()

    def start(self, timeout_s: float = 300.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"the replica's server did not start within {timeout_s} s")
        if self._error is not None:
            raise self._error

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.server.started

    def drain(self, timeout_s: float) -> int:
        """InferenceServer.drain_connections on the server's loop; connections left."""
        if not self._thread.is_alive():
            return 0
        future = asyncio.run_coroutine_threadsafe(
            self.server.drain_connections(timeout_s), self.loop
        )
        return future.result(timeout_s + 5)

    def stop(self, timeout_s: float = 60.0) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.request_exit)
        self._thread.join(timeout_s)


class EdgeshiftReplica:
    """The replica class; :mod:`edgeshift.serve.ray` wraps it as a Ray Serve deployment.

    PATHS are what ``edgeshift serve`` takes (visible on every node that may run it).
    ``registry``: the cluster name whose registry to join (None: stand-alone, e.g. in a
    Ray user's own application). ``host``: address to bind (None: this node's IP).
    ``grpc_port``: serve gRPC too, on this port (0: any free one; None: no gRPC).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        options: ServeOptions | None = None,
        *,
        host: str | None = None,
        port: int = 0,
        registry: str | None = None,
        app: str = "",
        access_log: bool = False,
        grpc_port: int | None = None,
    ) -> None:
        import ray
        from ray import serve

        node_ip = ray.util.get_node_ip_address()
        self._server = _ServerLoop(
            ServerSettings(
                paths=list(paths),
                host=host or node_ip,
                port=port,
                options=options or ServeOptions(),
                access_log=access_log,
                grpc_port=grpc_port,
            )
        )
        self._server.start()
        repository = self._server.server.repository
        assert repository is not None
        try:
            replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # not inside Ray Serve (a plain actor, a test): any unique id
            replica_id = f"{node_ip}:{self._server.server.port}"
        advertised = node_ip if host in (None, "0.0.0.0", "::") else host
        self._endpoint = ReplicaEndpoint(
            replica_id=replica_id,
            node_id=ray.get_runtime_context().get_node_id(),
            host=advertised,
            port=self._server.server.port,
            models=tuple(sorted(m.name for m in repository.models())),
            grpc_port=self._server.server.grpc_port,
        )
        self._app = app
        self._registry: Any = None
        self._leaving = threading.Event()
        self._beats = threading.Thread(target=self._heartbeat, name="edgeshift-beat", daemon=True)
        if registry is not None:
            from edgeshift.cluster.registry import get_registry

            self._registry = get_registry(registry, create=True)
            ray.get(self._registry.register.remote(app, self._endpoint))
            self._beats.start()
        log.info("replica %s serving on %s", replica_id, self._endpoint.address)

    def _heartbeat(self) -> None:
        import ray

        while not self._leaving.wait(HEARTBEAT_S):
            try:
                ray.get(self._registry.register.remote(self._app, self._endpoint), timeout=10)
            except Exception:  # the registry restarting: the next beat registers again
                log.warning("replica %s: registry unreachable", self._endpoint.replica_id)

    def endpoint(self) -> ReplicaEndpoint:
        return self._endpoint

    async def infer(
        self, model: str, inputs: dict[str, np.ndarray], version: str = ""
    ) -> dict[str, np.ndarray]:
        """Run MODEL on INPUTS through the replica's batcher (shared with its HTTP clients);
        errors are edgeshift's (ProtocolError for a bad request, unknown model, full queue)."""
        repository = self._server.server.repository
        assert repository is not None
        request = InferRequest(
            inputs={k: np.asarray(v) for k, v in inputs.items()},
            datatypes={k: datatype_of(np.asarray(v).dtype) for k, v in inputs.items()},
        )

        async def run() -> dict[str, np.ndarray]:
            served = repository.get(model, version or None)
            result = await served.enqueue(request)
            return served.select(request, result)

        future = asyncio.run_coroutine_threadsafe(run(), self._server.loop)
        return await asyncio.wrap_future(future)

    def check_health(self) -> None:
        # Ray Serve restarts a replica whose check raises: a server thread that died is one.
        if not self._server.alive:
            raise RuntimeError(f"edgeshift server of replica {self._endpoint.replica_id} stopped")

    async def __del__(self) -> None:
        if not hasattr(self, "_leaving"):
            return  # __init__ failed before the server was registered
        self._leaving.set()  # no heartbeat may register it again once it has unregistered
        if self._beats.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, self._beats.join, 15.0)
        if self._registry is not None:
            try:
                await self._hand_over()
                await self._registry.unregister.remote(self._endpoint.replica_id)
                await asyncio.sleep(DRAIN_GRACE_S)
            except Exception:  # the registry is gone (cluster stopping): stop all the same
                log.warning("replica %s: could not unregister", self._endpoint.replica_id)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._server.drain, DRAIN_CONNECTIONS_S)
        except Exception:  # the server thread already gone: nothing to drain
            log.warning("replica %s: could not drain its connections", self._endpoint.replica_id)
        await loop.run_in_executor(None, self._server.stop)

    async def _hand_over(self) -> None:
        """Wait until another registered replica serves every model this one does, so the
        ingress never has none (a one-replica rolling update); bounded, and skipped when
        the whole cluster is stopping."""
        assert self._registry is not None
        deadline = time.monotonic() + HANDOFF_TIMEOUT_S
        mine = set(self._endpoint.models)
        while time.monotonic() < deadline:
            if await self._registry.stopping.remote():
                return
            _, entries = await self._registry.snapshot.remote()
            others = [e for _, e in entries if e.replica_id != self._endpoint.replica_id]
            if all(any(m in e.models for e in others) for m in mine):
                return
            await asyncio.sleep(0.1)
        log.warning(
            "replica %s: no successor after %g s", self._endpoint.replica_id, HANDOFF_TIMEOUT_S
        )
