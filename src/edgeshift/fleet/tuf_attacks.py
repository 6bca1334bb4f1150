"""TUF and bundle attack cases as data: each builds a real repository, attacks the device's
view of it, and must be refused with its expected error. tests/fleet/test_tuf_attacks.py runs
them all; benchmarks/fleet.py imports ``attack_cases`` and ``run_case`` to print the table.

The transport is an in-process fetcher over the repository's own files
(``RepositoryFetcher``); an attack swaps what it answers for chosen URLs.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from edgeshift.errors import ArtifactVerificationError
from edgeshift.fleet import bundle, tuf_bundle
from edgeshift.fleet.schema import ArtifactRef
from edgeshift.fleet.tuf_bundle import BundlingFetcher
from edgeshift.fleet.tuf_client import ArtifactVerifier
from edgeshift.fleet.tuf_repo import TufExpiry, TufRepository

BASE_URL = "http://cp.invalid/v1/device/tuf"
_DAY_S = 24 * 3600.0


class RepositoryFetcher(BundlingFetcher):
    """Serves a TufRepository in process, as the control plane's routes would; ``overrides``
    maps a URL suffix (e.g. "timestamp.json") to the bytes (or chunk iterator factory) an
    attacker answers instead. ``bundled``: a refresh's metadata comes in one bundle, as the
    agent fetches it (fleet/tuf_bundle.py), the attacker's overrides in it."""

    def __init__(self, repo: TufRepository, base_url: str = BASE_URL, bundled: bool = False):
        super().__init__(bundles=bundled)
        self.repo = repo
        self.base_url = base_url.rstrip("/")
        self.metadata_url = f"{self.base_url}/metadata/"
        self.overrides: dict[str, bytes | Callable[[], Iterator[bytes]]] = {}

    def _fetch_file(self, url: str) -> Iterator[bytes]:
        for suffix, answer in self.overrides.items():
            if url.endswith("/" + suffix):
                return answer() if callable(answer) else iter([answer])
        rest = url.removeprefix(self.base_url + "/")
        kind, _sep, name = rest.partition("/")
        path = self.repo.metadata_file(name) if kind == "metadata" else self.repo.target_file(name)
        if path is None:
            raise tuf_exceptions.DownloadHTTPError(f"404 {url}", 404)
        return iter([path.read_bytes()])

    def _fetch_bundle(self, from_root: int) -> bytes:
        files, absent = self.repo.metadata_bundle(from_root)
        answers = dict(files)
        for name, answer in self.overrides.items():
            if not tuf_bundle.is_metadata_name(name):
                continue  # a target: fetched on its own
            if callable(answer):  # endless: as much as makes the bundle too large
                answer = _past(answer(), tuf_bundle.MAX_BUNDLE_BYTES)
            answers[name] = answer
        return tuf_bundle.encode(
            list(answers.items()), [name for name in absent if name not in answers]
        )


def _past(chunks: Iterator[bytes], limit_bytes: int) -> bytes:
    """The chunks up to the first that takes them past LIMIT_BYTES."""
    taken: list[bytes] = []
    have = 0
    for chunk in chunks:
        taken.append(chunk)
        have += len(chunk)
        if have > limit_bytes:
            break
    return b"".join(taken)


@dataclass
class AttackWorld:
    """A repository with one published artifact and a device that trusted it once."""

    workdir: Path
    now: float
    repo: TufRepository
    fetcher: RepositoryFetcher
    verifier: ArtifactVerifier
    ref: ArtifactRef
    bundle_path: Path
    files: dict[str, str]
    saved: dict[str, bytes] = field(default_factory=dict)

    def metadata(self, name: str) -> bytes:
        path = self.repo.metadata_file(name)
        assert path is not None, name
        return path.read_bytes()

    def current(self, role: str) -> tuple[str, Metadata[Any]]:
        """(file name, metadata) of the role's current version."""
        timestamp = Metadata[Timestamp].from_bytes(self.metadata("timestamp.json"))
        if role == Timestamp.type:
            return "timestamp.json", timestamp
        snapshot_name = f"{timestamp.signed.snapshot_meta.version}.snapshot.json"
        snapshot = Metadata[Snapshot].from_bytes(self.metadata(snapshot_name))
        if role == Snapshot.type:
            return snapshot_name, snapshot
        targets_name = f"{snapshot.signed.meta['targets.json'].version}.targets.json"
        return targets_name, Metadata.from_bytes(self.metadata(targets_name))

    def new_verifier(self) -> ArtifactVerifier:
        return ArtifactVerifier(self.verifier.metadata_dir, BASE_URL, self.fetcher)


