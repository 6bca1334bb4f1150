"""Who may call the control plane (operators with a bearer token, devices with a signed
request) and what a request may carry (bodies, label selectors, keys, TUF file names).

Plain functions over header values and the Store, no ASGI: the routes (fleet/api.py) call
them, tests call them directly. Every refusal is FleetError(…, 401) with one line; a device
refusal never says whether the device id exists (unknown, revoked and forged read the same).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from edgeshift.errors import ConfigError, FleetError
from edgeshift.fleet.auth import new_private_key, public_key_b64, verify_signature
from edgeshift.fleet.schema import (
    DEVICE_HEADER,
    MAX_CLOCK_SKEW_S,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Labels,
    is_name,
)
from edgeshift.serve.security import read_token_text

MIN_TOKEN_CHARS = 16
LABELS: TypeAdapter[dict[str, str]] = TypeAdapter(Labels)
_METADATA_NAME = re.compile(r"^(?:[1-9][0-9]{0,9}\.)?(?:root|timestamp|snapshot|targets)\.json$")
_TARGET_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_M = TypeVar("_M", bound=BaseModel)
MAX_HEADER_CHARS = 256  # device headers are short; a longer one is garbage, refused unparsed
_UNKNOWN_DEVICE_KEY = public_key_b64(new_private_key())
_DEVICE_REFUSED = (
    "device request refused: unknown or revoked device, or a signature that does not verify"
    " — enrol again or check the device's key"
)


class DeviceKeys(Protocol):
    """The part of the Store a device check needs."""

    def device_public_key(self, device_id: str) -> str | None: ...

    def remember_nonce(self, device_id: str, nonce: str, now: float) -> bool: ...


class OperatorTokens(Protocol):
    def operator_for_token(self, token: str) -> str | None: ...


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class OperatorAuth:
    """Operator tokens from ``--token-file`` (name -> sha256 of the token), checked before the
    ones in the database. Only digests are kept, and compared in constant time."""

    file_digests: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_tokens(cls, tokens: Mapping[str, str]) -> OperatorAuth:
        return cls({name: _digest(token) for name, token in tokens.items()})

    def operator(self, authorization: str | None, store: OperatorTokens) -> str:
        """The operator's name for an ``Authorization: Bearer TOKEN`` header; else 401."""
        token = bearer_token(authorization)
        if token is None:
            raise FleetError(
                "operator token missing — send 'Authorization: Bearer TOKEN'"
                " (edgeshift fleet … --token-file FILE)",
                401,
            )
        digest = _digest(token)
        found: str | None = None
        for name, expected in self.file_digests.items():
            # No early exit: every configured token is compared, matched or not.
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        if found is None:
            found = store.operator_for_token(token)
        if found is None:
            raise FleetError("operator token not accepted — check --token-file", 401)
        return found


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 1024:
        return None
    return token


