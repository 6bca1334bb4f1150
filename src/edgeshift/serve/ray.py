"""edgeshift's inference path inside your own Ray Serve application.

:data:`EdgeshiftDeployment` is a Ray Serve deployment whose replicas each run edgeshift's own
server (repository, dynamic batcher, runtime): bind it with the paths ``edgeshift serve``
takes, and call it from your deployments through its handle::

    import numpy as np
    from ray import serve
    from edgeshift.serve.ray import EdgeshiftDeployment

    @serve.deployment
    class Pipeline:
        def __init__(self, model):
            self.model = model  # a DeploymentHandle to the edgeshift replicas

        async def __call__(self, request):
            x = np.asarray((await request.json())["x"], np.float32)
            outputs = await self.model.infer.remote("mlp", {"x": x})
            return {"y": outputs["y"].tolist()}

    models = EdgeshiftDeployment.options(num_replicas=2).bind(["/models"])
    serve.run(Pipeline.bind(models))

``infer(model, inputs, version="") -> dict[str, np.ndarray]`` goes through the replica's
batcher, shared with its HTTP clients: each replica also serves the Open Inference Protocol
v2 on a port of its node (``endpoint()`` says where), so tritonclient can skip Ray's proxy.
Arguments after the paths: ``options`` (a :class:`edgeshift.serve.ServeOptions`), ``host``
and ``port`` for that server (default: the node's IP, any free port). To serve a whole
cluster behind HAProxy with placement and autoscaling, use ``edgeshift cluster serve`` or
:class:`edgeshift.cluster.ClusterServer` instead (docs/scale-out.md).
"""

from __future__ import annotations

from typing import Any

from ray import serve

from edgeshift.cluster.replica import EdgeshiftReplica

EdgeshiftDeployment: Any = serve.deployment(
    EdgeshiftReplica,
    name="Edgeshift",
    # The replica's runtime threads use the node's cores; Ray's CPU count would only cap
    # replicas per node. Ask for CPUs or custom resources with .options() to place them.
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=256,  # the batcher queues; Ray's default of 5 would starve it
    graceful_shutdown_timeout_s=30,
)

__all__ = ["EdgeshiftDeployment", "EdgeshiftReplica"]