def make_model_dir(directory: Path, size_bytes: int = 4096, seed: int = 1) -> Path:
    """A small stand-in for an optimize output directory (model + manifest.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    block = bytes((seed * 7 + i) % 251 for i in range(4096))
    (directory / "model.onnx").write_bytes((block * (size_bytes // len(block) + 1))[:size_bytes])
    (directory / "manifest.json").write_text(json.dumps({"model": "model.onnx", "seed": seed}))
    return directory


def build_world(
    workdir: Path,
    *,
    now: float | None = None,
    expiry: TufExpiry | None = None,
    bundled: bool = False,
) -> AttackWorld:
    """Publish v1 of a model, let the device trust it once, then publish v2 (so there is a
    history to roll back to). The device has refreshed at the v1 state."""
    now = time.time() if now is None else now
    repo = TufRepository.open(workdir / "cp" / "tuf", now, expiry=expiry)
    device_dir = workdir / "device" / "tuf"
    device_dir.mkdir(parents=True)
    (device_dir / "root.json").write_bytes(repo.root_json())
    fetcher = RepositoryFetcher(repo, bundled=bundled)
    bundle_path = workdir / "m-1.tar"
    files = bundle.pack(make_model_dir(workdir / "model1", seed=1), bundle_path)
    info = repo.publish(bundle_path, "m", 1, now)
    verifier = ArtifactVerifier(device_dir, BASE_URL, fetcher)
    verifier.refresh()
    world = AttackWorld(workdir, now, repo, fetcher, verifier, info.ref, bundle_path, files)
    for role in (Timestamp.type, Snapshot.type, Targets.type):
        name, _md = world.current(role)
        world.saved[role] = world.metadata(name)
    bundle.pack(make_model_dir(workdir / "model2", seed=2), workdir / "m-2.tar")
    repo.publish(workdir / "m-2.tar", "m", 2, now + 1)
    return world


def _resign(
    world: AttackWorld, role: str, signer: CryptoSigner, edit: Callable[[Any], None]
) -> None:
    """Serve the role's current metadata edited and re-signed by ``signer`` (an attacker's
    key, or a stolen online key)."""
    name, metadata = world.current(role)
    edit(metadata.signed)
    metadata.signatures.clear()
    metadata.sign(signer)
    world.fetcher.overrides[name] = metadata.to_bytes(JSONSerializer(compact=True))


# --- the attacks: each returns normally only if the attack was NOT refused ------------------


def _tampered_target(world: AttackWorld) -> None:
    target = world.verifier.target(world.ref)
    tampered = world.workdir / "tampered.tar"
    data = bytearray(world.bundle_path.read_bytes())
    data[600] ^= 0xFF
    tampered.write_bytes(bytes(data))
    world.verifier.check_bundle(tampered, target)


def _endless_target(world: AttackWorld) -> None:
    target = world.verifier.target(world.ref)
    world.fetcher.overrides[target.download_path] = lambda: iter([b"\0" * 65536] * 10_000)
    world.verifier.download(target, world.workdir / "endless.tar")


def _endless_timestamp(world: AttackWorld) -> None:
    world.fetcher.overrides["timestamp.json"] = lambda: iter([b" " * 65536] * 10_000)
    world.new_verifier().refresh()


def _forged_targets(world: AttackWorld) -> None:
    attacker = CryptoSigner.generate_ed25519()
    _resign(world, Targets.type, attacker, lambda signed: signed.targets.clear())
    world.new_verifier().refresh()


def _forged_timestamp(world: AttackWorld) -> None:
    attacker = CryptoSigner.generate_ed25519()
    _resign(world, Timestamp.type, attacker, lambda signed: None)
    world.new_verifier().refresh()


def _forged_file_manifest(world: AttackWorld) -> None:
    # The signature covers custom["files"]: editing it without the targets key breaks it.
    name, _metadata = world.current(Targets.type)
    raw = json.loads(world.metadata(name))
    for target in raw["signed"]["targets"].values():
        target["custom"]["files"]["model.onnx"] = "0" * 64
    world.fetcher.overrides[name] = json.dumps(raw).encode()
    world.new_verifier().refresh()


def _expired_timestamp(world: AttackWorld) -> None:
    # Freeze: the attacker keeps answering with a timestamp that has since expired.
    fresh = build_world(
        world.workdir / "frozen", now=time.time() - 3 * _DAY_S, bundled=world.fetcher.bundles
    )
    fresh.new_verifier().refresh()


def _rolled_back_timestamp(world: AttackWorld) -> None:
    world.new_verifier().refresh()  # the device now trusts the newer timestamp
    world.fetcher.overrides["timestamp.json"] = world.saved[Timestamp.type]
    world.new_verifier().refresh()


def _rolled_back_snapshot(world: AttackWorld) -> None:
    name, _md = world.current(Snapshot.type)
    world.fetcher.overrides[name] = world.saved[Snapshot.type]
    world.new_verifier().refresh()


def _rolled_back_targets(world: AttackWorld) -> None:
    name, _md = world.current(Targets.type)
    world.fetcher.overrides[name] = world.saved[Targets.type]
    world.new_verifier().refresh()


def _rolled_back_targets_stolen_online_keys(world: AttackWorld) -> None:
    # Even with the snapshot and timestamp keys, older targets than the device trusts are refused.
    world.new_verifier().refresh()
    old_targets_version = Metadata.from_bytes(world.saved[Targets.type]).signed.version

    def point_back(signed: Snapshot) -> None:
        signed.meta["targets.json"].version = old_targets_version
        signed.version += 1

    _resign(world, Snapshot.type, world.repo.signer(Snapshot.type), point_back)
    snapshot_name, snapshot = world.current(Snapshot.type)
    new_name = f"{snapshot.signed.version + 1}.snapshot.json"
    world.fetcher.overrides[new_name] = world.fetcher.overrides.pop(snapshot_name)

    def bump(signed: Timestamp) -> None:
        signed.snapshot_meta.version += 1
        signed.version += 1

    _resign(world, Timestamp.type, world.repo.signer(Timestamp.type), bump)
    world.new_verifier().refresh()


def _mix_and_match(world: AttackWorld) -> None:
    # A fresh device is shown the old timestamp and snapshot with the newer targets (each
    # validly signed, from different repository states).
    fresh_dir = world.workdir / "fresh-device"
    fresh_dir.mkdir()
    (fresh_dir / "root.json").write_bytes(world.repo.root_json())
    old_targets_name = (
        f"{Metadata.from_bytes(world.saved[Targets.type]).signed.version}.targets.json"
    )
    new_targets_name, _md = world.current(Targets.type)
    world.fetcher.overrides["timestamp.json"] = world.saved[Timestamp.type]
    world.fetcher.overrides[old_targets_name] = world.metadata(new_targets_name)
    ArtifactVerifier(fresh_dir, BASE_URL, world.fetcher).refresh()


def _root_rotation_bad_threshold(world: AttackWorld) -> None:
    # A new root that raises the threshold to 2 but carries one signature.
    root_md = Metadata[Root].from_bytes(world.repo.root_json())
    root = root_md.signed
    root.version += 1
    extra = CryptoSigner.generate_ed25519()
    root.add_key(extra.public_key, Root.type)
    root.roles[Root.type].threshold = 2
    root_md.signatures.clear()
    root_md.sign(world.repo.signer(Root.type))
    world.fetcher.overrides[f"{root.version}.root.json"] = root_md.to_bytes(
        JSONSerializer(compact=True)
    )
    world.new_verifier().refresh()


def _root_rotation_unsigned_by_old(world: AttackWorld) -> None:
    # A new root signed only by the attacker's new root key, not by the trusted one.
    root_md = Metadata[Root].from_bytes(world.repo.root_json())
    root = root_md.signed
    root.version += 1
    attacker = CryptoSigner.generate_ed25519()
    for keyid in list(root.roles[Root.type].keyids):
        root.revoke_key(keyid, Root.type)
    root.add_key(attacker.public_key, Root.type)
    root_md.signatures.clear()
    root_md.sign(attacker)
    world.fetcher.overrides[f"{root.version}.root.json"] = root_md.to_bytes(
        JSONSerializer(compact=True)
    )
    world.new_verifier().refresh()


def _target_not_in_metadata(world: AttackWorld) -> None:
    ref = world.ref.model_copy(
        update={"target_path": "m/99.tar", "version": 99, "artifact_id": "m-v99"}
    )
    world.verifier.target(ref)


def _ref_disagrees(world: AttackWorld) -> None:
    world.verifier.target(world.ref.model_copy(update={"sha256": "0" * 64}))


def _evil_tar(world: AttackWorld, add: Callable[[tarfile.TarFile], None]) -> None:
    evil = world.workdir / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        add(tar)
    bundle.unpack(evil, world.workdir / "slot", world.files, max_bytes=1 << 20)


def _add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, to: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = to
    tar.addfile(info)


def _bundle_dotdot(world: AttackWorld) -> None:
    _evil_tar(world, lambda tar: _add_file(tar, "../escape.onnx"))


def _bundle_absolute(world: AttackWorld) -> None:
    _evil_tar(world, lambda tar: _add_file(tar, "/tmp/escape.onnx"))


def _bundle_symlink(world: AttackWorld) -> None:
    _evil_tar(world, lambda tar: _add_link(tar, "model.onnx", "/etc/passwd", tarfile.SYMTYPE))


def _bundle_hardlink(world: AttackWorld) -> None:
    _evil_tar(world, lambda tar: _add_link(tar, "model.onnx", "/etc/passwd", tarfile.LNKTYPE))


def _bundle_extra_file(world: AttackWorld) -> None:
    with tarfile.open(world.bundle_path) as src:
        members = [(m, src.extractfile(m).read()) for m in src]  # type: ignore[union-attr]

    def add(tar: tarfile.TarFile) -> None:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
        _add_file(tar, "extra.py", b"import os")

    _evil_tar(world, add)


def _bundle_missing_file(world: AttackWorld) -> None:
    with tarfile.open(world.bundle_path) as src:
        members = [(m, src.extractfile(m).read()) for m in src if m.name != "model.onnx"]  # type: ignore[union-attr]

    def add(tar: tarfile.TarFile) -> None:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))

    _evil_tar(world, add)


def _bundle_too_large(world: AttackWorld) -> None:
    # Declared size past the limit: refused before a byte is written.
    world.files["model.onnx"] = "0" * 64
    _evil_tar(world, lambda tar: _add_file(tar, "model.onnx", b"y" * (2 << 20)))


class AttackCase(NamedTuple):
    name: str
    attack: Callable[[AttackWorld], None]
    expected: type[Exception]
    reason: str  # a fragment the one-line message must contain


def attack_cases() -> list[AttackCase]:
    """Every attack the device must refuse, with the error it must refuse it with."""
    refused = ArtifactVerificationError
    return [
        AttackCase("tampered target bytes", _tampered_target, refused, "sha256"),
        AttackCase(
            "endless target data", _endless_target, refused, "longer than the signed length"
        ),
        AttackCase(
            "endless timestamp data", _endless_timestamp, refused, "longer than the signed length"
        ),
        AttackCase("targets signed by a non-root key", _forged_targets, refused, "not signed"),
        AttackCase("timestamp signed by a non-root key", _forged_timestamp, refused, "not signed"),
        AttackCase("edited file manifest", _forged_file_manifest, refused, "not signed"),
        AttackCase("expired timestamp (freeze)", _expired_timestamp, refused, "expired"),
        AttackCase("rolled-back timestamp", _rolled_back_timestamp, refused, "version"),
        AttackCase("rolled-back snapshot", _rolled_back_snapshot, refused, "version"),
        AttackCase("rolled-back targets", _rolled_back_targets, refused, "version"),
        AttackCase(
            "rolled-back targets, stolen online keys",
            _rolled_back_targets_stolen_online_keys,
            refused,
            "version",
        ),
        AttackCase("mix-and-match snapshot and targets", _mix_and_match, refused, "version"),
        AttackCase(
            "root rotation below threshold", _root_rotation_bad_threshold, refused, "not signed"
        ),
        AttackCase(
            "root rotation not signed by old root",
            _root_rotation_unsigned_by_old,
            refused,
            "not signed",
        ),
        AttackCase(
            "target not in the metadata",
            _target_not_in_metadata,
            refused,
            "not in the signed targets",
        ),
        AttackCase("ref disagrees with signed target", _ref_disagrees, refused, "disagree"),
        AttackCase("bundle member with '..'", _bundle_dotdot, refused, ".."),
        AttackCase("bundle member with absolute path", _bundle_absolute, refused, "absolute"),
        AttackCase("bundle symlink member", _bundle_symlink, refused, "link"),
        AttackCase("bundle hardlink member", _bundle_hardlink, refused, "link"),
        AttackCase(
            "bundle with an extra file", _bundle_extra_file, refused, "not in the signed manifest"
        ),
        AttackCase("bundle with a missing file", _bundle_missing_file, refused, "missing"),
        AttackCase("bundle past the size limit", _bundle_too_large, refused, "bytes"),
    ]


def run_case(case: AttackCase, workdir: Path, *, bundled: bool = False) -> str:
    """Build a world in ``workdir``, run the attack, and return the refusal's message.
    Raises AssertionError when the attack was not refused as expected."""
    world = build_world(workdir, bundled=bundled)
    try:
        case.attack(world)
    except case.expected as exc:
        message = str(exc)
        if case.reason not in message or "\n" in message:
            raise AssertionError(
                f"{case.name}: refused with {message!r}, expected {case.reason!r}"
            ) from exc
        return message
    except Exception as exc:
        raise AssertionError(f"{case.name}: raised {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"{case.name}: NOT refused")
