"""``edgeshift serve``: an Open Inference Protocol v2 server with dynamic batching."""

from edgeshift.serve.repository import ServeOptions, VersionPolicy
from edgeshift.serve.server import InferenceServer, ServerSettings, ServerThread, run_server

__all__ = [
    "InferenceServer",
    "ServeOptions",
    "ServerSettings",
    "ServerThread",
    "VersionPolicy",
    "run_server",
]
