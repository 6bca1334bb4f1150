"""The TUF repository (control plane) and the verifier (device), round trip over real HTTP."""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgeshift.errors import ArtifactVerificationError, FleetError
from edgeshift.fleet import bundle
from edgeshift.fleet.tuf_attacks import BASE_URL, RepositoryFetcher, make_model_dir
from edgeshift.fleet.tuf_client import ArtifactVerifier
from edgeshift.fleet.tuf_repo import TufExpiry, TufRepository

DAY_S = 24 * 3600.0


def serve(repo: TufRepository) -> tuple[ThreadingHTTPServer, str]:
    """The control plane's two TUF routes, as plain http.server on 127.0.0.1:0."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            prefix = "/v1/device/tuf/"
            kind, _sep, name = self.path.removeprefix(prefix).partition("/")
            path = None
            if self.path.startswith(prefix):
                path = repo.metadata_file(name) if kind == "metadata" else repo.target_file(name)
            if path is None:
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1/device/tuf"


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    return TufRepository.open(tmp_path / "cp" / "tuf", time.time())


@pytest.fixture
def http_base(repo: TufRepository) -> Iterator[str]:
    server, base = serve(repo)
    yield base
    server.shutdown()
    server.server_close()


def device(tmp_path: Path, repo: TufRepository, base_url: str, fetcher=None) -> ArtifactVerifier:
    metadata_dir = tmp_path / "device" / "tuf"
    metadata_dir.mkdir(parents=True, exist_ok=True)
    if not (metadata_dir / "root.json").exists():
        (metadata_dir / "root.json").write_bytes(repo.root_json())
    return ArtifactVerifier(metadata_dir, base_url, fetcher)


def publish(repo: TufRepository, tmp_path: Path, version: int, now: float | None = None):
    tar = tmp_path / f"m-{version}.tar"
    bundle.pack(make_model_dir(tmp_path / f"model{version}", seed=version), tar)
    return tar, repo.publish(tar, "m", version, time.time() if now is None else now)


def test_round_trip_over_real_http(tmp_path: Path, repo: TufRepository, http_base: str) -> None:
    tar, info = publish(repo, tmp_path, 1)
    assert info.ref.artifact_id == "m-v1"
    assert info.ref.target_path == "m/1.tar"
    assert info.manifest["model"] == "model.onnx"
    assert info.files == bundle.bundle_files(tar)
    verifier = device(tmp_path, repo, http_base)
    verifier.refresh()
    target = verifier.target(info.ref)
    assert (target.name, target.version, target.files) == ("m", 1, info.files)
    fetched = verifier.download(target, tmp_path / "fetched.tar")
    verifier.check_bundle(fetched, target)
    slot = tmp_path / "slot"
    bundle.unpack(fetched, slot, target.files, max_bytes=1 << 30)
    bundle.verify_directory(slot, target.files)
    # A second version published later is seen by the next refresh.
    _tar2, info2 = publish(repo, tmp_path, 2)
    verifier.refresh()
    assert verifier.target(info2.ref).version == 2


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_control_plane_is_503(tmp_path: Path, repo: TufRepository) -> None:
    verifier = device(tmp_path, repo, f"http://127.0.0.1:{closed_port()}/v1/device/tuf")
    with pytest.raises(FleetError) as err:
        verifier.refresh()
    assert err.value.status == 503
    assert not isinstance(err.value, ArtifactVerificationError)


def test_publish_is_idempotent_and_refuses_other_bytes_for_a_version(
    tmp_path: Path, repo: TufRepository
) -> None:
    tar, info = publish(repo, tmp_path, 1)
    assert repo.publish(tar, "m", 1, time.time()).ref == info.ref
    other = tmp_path / "other.tar"
    bundle.pack(make_model_dir(tmp_path / "other", seed=9), other)
    with pytest.raises(FleetError) as err:
        repo.publish(other, "m", 1, time.time())
    assert err.value.status == 409
    with pytest.raises(FleetError, match="version"):
        repo.publish(other, "../m", 1, time.time())
    assert [a.ref.artifact_id for a in repo.artifacts()] == ["m-v1"]


def test_publish_refuses_a_bundle_that_would_not_unpack(
    tmp_path: Path, repo: TufRepository
) -> None:
    import io
    import tarfile

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ArtifactVerificationError, match="escape"):
        repo.publish(evil, "m", 1, time.time())
    assert repo.artifacts() == []


def test_only_files_the_repository_wrote_are_served(tmp_path: Path, repo: TufRepository) -> None:
    _tar, info = publish(repo, tmp_path, 1)
    assert repo.metadata_file("timestamp.json") is not None
    assert repo.metadata_file("1.root.json") is not None
    assert repo.metadata_file("root.json") is not None
    assert repo.target_file("m/1.tar") is not None
    assert repo.target_file(f"m/{info.ref.sha256}.1.tar") is not None
    for bad in (
        "../keys/root.pem",
        "..%2Fkeys",
        "1.root.json/../x",
        "keys/root.pem",
        "0.root.json",
        "",
    ):
        assert repo.metadata_file(bad) is None
    for bad in (
        "../keys/root.pem",
        "m/../../keys/root.pem",
        "/etc/passwd",
        "m/2.tar",
        "m/1.tar/x",
        ".m/1.tar",
    ):
        assert repo.target_file(bad) is None


def test_keys_are_private_and_survive_reopening(tmp_path: Path, repo: TufRepository) -> None:
    for role in ("root", "targets", "snapshot", "timestamp"):
        mode = (repo.directory / "keys" / f"{role}.pem").stat().st_mode
        assert stat.S_IMODE(mode) == 0o600
    root = repo.root_json()
    reopened = TufRepository.open(repo.directory, time.time())
    assert reopened.root_json() == root


def test_refresh_re_signs_only_near_expiry(tmp_path: Path) -> None:
    now = time.time()
    expiry = TufExpiry(
        root_s=40 * DAY_S, targets_s=20 * DAY_S, snapshot_s=4 * DAY_S, timestamp_s=DAY_S
    )
    repo = TufRepository.open(tmp_path / "tuf", now, expiry=expiry)
    fetcher = RepositoryFetcher(repo)
    verifier = device(tmp_path, repo, BASE_URL, fetcher)
    _tar, info = publish(repo, tmp_path, 1, now)
    assert repo.refresh(now + 60) is False
    # 0.6 days on: the timestamp has under half its life left, so it (only) is re-signed.
    assert repo.refresh(now + 0.6 * DAY_S) is True
    assert repo.refresh(now + 0.6 * DAY_S + 60) is False
    # Far on, every role is re-signed (root too: a new root version the device rotates to).
    later = now + 25 * DAY_S
    assert repo.refresh(later) is True
    assert repo.metadata_file("2.root.json") is not None
    verifier.refresh()
    assert verifier.target(info.ref).version == 1


def test_expired_metadata_blocks_new_installs_but_not_the_last_good(tmp_path: Path) -> None:
    then = time.time() - 3 * DAY_S
    repo = TufRepository.open(tmp_path / "tuf", then)
    fetcher = RepositoryFetcher(repo)
    verifier = device(tmp_path, repo, BASE_URL, fetcher)
    tar, info = publish(repo, tmp_path, 1, then)
    # Nothing verified yet and the timestamp is 2 days past expiry: refused.
    with pytest.raises(ArtifactVerificationError, match="expired"):
        verifier.refresh()
    assert verifier.last_verified(info.ref) is None
    # Fresh metadata: the device verifies and installs v1.
    repo.refresh(time.time())
    verifier.refresh()
    target = verifier.target(info.ref)
    slot = tmp_path / "slot"
    bundle.unpack(tar, slot, target.files, max_bytes=1 << 30)
    # Offline, with metadata that cannot be refreshed: the installed slot still checks out.
    offline = ArtifactVerifier(
        verifier.metadata_dir, f"http://127.0.0.1:{closed_port()}/v1/device/tuf"
    )
    with pytest.raises(FleetError):
        offline.refresh()
    remembered = offline.last_verified(info.ref)
    assert remembered == target
    bundle.verify_directory(slot, remembered.files)
    assert offline.last_verified(info.ref.model_copy(update={"sha256": "1" * 64})) is None


def test_publish_from_threads_loses_nothing(tmp_path: Path, repo: TufRepository) -> None:
    tars = []
    for version in range(1, 7):
        tar = tmp_path / f"t{version}.tar"
        bundle.pack(make_model_dir(tmp_path / f"d{version}", seed=version), tar)
        tars.append((version, tar))
    errors: list[BaseException] = []

    def run(version: int, tar: Path) -> None:
        try:
            repo.publish(tar, "m", version, time.time())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in tars]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(a.ref.version for a in repo.artifacts()) == [1, 2, 3, 4, 5, 6]
    verifier = device(tmp_path, repo, BASE_URL, RepositoryFetcher(repo))
    verifier.refresh()
    for info in repo.artifacts():
        verifier.target(info.ref)


def test_rotating_the_targets_key_as_documented(tmp_path: Path) -> None:
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, Root
    from tuf.api.serialization.json import JSONSerializer

    now = time.time()
    repo = TufRepository.open(tmp_path / "tuf", now)
    verifier = device(tmp_path, repo, BASE_URL, RepositoryFetcher(repo))
    _tar, info1 = publish(repo, tmp_path, 1, now)
    verifier.refresh()
    # The operator's steps: a new root (version + 1) naming the new targets key, signed by the
    # current root key; the new private key in keys/targets.pem; reopen and force a re-sign.
    root_md = Metadata[Root].from_bytes(repo.root_json())
    old_keyid = root_md.signed.roles["targets"].keyids[0]
    new_key = CryptoSigner.generate_ed25519()
    root_md.signed.revoke_key(old_keyid, "targets")
    root_md.signed.add_key(new_key.public_key, "targets")
    root_md.signed.version += 1
    root_md.signatures.clear()
    root_md.sign(repo.signer("root"))
    metadata_dir = repo.directory / "metadata"
    (metadata_dir / f"{root_md.signed.version}.root.json").write_bytes(
        root_md.to_bytes(JSONSerializer())
    )
    (repo.directory / "keys" / "targets.pem").write_bytes(new_key.private_bytes)
    reopened = TufRepository.open(repo.directory, now)
    verifier = device(tmp_path, reopened, BASE_URL, RepositoryFetcher(reopened))
    # Between the new root and the first re-sign, targets still carry the old key's signature.
    with pytest.raises(ArtifactVerificationError, match="not signed"):
        verifier.refresh()
    assert reopened.refresh(now, force=True) is True
    verifier.refresh()
    _tar2, info2 = publish(reopened, tmp_path, 2, now + 1)
    verifier.refresh()
    assert verifier.target(info1.ref).version == 1
    assert verifier.target(info2.ref).version == 2


def test_root_key_kept_offline(tmp_path: Path) -> None:
    now = time.time()
    repo = TufRepository.open(tmp_path / "tuf", now)
    (repo.directory / "keys" / "root.pem").unlink()
    reopened = TufRepository.open(repo.directory, now)
    assert not (repo.directory / "keys" / "root.pem").exists()  # no stray new root key
    verifier = device(tmp_path, reopened, BASE_URL, RepositoryFetcher(reopened))
    _tar, info = publish(reopened, tmp_path, 1, now)
    # Far on, the online roles are re-signed; root is left for the operator.
    assert reopened.refresh(now + 200 * DAY_S) is True
    assert reopened.metadata_file("2.root.json") is None
    verifier.refresh()
    assert verifier.target(info.ref).version == 1
    (repo.directory / "keys" / "targets.pem").unlink()
    with pytest.raises(FleetError, match=r"targets.pem is missing"):
        TufRepository.open(repo.directory, now)
