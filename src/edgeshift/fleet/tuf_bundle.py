"""A TUF refresh's metadata in one request.

python-tuf's ngclient refreshes with one fetch per file: the next root (``N+1.root.json``,
404 when there is none), ``timestamp.json``, the snapshot and the targets it names. For a
device each is a signed request. The control plane's ``GET /v1/device/tuf/bundle?root=N``
answers all of them at once (``TufRepository.metadata_bundle``), and ``BundlingFetcher``
answers ngclient's fetches from that bundle.

Nothing about trust changes: the bundle carries the very files the per-file route serves, and
ngclient checks every one of them as it would a file fetched alone (signatures, versions,
expiry, lengths). Anything the bundle does not hold, or a bundle that is malformed, too large
or not offered, is fetched per file as before.

Wire format: one line of JSON, ``{"files": [[name, length], ...], "absent": [name, ...]}``,
then the files' bytes back to back. ``absent`` names the root versions the repository does not
have (what the per-file route answers 404 for).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tuf.api import exceptions as tuf_exceptions
from tuf.ngclient import FetcherInterface

BUNDLE_PATH = "/bundle"  # under the device's TUF base URL, beside /metadata/ and /targets/
# ngclient's own limits (UpdaterConfig): a root 512 kB, timestamp 16 kB, snapshot 2 MB,
# targets 5 MB. A bundle holds at most MAX_BUNDLED_ROOTS roots and one of each of the others.
MAX_BUNDLED_ROOTS = 8
MAX_BUNDLE_BYTES = MAX_BUNDLED_ROOTS * 512_000 + 16_384 + 2_000_000 + 5_000_000 + 4096
# Bundled files answer the refresh that fetched them; one still held after this long is
# dropped, never served to a later refresh (whose timestamp must be the newest).
MAX_AGE_S = 60.0
_NAME = re.compile(r"^(?:([1-9][0-9]{0,9})\.)?(root|timestamp|snapshot|targets)\.json$")


def encode(files: list[tuple[str, bytes]], absent: list[str]) -> bytes:
    index = {"files": [[name, len(data)] for name, data in files], "absent": absent}
    return b"".join([json.dumps(index).encode(), b"\n", *(data for _name, data in files)])


def decode(data: bytes) -> tuple[dict[str, bytes], frozenset[str]]:
    """(files by name, absent names); ValueError for anything that is not a well-formed
    bundle of metadata file names."""
    head, newline, body = data.partition(b"\n")
    if not newline:
        raise ValueError("no index line")
    index = json.loads(head)
    if not isinstance(index, dict):
        raise ValueError("index is not an object")
    entries, absent = index.get("files"), index.get("absent", [])
    if not isinstance(entries, list) or not isinstance(absent, list):
        raise ValueError("index lists missing")
    files: dict[str, bytes] = {}
    offset = 0
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 2):
            raise ValueError("index entry is not [name, length]")
        name, length = entry
        if not (isinstance(name, str) and _NAME.match(name)) or name in files:
            raise ValueError(f"bad file name {str(name)[:80]!r}")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise ValueError(f"bad length for {name}")
        files[name] = body[offset : offset + length]
        offset += length
    if offset != len(body):
        raise ValueError(f"index says {offset} bytes, body has {len(body)}")
    for name in absent:
        match = isinstance(name, str) and _NAME.match(name)
        if not match or match.group(2) != "root" or name in files:
            raise ValueError(f"bad absent name {str(name)[:80]!r}")
    return files, frozenset(absent)


def is_metadata_name(name: str) -> bool:
    return _NAME.match(name) is not None


def root_version(name: str) -> int | None:
    """N for ``N.root.json``, else None."""
    match = _NAME.match(name)
    if match is None or match.group(2) != "root" or match.group(1) is None:
        return None
    return int(match.group(1))


class BundleUnavailable(Exception):
    """This control plane offers no bundle right now: fetch per file."""


@dataclass
class _Held:
    files: dict[str, bytes]
    absent: set[str]
    fetched_at: float = field(default_factory=time.monotonic)


class BundlingFetcher(FetcherInterface):
    """ngclient's fetcher, answering a refresh's metadata from one bundle.

    A refresh starts with the root after the trusted one: when that fetch is not answered by
    the bundle in hand, a new bundle is fetched from that root on, and replaces it. Each bundled
    file answers one fetch (then is dropped); every other URL goes to ``_fetch_file``.
    Subclasses give ``metadata_url`` (ending in ``/metadata/``), ``_fetch_file`` and
    ``_fetch_bundle`` (the bundle's bytes, or BundleUnavailable; a DownloadError for a link
    that is down propagates, as a per-file fetch's would)."""

    metadata_url: str = ""

    def __init__(self, bundles: bool = True) -> None:
        self._held: _Held | None = None
        # False: per file only (asked so, or the control plane has no bundle route)
        self.bundles = bundles
        self._held_lock = threading.Lock()
        self.bundles_fetched = 0

    def _fetch_file(self, url: str) -> Iterator[bytes]:
        raise NotImplementedError

    def _fetch_bundle(self, from_root: int) -> bytes:
        raise NotImplementedError

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.removeprefix(self.metadata_url) if url.startswith(self.metadata_url) else ""
        with self._held_lock:
            held = self._take(name)
        if held is not None:
            return iter([held])
        version = root_version(name)
        if version is None or not self.bundles:
            return self._fetch_file(url)
        try:
            files, absent = decode(self._bounded_bundle(version))
        except (BundleUnavailable, ValueError):  # none offered, or malformed: per file
            return self._fetch_file(url)
        with self._held_lock:
            self._held = _Held(files, set(absent))
            self.bundles_fetched += 1
            held = self._take(name)
        return self._fetch_file(url) if held is None else iter([held])

    def _bounded_bundle(self, from_root: int) -> bytes:
        try:
            data = self._fetch_bundle(from_root)
        except tuf_exceptions.DownloadHTTPError as exc:
            if exc.status_code in (404, 405):
                self.bundles = False  # an older control plane: per file from now on
            raise BundleUnavailable from exc
        if len(data) > MAX_BUNDLE_BYTES:
            raise BundleUnavailable
        return data

    def _take(self, name: str) -> bytes | None:
        """The held answer for NAME (dropped once given), or None when there is none. An absent
        root raises the 404 the per-file route would have answered."""
        held = self._held
        if held is None or not name:
            return None
        if time.monotonic() - held.fetched_at > MAX_AGE_S:
            self._held = None
            return None
        if name in held.absent:
            held.absent.discard(name)
            raise tuf_exceptions.DownloadHTTPError(f"{name}: not in the repository (404)", 404)
        return held.files.pop(name, None)