def parse_token_file(path: Path) -> dict[str, str]:
    """Operator tokens from a file: ``name:token`` per line, or one bare token (named
    ``operator``); blank lines and ``#`` comments skipped. ConfigError (one line) when the
    file is unreadable, empty or a token is too short."""
    text = read_token_text(path, "--token-file")
    tokens: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.rpartition(":")
        if not sep:
            name, token = "operator", line
        name, token = name.strip(), token.strip()
        if not is_name(name):
            raise ConfigError(
                f"--token-file {path} line {number}: {name!r} is not a name"
                " — write name:token with a name of letters, digits, '.', '_' or '-'"
            )
        if len(token) < MIN_TOKEN_CHARS or not token.isascii() or any(c.isspace() for c in token):
            raise ConfigError(
                f"--token-file {path} line {number}: a token must be at least"
                f" {MIN_TOKEN_CHARS} ASCII characters with no spaces"
                " — e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        tokens[name] = token
    if not tokens:
        raise ConfigError(f"--token-file {path} holds no token — write name:token per line")
    return tokens


def check_device(
    store: DeviceKeys,
    headers: Mapping[str, str],
    method: str,
    path_and_query: str,
    body: bytes,
    now: float,
) -> str:
    """The device id of a signed request, after checking freshness, the signature with the
    device's stored key, and that its nonce is new; FleetError(…, 401) otherwise.

    Order matters: the clock is checked before any lookup (cheap, reveals nothing), the nonce
    only after the signature verified, so a forger cannot burn a device's nonces."""
    values = {}
    for header in (DEVICE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER):
        value = headers.get(header.lower()) or headers.get(header)
        if not value:
            raise FleetError(
                f"device request refused: header {header} missing — devices sign every"
                " request (edgeshift agent does)",
                401,
            )
        if len(value) > MAX_HEADER_CHARS:
            raise FleetError(f"device request refused: header {header} too long", 401)
        values[header] = value
    device_id = values[DEVICE_HEADER]
    timestamp = values[TIMESTAMP_HEADER]
    try:
        sent_at = float(timestamp)
    except ValueError:
        sent_at = math.nan
    if not math.isfinite(sent_at) or abs(now - sent_at) > MAX_CLOCK_SKEW_S:
        raise FleetError(
            f"device request refused: its timestamp is more than {MAX_CLOCK_SKEW_S:.0f} s from"
            " the control plane's clock — sync the device's clock (NTP)",
            401,
        )
    public_key = store.device_public_key(device_id) if is_name(device_id) else None
    # An unknown device costs one verification too, so timing does not tell ids apart.
    verified = verify_signature(
        public_key or _UNKNOWN_DEVICE_KEY,
        values[SIGNATURE_HEADER],
        method,
        path_and_query,
        timestamp,
        values[NONCE_HEADER],
        device_id,
        body,
    )
    if public_key is None or not verified:
        raise FleetError(_DEVICE_REFUSED, 401)
    try:
        fresh = store.remember_nonce(device_id, values[NONCE_HEADER], now)
    except FleetError as err:
        if err.status == 404:  # revoked since its key was read (the key is cached)
            raise FleetError(_DEVICE_REFUSED, 401) from None
        raise
    if not fresh:
        raise FleetError(
            "device request refused: its nonce was used before (a replay) — sign each request"
            " afresh",
            401,
        )
    return device_id


# --- what a request carries ----------------------------------------------------------------


def validation_line(model_name: str, exc: ValidationError) -> str:
    """One line naming the first bad field (and how many more there are)."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    line = f"bad {model_name}: {where}: {first['msg']}"
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more)"
    return line[:500]


def parse_body(model: type[_M], body: bytes) -> _M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise FleetError(validation_line(model.__name__, exc), 400) from None


def selector_from_query(values: Iterable[str]) -> dict[str, str]:
    """``label=k=v`` query values -> {k: v}, each checked like a label."""
    selector: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise FleetError(f"label {item[:80]!r} must be k=v", 400)
        selector[key] = value
    try:
        return LABELS.validate_python(selector)
    except ValidationError as exc:
        raise FleetError(validation_line("label selector", exc), 400) from None


def check_public_key(text: str) -> None:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise FleetError(
            "bad EnrolRequest: public_key must be a raw Ed25519 public key in base64 (32 bytes)",
            400,
        )


def check_target_path(path: str) -> str:
    """A TUF target path from a URL, refused unless every segment is a plain name: nothing
    from a request reaches the file system unless it could never leave the targets folder."""
    segments = path.split("/")
    if len(path) > 512 or len(segments) > 4 or not all(_TARGET_SEGMENT.match(s) for s in segments):
        raise FleetError(f"no target {path[:80]!r}", 404)
    return path


def check_metadata_name(name: str) -> str:
    """A TUF metadata file name from a URL: ``[N.]root|timestamp|snapshot|targets.json``."""
    if not _METADATA_NAME.match(name):
        raise FleetError(f"no TUF metadata {name[:80]!r}", 404)
    return name
