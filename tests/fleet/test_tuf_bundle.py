"""A TUF refresh's metadata in one request (fleet/tuf_bundle.py): the wire format, the
repository's bundle, the fetcher's rules (each bundled file answers one fetch, anything else or
any bad bundle goes per file), and the real route and agent fetcher over a real control plane.
Every TUF attack also runs through bundles (tests/fleet/test_tuf_attacks.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tuf.api import exceptions as tuf_exceptions

from edgeshift.fleet import bundle, tuf_bundle
from edgeshift.fleet.agent.transport import SignedFetcher
from edgeshift.fleet.auth import sign_headers
from edgeshift.fleet.client import OperatorClient
from edgeshift.fleet.server import FleetServerThread, FleetSettings
from edgeshift.fleet.tuf_attacks import make_model_dir
from edgeshift.fleet.tuf_client import ArtifactVerifier
from edgeshift.fleet.tuf_repo import TufRepository

from .test_api import enrol_device, publish

META = "http://cp.invalid/v1/device/tuf/metadata/"


# --- wire format ---------------------------------------------------------------------------


def test_encode_decode_round_trip_keeps_the_exact_bytes() -> None:
    files = [("2.root.json", b'{"a": 1}\n'), ("timestamp.json", b""), ("3.targets.json", b"\xff")]
    got, absent = tuf_bundle.decode(tuf_bundle.encode(files, ["3.root.json"]))
    assert got == dict(files) and absent == {"3.root.json"}


@pytest.mark.parametrize(
    "data",
    [
        b"no index line",
        b"[]\n",
        b'{"files": [["../keys/root.pem", 1]]}\nx',
        b'{"files": [["timestamp.json", 1], ["timestamp.json", 1]]}\nxy',
        b'{"files": [["timestamp.json", 5]]}\nxy',
        b'{"files": [["timestamp.json", 1]]}\nxy',
        b'{"files": [["timestamp.json", -1]]}\n',
        b'{"files": [], "absent": ["timestamp.json"]}\n',
        b'{"files": [["2.root.json", 1]], "absent": ["2.root.json"]}\nx',
    ],
)
def test_decode_refuses_a_malformed_bundle(data: bytes) -> None:
    with pytest.raises(ValueError):
        tuf_bundle.decode(data)


# --- the fetcher's rules -------------------------------------------------------------------


class FakeFetcher(tuf_bundle.BundlingFetcher):
    """Per-file answers from FILES; the bundle from BUNDLE (bytes or an exception to raise)."""

    def __init__(self, files: dict[str, bytes], bundle: bytes | Exception) -> None:
        super().__init__()
        self.metadata_url = META
        self.files = files
        self.bundle = bundle
        self.calls: list[str] = []

    def _fetch_file(self, url: str) -> Iterator[bytes]:
        name = url.removeprefix(META)
        self.calls.append(name)
        if name not in self.files:
            raise tuf_exceptions.DownloadHTTPError(f"404 {url}", 404)
        return iter([self.files[name]])

    def _fetch_bundle(self, from_root: int) -> bytes:
        self.calls.append(f"bundle?root={from_root}")
        if isinstance(self.bundle, Exception):
            raise self.bundle
        return self.bundle


def fetch(fetcher: FakeFetcher, name: str) -> bytes:
    return fetcher.download_bytes(META + name, 1 << 20)


SERVED = {"timestamp.json": b"ts-new", "4.snapshot.json": b"snap", "4.targets.json": b"tgt"}
A_BUNDLE = tuf_bundle.encode(
    [("timestamp.json", b"ts"), ("3.snapshot.json", b"snap"), ("3.targets.json", b"tgt")],
    ["2.root.json"],
)


def test_a_refresh_is_one_bundle_and_each_file_answers_once() -> None:
    fetcher = FakeFetcher(SERVED, A_BUNDLE)
    with pytest.raises(tuf_exceptions.DownloadHTTPError) as no_root:
        fetch(fetcher, "2.root.json")
    assert no_root.value.status_code == 404  # what ngclient reads as "no newer root"
    assert fetch(fetcher, "timestamp.json") == b"ts"
    assert fetch(fetcher, "3.snapshot.json") == b"snap"
    assert fetch(fetcher, "3.targets.json") == b"tgt"
    assert fetcher.calls == ["bundle?root=2"]
    # Used up: a second ask goes per file; a name the bundle never had goes per file.
    assert fetch(fetcher, "timestamp.json") == b"ts-new"
    assert fetch(fetcher, "4.snapshot.json") == b"snap"
    assert fetcher.calls == ["bundle?root=2", "timestamp.json", "4.snapshot.json"]
    # The next refresh starts from its root probe again: a new bundle.
    with pytest.raises(tuf_exceptions.DownloadHTTPError):
        fetch(fetcher, "2.root.json")
    assert fetcher.calls[-1] == "bundle?root=2" and fetcher.bundles_fetched == 2


@pytest.mark.parametrize(
    "bad",
    [
        b"garbage",
        b"x" * (tuf_bundle.MAX_BUNDLE_BYTES + 1),
        tuf_exceptions.DownloadHTTPError("503", 503),
    ],
    ids=["malformed", "too large", "refused"],
)
def test_a_bad_bundle_falls_back_to_files(bad: bytes | Exception) -> None:
    fetcher = FakeFetcher({"2.root.json": b"root2", **SERVED}, bad)
    assert fetch(fetcher, "2.root.json") == b"root2"
    assert fetch(fetcher, "timestamp.json") == b"ts-new"
    assert fetcher.calls == ["bundle?root=2", "2.root.json", "timestamp.json"]
    assert fetcher.bundles  # tried again at the next refresh


def test_a_control_plane_without_the_route_is_asked_per_file_from_then_on() -> None:
    fetcher = FakeFetcher(SERVED, tuf_exceptions.DownloadHTTPError("404", 404))
    for _ in range(2):
        with pytest.raises(tuf_exceptions.DownloadHTTPError):
            fetch(fetcher, "2.root.json")
    assert fetcher.calls == ["bundle?root=2", "2.root.json", "2.root.json"]
    assert not fetcher.bundles


def test_a_link_that_is_down_fails_the_fetch_as_a_file_would() -> None:
    fetcher = FakeFetcher(SERVED, httpx.ConnectError("down"))
    with pytest.raises(tuf_exceptions.DownloadError) as failed:
        fetch(fetcher, "2.root.json")
    assert not isinstance(failed.value, tuf_exceptions.DownloadHTTPError)
    assert fetcher.calls == ["bundle?root=2"]  # no second wait on the same dead link


def test_a_held_bundle_is_never_served_to_a_later_refresh(monkeypatch) -> None:
    fetcher = FakeFetcher(SERVED, A_BUNDLE)
    with pytest.raises(tuf_exceptions.DownloadHTTPError):
        fetch(fetcher, "2.root.json")
    later = time.monotonic() + tuf_bundle.MAX_AGE_S + 1
    monkeypatch.setattr(tuf_bundle.time, "monotonic", lambda: later)
    assert fetch(fetcher, "timestamp.json") == b"ts-new"  # the newest, not the held one


# --- the repository's bundle ---------------------------------------------------------------


def test_the_repository_bundles_what_the_file_route_serves(tmp_path: Path) -> None:
    now = time.time()
    repo = TufRepository.open(tmp_path / "tuf", now)
    bundle.pack(make_model_dir(tmp_path / "m"), tmp_path / "m.tar")
    repo.publish(tmp_path / "m.tar", "m", 1, now)
    files, absent = repo.metadata_bundle(2)
    names = [name for name, _data in files]
    assert names == ["timestamp.json", "2.snapshot.json", "2.targets.json"]
    assert absent == ["2.root.json"]
    for name, data in files:
        path = repo.metadata_file(name)
        assert path is not None and path.read_bytes() == data
    # From a root the device already has: that root and on; past the latest: only absent.
    files, absent = repo.metadata_bundle(1)
    assert files[0] == ("1.root.json", repo.root_json()) and absent == ["2.root.json"]
    files, absent = repo.metadata_bundle(9)
    assert absent == ["9.root.json"] and files[0][0] == "timestamp.json"


def test_a_rotated_root_chain_is_bundled_in_order(tmp_path: Path) -> None:
    now = time.time()
    repo = TufRepository.open(tmp_path / "tuf", now)
    for days in (200, 400):  # root within half its year of expiry, re-signed: v2, then v3
        assert repo.refresh(now + days * 24 * 3600.0)
    files, absent = repo.metadata_bundle(2)
    assert [name for name, _data in files][:2] == ["2.root.json", "3.root.json"]
    assert absent == ["4.root.json"]


# --- over a real control plane ---------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path, sqlite_store_url: str) -> Iterator[FleetServerThread]:
    settings = FleetSettings(data_dir=tmp_path / "data", db_url=sqlite_store_url, port=0)
    with FleetServerThread(settings) as server:
        yield server


def test_the_route_answers_a_signed_device_only(fleet: FleetServerThread, tmp_path: Path) -> None:
    device = enrol_device(fleet, "bundler")
    with httpx.Client(base_url=fleet.url, timeout=30) as http:
        path = "/v1/device/tuf/bundle?root=2"
        answer = http.get(path, headers=sign_headers(device.key, device.device_id, "GET", path))
        assert answer.status_code == 200, answer.text
        files, absent = tuf_bundle.decode(answer.content)
        assert absent == {"2.root.json"} and "timestamp.json" in files
        assert http.get(path).status_code == 401
        for bad in ("root=0", "root=x"):
            path = f"/v1/device/tuf/bundle?{bad}"
            refused = http.get(
                path, headers=sign_headers(device.key, device.device_id, "GET", path)
            )
            assert refused.status_code == 400 and set(refused.json()) == {"error"}


def test_an_agent_refresh_is_one_signed_request(fleet: FleetServerThread, tmp_path: Path) -> None:
    with OperatorClient(fleet.url, fleet.operator_token) as operator:
        info = publish(operator, tmp_path, "tiny", 1)
        root = operator.root_json()
    device = enrol_device(fleet, "refresher")
    metadata_dir = tmp_path / "device-tuf"
    metadata_dir.mkdir()
    (metadata_dir / "root.json").write_bytes(root if isinstance(root, bytes) else root.encode())
    fetcher = SignedFetcher(fleet.url, device.device_id, device.key)
    sent: list[str] = []
    real_get = fetcher._get

    def counted(url: str, max_bytes: int | None = None) -> list[bytes]:
        sent.append(url.removeprefix(fleet.url))
        return real_get(url, max_bytes)

    fetcher._get = counted  # type: ignore[method-assign]
    try:
        verifier = ArtifactVerifier(metadata_dir, f"{fleet.url}/v1/device/tuf", fetcher)
        verifier.refresh()
        assert verifier.target(info.ref).sha256 == info.ref.sha256
        assert sent == ["/v1/device/tuf/bundle?root=2"]  # was 4: root probe, ts, snapshot, targets
        verifier.refresh()  # nothing new: still one request
        assert len(sent) == 2
    finally:
        fetcher.close()
    trusted = json.loads((metadata_dir / "timestamp.json").read_bytes())
    assert trusted["signed"]["_type"] == "timestamp"
