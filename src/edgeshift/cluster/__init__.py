"""Scale-out on Ray: edgeshift's own server in every Ray Serve replica, HAProxy in front,
placement from ``edgeshift plan``, autoscaling on edgeshift's signals (see docs/scale-out.md).

Ray is imported only when a cluster is started: ``pip install edgeshift[ray]``.
"""

from edgeshift.cluster.controller import ClusterError, ClusterServer
from edgeshift.cluster.ingress import ReplicaEndpoint

__all__ = ["ClusterError", "ClusterServer", "ReplicaEndpoint"]
