"""Who may call what: bearer tokens for inference and, separately, for the repository API;
TLS (and mTLS) settings shared by the HTTP and gRPC front ends; Host and Origin checks.

Pure: settings and checks, no sockets. The front ends (``serve/app.py``, ``serve/fastpath.py``,
``serve/grpc.py``) call the checks on every request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TlsSettings:
    """Serve over TLS; with ``client_ca`` clients must present a certificate it signed (mTLS)."""

    certfile: Path
    keyfile: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class AuthSettings:
    """Bearer tokens, per API. An empty set means that API needs no token (inference on
    loopback, by default); the repository API is off unless ``repository_api`` is set."""

    inference_tokens: frozenset[str] = frozenset()
    repository_tokens: frozenset[str] = frozenset()
    repository_api: bool = False
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)  # beyond loopback names

    def inference_allowed(self, authorization: str | bytes | None) -> bool:
        """Whether an ``Authorization`` header (or gRPC ``authorization`` metadata) value may
        run inference."""
        raise NotImplementedError  # filled in by the security work (#17)

    def repository_allowed(self, authorization: str | bytes | None) -> bool:
        """Whether it may call the repository API (index, load, unload)."""
        raise NotImplementedError
