"""The control plane's TUF repository: artifact bundles signed into TUF metadata.

Built on python-tuf's Metadata API (no hand-written TUF). Layout under the directory given to
``TufRepository.open`` (the control plane's ``D/tuf/``)::

    keys/{root,targets,snapshot,timestamp}.pem   Ed25519 private keys, mode 0600
    metadata/N.root.json, N.targets.json, N.snapshot.json, timestamp.json
    targets/<name>/<sha256>.<version>.tar        consistent-snapshot target files

Every write is a temporary file renamed into place, and a new state becomes visible only when
timestamp.json is renamed last, so a reader (or a crash) never sees a half-published state.
Mutations hold a thread lock and an flock on ``.lock`` so threads and processes can share it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from edgeshift.errors import FleetError
from edgeshift.fleet import bundle as bundle_mod
from edgeshift.fleet.schema import ArtifactInfo, ArtifactRef, is_name
from edgeshift.fleet.tuf_bundle import MAX_BUNDLED_ROOTS

ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
_DAY_S = 24 * 3600.0
_METADATA_NAME = re.compile(r"^(?:([1-9][0-9]{0,9})\.)?(root|timestamp|snapshot|targets)\.json$")
_TARGET_NAME = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]{0,62})/(?:([0-9a-f]{64})\.)?([1-9][0-9]{0,17})\.tar$"
)
_SERIALIZER = JSONSerializer(compact=True)
_S = TypeVar("_S", Root, Targets, Snapshot, Timestamp)


@dataclass(frozen=True)
class TufExpiry:
    """How long each role's metadata stays valid after it is signed (seconds)."""

    root_s: float = 365 * _DAY_S
    targets_s: float = 90 * _DAY_S
    snapshot_s: float = 7 * _DAY_S
    timestamp_s: float = 1 * _DAY_S

    def for_role(self, role: str) -> float:
        return float(getattr(self, f"{role}_s"))


def _expires(now: float, lifetime_s: float) -> datetime:
    return datetime.fromtimestamp(now + lifetime_s, tz=timezone.utc).replace(microsecond=0)


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _load_signer(path: Path) -> CryptoSigner:
    private = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise FleetError(
            f"{path}: not an Ed25519 key; remove it to make a new one or restore the right one", 500
        )
    return CryptoSigner(private)


