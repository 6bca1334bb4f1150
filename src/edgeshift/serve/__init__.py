"""``edgeshift serve``: an Open Inference Protocol v2 server with dynamic batching."""

from edgeshift.serve.connections import ConnectionSettings
from edgeshift.serve.limits import RequestLimits
from edgeshift.serve.repository import ServeOptions, VersionPolicy
from edgeshift.serve.security import AuthSettings, TlsSettings
from edgeshift.serve.server import InferenceServer, ServerSettings, ServerThread, run_server

__all__ = [
    "AuthSettings",
    "ConnectionSettings",
    "InferenceServer",
    "RequestLimits",
    "ServeOptions",
    "ServerSettings",
    "ServerThread",
    "TlsSettings",
    "VersionPolicy",
    "run_server",
]
