"""Who may call what: bearer tokens for inference and, separately, for the repository API;
TLS (and mTLS) settings shared by the HTTP and gRPC front ends; Host and Origin checks.

Pure: settings and checks, no sockets. The front ends (``serve/app.py``, ``serve/fastpath.py``,
``serve/grpc.py``) call the checks on every request.
"""

from __future__ import annotations

import hmac
import ipaddress
import ssl
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edgeshift.errors import ConfigError, ProtocolError

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # probes never need a token
REPOSITORY_PREFIX = "/v2/repository/"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


@dataclass(frozen=True)
class TlsSettings:
    """Serve over TLS; with ``client_ca`` clients must present a certificate it signed (mTLS)."""

    certfile: Path
    keyfile: Path
    client_ca: Path | None = None

    def server_context(self) -> ssl.SSLContext:
        """The HTTP front end's context; ConfigError (one line) when a file is unusable."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
            if self.client_ca is not None:
                context.load_verify_locations(cafile=self.client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot use the TLS files --tls-cert {self.certfile.name}, --tls-key "
                f"{self.keyfile.name}"
                + (f", --tls-client-ca {self.client_ca.name}" if self.client_ca else "")
                + f" ({exc.strerror or exc}) — give a PEM certificate and its matching key"
            ) from None
        return context

    def pem_bytes(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, key, client CA) as read from disk, for grpc credentials."""
        ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        return self.certfile.read_bytes(), self.keyfile.read_bytes(), ca


def read_token_text(path: Path, flag: str) -> str:
    """A token file's text, or a one-line ConfigError naming FLAG: tokens never go on the
    command line, where ``ps`` shows them to every user."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"cannot read {flag} {path} ({reason}) — give a readable text file"
        ) from None


def read_tokens(path: Path, flag: str) -> frozenset[str]:
    """Tokens from a file, one per line (blank lines and ``#`` comments skipped)."""
    text = read_token_text(path, flag)
    tokens = frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    if not tokens:
        raise ConfigError(f"{flag} {path} holds no token — write one token per line")
    if any(len(t) < 16 or any(c.isspace() for c in t) or not t.isascii() for t in tokens):
        raise ConfigError(
            f"{flag} {path}: every token must be at least 16 ASCII characters with no spaces"
            " — e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return tokens


def _bearer(authorization: str | bytes | None) -> bytes | None:
    if authorization is None:
        return None
    if isinstance(authorization, str):
        authorization = authorization.encode("latin-1", "replace")
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip()


def _token_matches(authorization: str | bytes | None, tokens: frozenset[str]) -> bool:
    given = _bearer(authorization)
    if given is None:
        return False
    # Compare against every token, without stopping early: the time taken says nothing.
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given, token.encode("ascii"))
    return matched


@dataclass(frozen=True)
class AuthSettings:
    """Bearer tokens, per API. An empty set means that API needs no token (inference on
    loopback, by default); the repository API is off unless ``repository_api`` is set.

    A verified client certificate (mTLS) authenticates inference; the repository API then
    still needs its own token when repository tokens are configured."""

    inference_tokens: frozenset[str] = frozenset()
    repository_tokens: frozenset[str] = frozenset()
    repository_api: bool = False
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)  # beyond loopback names
    allowed_origins: frozenset[str] = field(default_factory=frozenset)  # beyond same-origin

    @property
    def any_auth(self) -> bool:
        return bool(self.inference_tokens)

    def inference_allowed(
        self, authorization: str | bytes | None, *, client_certified: bool = False
    ) -> bool:
        """Whether an ``Authorization`` header (or gRPC ``authorization`` metadata) value may
        run inference."""
        if not self.inference_tokens or client_certified:
            return True
        return _token_matches(authorization, self.inference_tokens)

    def repository_allowed(
        self, authorization: str | bytes | None, *, client_certified: bool = False
    ) -> bool:
        """Whether it may call the repository API (index, load, unload)."""
        return self.repository_refusal(authorization, client_certified=client_certified) is None

    def repository_refusal(
        self, authorization: str | bytes | None, *, client_certified: bool = False
    ) -> ProtocolError | None:
        """Why a repository API call is refused (403 off, 401 no token), or None."""
        if not self.repository_api:
            return ProtocolError(
                "the repository API (index, load, unload) is off — start the server with "
                "--repository-api (and --repository-token-file) to enable it",
                403,
            )
        if self.repository_tokens:
            if not _token_matches(authorization, self.repository_tokens):
                return ProtocolError(
                    "the repository API needs its token — send Authorization: Bearer <token>"
                    " with a token from the server's --repository-token-file",
                    401,
                )
            return None
        if not self.inference_allowed(authorization, client_certified=client_certified):
            return _NEEDS_TOKEN
        return None


_NEEDS_TOKEN = ProtocolError(
    "this server needs a token — send Authorization: Bearer <token> with a token from the "
    "server's --auth-token-file",
    401,
)


def is_loopback(host: str) -> bool:
    """Whether HOST (a bind address or a Host header's name) names this machine only."""
    host = host.strip().lower().strip("[]")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The name in a Host header or an Origin's netloc, without the port."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


@dataclass(frozen=True)
class RequestGuard:
    """The per-request checks of one HTTP front end: Host (DNS rebinding), Origin (cross-site
    requests), then tokens. ``check`` is the one place both HTTP paths call."""

    auth: AuthSettings
    loopback_bind: bool  # bound to loopback: only loopback Host names (and allowed_hosts)
    client_certified: bool = False  # mTLS: every connection carries a verified certificate

    def check(self, path: str, headers: Iterable[tuple[bytes, bytes]]) -> ProtocolError | None:
        """Why the request for PATH with HEADERS (lower-case names) is refused, or None."""
        host = origin = authorization = None
        for name, value in headers:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value
        if host is not None and self.loopback_bind:
            host_name = _host_name(host)
            if not is_loopback(host_name) and host_name not in self.auth.allowed_hosts:
                return ProtocolError(
                    f"Host {host[:100]!r} is not served here (the server listens on loopback)"
                    " — use localhost, or start it with --allowed-host NAME",
                    403,
                )
        if origin is not None and not self._origin_allowed(origin, host):
            return ProtocolError(
                f"cross-origin request from {origin[:100]!r} refused — start the server with "
                "--allowed-origin ORIGIN to let that site call it",
                403,
            )
        if path in OPEN_PATHS:
            return None
        if path.startswith(REPOSITORY_PREFIX):
            return self.auth.repository_refusal(
                authorization, client_certified=self.client_certified
            )
        if not self.auth.inference_allowed(authorization, client_certified=self.client_certified):
            return _NEEDS_TOKEN
        return None

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.strip()
        if origin.rstrip("/") in self.auth.allowed_origins or "*" in self.auth.allowed_origins:
            return True
        netloc = urllib.parse.urlsplit(origin).netloc.lower()
        # Same origin: the page was served by this very host and port.
        return host is not None and netloc != "" and netloc == host.strip().lower()
