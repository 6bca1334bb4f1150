"""Device request signing: what an agent signs and what the control plane checks.

A device holds an Ed25519 key pair it made itself at enrolment; the control plane keeps only
the public key. Every device request carries four headers (names in fleet/schema.py):
the device id, a timestamp, a random nonce and an Ed25519 signature over the canonical
request below. The control plane refuses a signature that does not verify, a timestamp more
than MAX_CLOCK_SKEW_S away from its clock, and a nonce it has seen (a replay). The body's
hash is in the signed text, so a body cannot be swapped under a valid signature.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from edgeshift.fleet.schema import (
    DEVICE_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
)

SIGNATURE_SCHEME = "edgeshift-ed25519-v1"


def canonical_request(
    method: str, path_and_query: str, timestamp: str, nonce: str, device_id: str, body: bytes
) -> bytes:
    """The bytes a device signs: scheme, method, path with query, timestamp, nonce, device id
    and the body's sha256, one per line."""
    return "\n".join(
        [
            SIGNATURE_SCHEME,
            method.upper(),
            path_and_query,
            timestamp,
            nonce,
            device_id,
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode()


def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def load_private_key(raw: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_key_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def sign_headers(
    key: Ed25519PrivateKey,
    device_id: str,
    method: str,
    path_and_query: str,
    body: bytes = b"",
    *,
    now: float | None = None,
) -> dict[str, str]:
    """The four headers that authenticate one device request."""
    timestamp = f"{time.time() if now is None else now:.3f}"
    nonce = os.urandom(16).hex()
    signature = key.sign(
        canonical_request(method, path_and_query, timestamp, nonce, device_id, body)
    )
    return {
        DEVICE_HEADER: device_id,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
    }


def verify_signature(
    public_key_b64_text: str,
    signature_b64: str,
    method: str,
    path_and_query: str,
    timestamp: str,
    nonce: str,
    device_id: str,
    body: bytes,
) -> bool:
    """True when SIGNATURE is the device's over this request. Freshness (timestamp, nonce) is
    the caller's to check: it needs the clock and the nonce memory."""
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64_text))
        public.verify(
            base64.b64decode(signature_b64, validate=True),
            canonical_request(method, path_and_query, timestamp, nonce, device_id, body),
        )
    except (InvalidSignature, ValueError):
        return False
    return True
