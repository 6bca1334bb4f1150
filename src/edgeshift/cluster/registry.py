"""Where the replicas listen: a named, detached Ray actor that replicas write to when their
server is ready and when they stop, and that the controller reads to feed the ingress.

Ray Serve knows its replicas but not the HTTP port each one's own edgeshift server bound,
so the replicas say it themselves. A replica that dies without a word (its node died) stays
listed until the controller prunes it (its port stops answering); the ingress's health
checks have taken it out of rotation long before.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import ray

from edgeshift.cluster.ingress import ReplicaEndpoint

NAMESPACE = "edgeshift"


def registry_name(cluster_name: str) -> str:
    return f"{cluster_name}-registry"


@ray.remote(num_cpus=0, max_restarts=-1)
class Registry:
    """Entries by replica id; ``version`` grows on every change so readers skip no-ops.

    An async actor: ``changed`` long-polls, so the controller learns of a change at once
    without asking ten times a second (which cost this actor ~24 ms of CPU per second idle).
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, ReplicaEndpoint]] = {}
        self._version = 0
        self._stopping = False
        self._bumped = asyncio.Event()

    def _bump(self) -> None:
        self._version += 1
        self._bumped.set()
        self._bumped = asyncio.Event()

    async def register(self, app: str, endpoint: ReplicaEndpoint) -> None:
        # Replicas repeat this as a heartbeat: only a change is a new version.
        if self._entries.get(endpoint.replica_id) != (app, endpoint):
            self._entries[endpoint.replica_id] = (app, endpoint)
            self._bump()

    async def unregister(self, replica_id: str) -> None:
        if self._entries.pop(replica_id, None) is not None:
            self._bump()

    async def snapshot(self) -> tuple[int, list[tuple[str, ReplicaEndpoint]]]:
        return self._version, list(self._entries.values())

    async def changed(
        self, version: int, timeout_s: float
    ) -> tuple[int, list[tuple[str, ReplicaEndpoint]]]:
        """The snapshot once its version differs from VERSION, or after TIMEOUT_S."""
        if version == self._version:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._bumped.wait(), timeout_s)
        return self._version, list(self._entries.values())

    async def set_stopping(self, stopping: bool) -> None:
        # Shutting the whole cluster down: a stopping replica hands over to nobody.
        self._stopping = stopping

    async def stopping(self) -> bool:
        return self._stopping

    async def node_id(self) -> str:
        """The node this registry runs on."""
        return str(ray.get_runtime_context().get_node_id())


def get_registry(cluster_name: str, *, create: bool, node_id: str | None = None) -> Any:
    """The registry actor handle (created, detached, when CREATE and absent; on NODE_ID when
    given, else where Ray puts it).

    The controller creates it on its own node: anywhere else, a node lost under load took the
    registry with it, Ray restarted it empty elsewhere, and the controller fed HAProxy the
    empty list, draining the surviving replicas until their next heartbeat (thousands of
    503s in a node-failure test). The controller's node going down takes the controller and
    the ingress with it anyway."""
    name = registry_name(cluster_name)
    if create:
        options: dict[str, Any] = {}
        if node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
        return Registry.options(  # type: ignore[attr-defined]
            name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, **options
        ).remote()
    return ray.get_actor(name, namespace=NAMESPACE)