class TufRepository:
    """A TUF repository of artifact bundles. Make one with ``TufRepository.open``."""

    def __init__(
        self, directory: Path, expiry: TufExpiry, signers: dict[str, CryptoSigner]
    ) -> None:
        self.directory = directory
        self.expiry = expiry
        self._signers = signers
        self._metadata_dir = directory / "metadata"
        self._targets_dir = directory / "targets"
        self._thread_lock = threading.Lock()

    # --- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, now: float, *, expiry: TufExpiry | None = None) -> TufRepository:
        """Open the repository at ``directory``, creating keys and version-1 metadata on first
        use. Keys live in ``directory/keys`` (0600); see docs/fleet.md for keeping root offline
        and rotating it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keys_dir = directory / "keys"
        keys_dir.mkdir(mode=0o700, exist_ok=True)
        repo = cls(directory, expiry or TufExpiry(), {})
        with repo._locked():
            new = repo._latest_root_version() == 0
            for role in ROLES:
                key_path = keys_dir / f"{role}.pem"
                if new and not key_path.exists():
                    signer = CryptoSigner.generate_ed25519()
                    _atomic_write(key_path, signer.private_bytes, mode=0o600)
                if key_path.exists():
                    repo._signers[role] = _load_signer(key_path)
                elif role != Root.type:
                    # A fresh key here would sign metadata no device trusts.
                    raise FleetError(
                        f"{key_path} is missing; restore it, or rotate the {role} key with a new root",
                        500,
                    )
            if new:
                repo._create(now)
        return repo

    def _create(self, now: float) -> None:
        root = Root(expires=_expires(now, self.expiry.root_s), consistent_snapshot=True)
        for role in ROLES:
            root.add_key(self._signers[role].public_key, role)
        targets = Targets(expires=_expires(now, self.expiry.targets_s))
        snapshot = Snapshot(expires=_expires(now, self.expiry.snapshot_s))
        timestamp = Timestamp(expires=_expires(now, self.expiry.timestamp_s))
        self._write(root)
        self._write(targets)
        self._write(snapshot)
        self._write(timestamp)

    # --- reading and writing metadata ----------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, open(self.directory / ".lock", "a+b") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def _latest_root_version(self) -> int:
        versions = [
            int(m.group(1))
            for p in (self._metadata_dir.iterdir() if self._metadata_dir.is_dir() else [])
            if (m := _METADATA_NAME.match(p.name)) and m.group(1) and m.group(2) == "root"
        ]
        return max(versions, default=0)

    def _read(self, role: str, version: int | None, kind: type[_S]) -> Metadata[_S]:
        name = f"{role}.json" if version is None else f"{version}.{role}.json"
        metadata = Metadata.from_bytes((self._metadata_dir / name).read_bytes())
        if not isinstance(metadata.signed, kind):
            raise FleetError(
                f"{self._metadata_dir / name}: not {role} metadata; restore the repository", 500
            )
        return metadata

    def _current(
        self,
    ) -> tuple[Metadata[Root], Metadata[Targets], Metadata[Snapshot], Metadata[Timestamp]]:
        timestamp = self._read(Timestamp.type, None, Timestamp)
        snapshot = self._read(Snapshot.type, timestamp.signed.snapshot_meta.version, Snapshot)
        targets = self._read(Targets.type, snapshot.signed.meta["targets.json"].version, Targets)
        root = self._read(Root.type, self._latest_root_version(), Root)
        return root, targets, snapshot, timestamp

    def _write(self, signed: Signed) -> Metadata[Any]:
        metadata: Metadata[Any] = Metadata(signed)
        metadata.sign(self._signers[signed.type])
        data = metadata.to_bytes(_SERIALIZER)
        name = (
            f"{signed.type}.json"
            if signed.type == Timestamp.type
            else f"{signed.version}.{signed.type}.json"
        )
        _atomic_write(self._metadata_dir / name, data)
        return metadata

    def _commit(
        self, now: float, targets: Targets | None, snapshot: Snapshot, timestamp: Timestamp
    ) -> None:
        """Write a new targets (optional), snapshot and timestamp, in that order."""
        if targets is not None:
            targets.version += 1
            targets.expires = _expires(now, self.expiry.targets_s)
            self._write(targets)
            snapshot.meta["targets.json"] = MetaFile(version=targets.version)
        snapshot.version += 1
        snapshot.expires = _expires(now, self.expiry.snapshot_s)
        self._write(snapshot)
        timestamp.snapshot_meta = MetaFile(version=snapshot.version)
        timestamp.version += 1
        timestamp.expires = _expires(now, self.expiry.timestamp_s)
        self._write(timestamp)

    # --- publishing ----------------------------------------------------------------------

    def publish(
        self,
        bundle: Path,
        name: str,
        version: int,
        now: float,
        manifest: dict[str, Any] | None = None,
    ) -> ArtifactInfo:
        """Sign ``bundle`` (a ``fleet.bundle.pack`` tar) into the repository as
        ``<name>/<version>.tar``. Publishing the same bytes again returns the same answer;
        different bytes under an existing (name, version) are a FleetError 409."""
        bundle = Path(bundle)
        artifact_id = f"{name}-v{version}"
        if (
            not is_name(name)
            or not isinstance(version, int)
            or version < 1
            or not is_name(artifact_id)
        ):
            raise FleetError(
                f"artifact {name!r} version {version!r}: use a name of letters, digits, '.', '_', '-' and a version >= 1",
                400,
            )
        length = bundle.stat().st_size
        with open(bundle, "rb") as stream:
            sha256 = hashlib.file_digest(stream, "sha256").hexdigest()
        files = bundle_mod.bundle_files(bundle)  # refuses what unpack would refuse
        if manifest is None:
            manifest = bundle_mod.read_manifest(bundle)
        target_path = f"{name}/{version}.tar"
        with self._locked():
            _root, targets_md, snapshot_md, timestamp_md = self._current()
            targets = targets_md.signed
            existing = targets.targets.get(target_path)
            if existing is not None:
                if existing.hashes.get("sha256") == sha256 and existing.length == length:
                    return self._info(existing, manifest)
                raise FleetError(
                    f"artifact {artifact_id} exists with different bytes; publish a new version instead",
                    409,
                )
            stored = self._targets_dir / name / f"{sha256}.{version}.tar"
            stored.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=stored.parent, prefix=".upload.", suffix=".tmp")
            os.close(fd)
            try:
                shutil.copyfile(bundle, tmp_name)
                os.replace(tmp_name, stored)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
            # Canonical JSON has no floats: whole seconds.
            custom = {"files": files, "name": name, "version": version, "created_at": int(now)}
            target = TargetFile(
                length, {"sha256": sha256}, target_path, unrecognized_fields={"custom": custom}
            )
            targets.targets[target_path] = target
            self._commit(now, targets, snapshot_md.signed, timestamp_md.signed)
        return self._info(target, manifest)

    @staticmethod
    def _info(target: TargetFile, manifest: dict[str, Any] | None) -> ArtifactInfo:
        custom = target.custom
        ref = ArtifactRef(
            artifact_id=f"{custom['name']}-v{custom['version']}",
            name=custom["name"],
            version=custom["version"],
            target_path=target.path,
            length=target.length,
            sha256=target.hashes["sha256"],
        )
        return ArtifactInfo(
            ref=ref,
            created_at=float(custom["created_at"]),
            files=dict(custom["files"]),
            manifest=manifest or {},
        )

    def artifacts(self) -> list[ArtifactInfo]:
        """Every artifact in the current signed targets, by target path."""
        _root, targets, _snapshot, _timestamp = self._current()
        return [self._info(t, None) for _p, t in sorted(targets.signed.targets.items())]

    # --- keeping metadata fresh ----------------------------------------------------------

    def refresh(self, now: float, *, force: bool = False) -> bool:
        """Re-sign any role within half its lifetime of expiry (the control plane calls this
        every minute). ``force`` re-signs targets, snapshot and timestamp regardless (after a
        key rotation). Returns True when something was re-signed."""
        with self._locked():
            root_md, targets_md, snapshot_md, timestamp_md = self._current()

            def stale(signed: Signed) -> bool:
                if force and signed.type != Root.type:
                    return True
                left_s = signed.expires.timestamp() - now
                return left_s < self.expiry.for_role(signed.type) / 2

            changed = False
            # Root kept offline (no keys/root.pem): a new root is the operator's step.
            if Root.type in self._signers and stale(root_md.signed):
                # Same keys, new expiry.
                root_md.signed.version += 1
                root_md.signed.expires = _expires(now, self.expiry.root_s)
                self._write(root_md.signed)
                changed = True
            if stale(targets_md.signed) or stale(snapshot_md.signed):
                targets = targets_md.signed if stale(targets_md.signed) else None
                self._commit(now, targets, snapshot_md.signed, timestamp_md.signed)
                changed = True
            elif stale(timestamp_md.signed):
                timestamp = timestamp_md.signed
                timestamp.version += 1
                timestamp.expires = _expires(now, self.expiry.timestamp_s)
                self._write(timestamp)
                changed = True
            return changed

    # --- serving -------------------------------------------------------------------------

    def metadata_file(self, filename: str) -> Path | None:
        """The file to serve for ``GET …/tuf/metadata/{filename}``; None for anything the
        repository did not write (the API answers 404)."""
        match = _METADATA_NAME.match(filename)
        if match is None:
            return None
        if match.group(2) == "root" and match.group(1) is None:
            version = self._latest_root_version()
            path = self._metadata_dir / f"{version}.root.json"
        else:
            path = self._metadata_dir / filename
        return path if path.is_file() else None

    def metadata_bundle(self, from_root: int) -> tuple[list[tuple[str, bytes]], list[str]]:
        """What a device's refresh from trusted root ``from_root - 1`` fetches, read without
        the lock as the per-file route reads it: (files, absent root names) for
        fleet/tuf_bundle.py. Roots ``from_root`` on (at most MAX_BUNDLED_ROOTS; the next
        version marked absent once the chain ends), then timestamp.json and the snapshot
        and targets it leads to. A file that cannot be read ends the list: the device
        fetches what is missing per file."""
        files: list[tuple[str, bytes]] = []
        latest = self._latest_root_version()
        last = min(latest, from_root + MAX_BUNDLED_ROOTS - 1)
        try:
            for version in range(from_root, last + 1):
                name = f"{version}.root.json"
                files.append((name, (self._metadata_dir / name).read_bytes()))
        except OSError:
            return files, []
        absent = [f"{max(from_root, latest + 1)}.root.json"] if last == latest else []
        try:
            name = "timestamp.json"
            for role in ("snapshot", "targets", ""):
                data = (self._metadata_dir / name).read_bytes()
                files.append((name, data))
                if role:  # the version the file just read names for the next role
                    meta = json.loads(data)["signed"]["meta"][f"{role}.json"]
                    name = f"{int(meta['version'])}.{role}.json"
        except (OSError, ValueError, KeyError, TypeError):
            pass  # the device fetches the rest per file; its TUF client judges either way
        return files, absent

    def target_file(self, target_path: str) -> Path | None:
        """The bundle to serve for ``GET …/tuf/targets/{target_path}``, either
        ``name/version.tar`` or the consistent-snapshot ``name/<sha256>.version.tar`` that
        ngclient asks for; None for anything else."""
        match = _TARGET_NAME.match(target_path)
        if match is None:
            return None
        name, sha256, version = match.groups()
        if sha256 is None:
            _root, targets, _snapshot, _timestamp = self._current()
            target = targets.signed.targets.get(f"{name}/{version}.tar")
            if target is None:
                return None
            sha256 = target.hashes["sha256"]
        path = self._targets_dir / name / f"{sha256}.{version}.tar"
        return path if path.is_file() else None

    def root_json(self) -> bytes:
        """The latest signed root: what a device is provisioned with as its trust anchor."""
        return (self._metadata_dir / f"{self._latest_root_version()}.root.json").read_bytes()

    def signer(self, role: str) -> CryptoSigner:
        """The role's signer (tests and key rotation use it; never serve it)."""
        if role not in self._signers:
            raise FleetError(
                f"no {role} key on this control plane (kept offline); sign with it there", 500
            )
        return self._signers[role]
