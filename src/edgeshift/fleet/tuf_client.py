"""The device side of TUF: check the control plane's metadata with python-tuf's ngclient
``Updater`` (root -> timestamp -> snapshot -> targets, refusing anything expired, rolled back
or badly signed) and check artifact refs and downloaded bundles against it.

Offline: expiry blocks NEW installs only. Every target this verifier accepted is recorded in
``metadata_dir/verified.json``; ``last_verified`` reads it back without the network or any
expiry check, so an agent whose metadata has expired keeps serving its last-good slot after
``bundle.verify_directory(slot, last_verified(ref).files)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_exceptions
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from edgeshift.errors import ArtifactVerificationError, FleetError
from edgeshift.fleet.schema import ArtifactRef

_CHUNK_BYTES = 1024 * 1024
_VERIFIED_FILE = "verified.json"
# Keep the record of accepted targets small: an agent only ever needs the last few.
_MAX_VERIFIED = 32


@dataclass(frozen=True)
class VerifiedTarget:
    """An artifact as the signed targets metadata describes it."""

    target_path: str
    length: int
    sha256: str
    files: dict[str, str] = field(hash=False)
    name: str
    version: int

    @property
    def artifact_id(self) -> str:
        return f"{self.name}-v{self.version}"

    @property
    def download_path(self) -> str:
        """The path under ``…/tuf/targets/`` to fetch (consistent snapshot: hash-prefixed)."""
        directory, _sep, base = self.target_path.rpartition("/")
        return f"{directory}/{self.sha256}.{base}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _refused(what: str, exc: BaseException) -> ArtifactVerificationError:
    kind = {
        tuf_exceptions.ExpiredMetadataError: "expired",
        tuf_exceptions.BadVersionNumberError: "rolled back or mismatched version",
        tuf_exceptions.UnsignedMetadataError: "not signed by the trusted keys",
        tuf_exceptions.LengthOrHashMismatchError: "length or hash mismatch",
        tuf_exceptions.DownloadLengthMismatchError: "longer than the signed length",
    }
    label = next((v for k, v in kind.items() if isinstance(exc, k)), "refused")
    return ArtifactVerificationError(
        f"TUF {what}: {label} ({_one_line(exc)}); keeping last-good, check the control plane's repository"
    )


class ArtifactVerifier:
    """Checks artifacts against the control plane's TUF metadata.

    ``metadata_dir/root.json`` must hold the trusted root (from ``GET /v1/root.json`` at
    provisioning). ``base_url`` is e.g. ``http://cp:8600/v1/device/tuf``: metadata is fetched
    under ``/metadata/``, targets under ``/targets/``. ``fetcher`` carries the requests (the
    agent passes one that signs them); None uses ngclient's urllib3 fetcher."""

    def __init__(
        self, metadata_dir: Path, base_url: str, fetcher: FetcherInterface | None = None
    ) -> None:
        self.metadata_dir = Path(metadata_dir)
        base = base_url.rstrip("/")
        self.metadata_url = f"{base}/metadata/"
        self.targets_url = f"{base}/targets/"
        self._fetcher = fetcher
        self._updater: Updater | None = None

    def refresh(self) -> None:
        """Fetch and check the latest metadata.

        Raises ArtifactVerificationError when it is expired, rolled back or badly signed, and
        FleetError(503) when the control plane cannot be reached."""
        self._updater = None
        try:
            root_bytes = (self.metadata_dir / "root.json").read_bytes()
        except OSError as exc:
            raise ArtifactVerificationError(
                f"no trusted root at {self.metadata_dir / 'root.json'}; provision it from GET /v1/root.json"
            ) from exc
        try:
            updater = Updater(
                str(self.metadata_dir),
                self.metadata_url,
                target_base_url=self.targets_url,
                fetcher=self._fetcher,
                config=UpdaterConfig(max_root_rotations=32),
                bootstrap=root_bytes,
            )
            updater.refresh()
        except (tuf_exceptions.RepositoryError, tuf_exceptions.DownloadLengthMismatchError) as exc:
            raise _refused("metadata", exc) from exc
        except tuf_exceptions.DownloadError as exc:
            raise FleetError(
                f"TUF metadata unreachable ({_one_line(exc)}); retry when the link is back", 503
            ) from exc
        except ValueError as exc:  # a malformed root.json, or a malformed name in metadata
            raise _refused("metadata", exc) from exc
        self._updater = updater

    def _refreshed(self) -> Updater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def target(self, ref: ArtifactRef) -> VerifiedTarget:
        """The signed description of ``ref``; refuses a ref that is not in the signed targets
        or whose length, hash, name or version disagree with them."""
        updater = self._refreshed()
        try:
            info = updater.get_targetinfo(ref.target_path)
        except (tuf_exceptions.RepositoryError, tuf_exceptions.DownloadLengthMismatchError) as exc:
            raise _refused("targets", exc) from exc
        except tuf_exceptions.DownloadError as exc:
            raise FleetError(
                f"TUF metadata unreachable ({_one_line(exc)}); retry when the link is back", 503
            ) from exc
        if info is None:
            raise ArtifactVerificationError(
                f"artifact {ref.artifact_id}: {ref.target_path!r} is not in the signed targets; refused"
            )
        custom: Any = info.custom if isinstance(info.custom, dict) else {}
        files = custom.get("files")
        verified = VerifiedTarget(
            target_path=info.path,
            length=info.length,
            sha256=str(info.hashes.get("sha256", "")),
            files=dict(files) if isinstance(files, dict) else {},
            name=str(custom.get("name", "")),
            version=int(custom.get("version", 0)),
        )
        wrong = [
            what
            for what, mine, signed in (
                ("length", ref.length, verified.length),
                ("sha256", ref.sha256, verified.sha256),
                ("name", ref.name, verified.name),
                ("version", ref.version, verified.version),
                ("artifact_id", ref.artifact_id, verified.artifact_id),
            )
            if mine != signed
        ]
        if wrong:
            raise ArtifactVerificationError(
                f"artifact {ref.artifact_id}: {', '.join(wrong)} disagree with the signed targets; refused"
            )
        if not verified.files:
            raise ArtifactVerificationError(
                f"artifact {ref.artifact_id}: signed target has no file manifest; refused"
            )
        self._remember(verified)
        return verified

    def check_bundle(self, path: Path, target: VerifiedTarget) -> None:
        """Check a downloaded bundle's length and sha256 against ``target``."""
        size = Path(path).stat().st_size
        if size != target.length:
            raise ArtifactVerificationError(
                f"bundle {target.target_path}: {size} bytes, signed length is {target.length}; download it again"
            )
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                digest.update(chunk)
        if digest.hexdigest() != target.sha256:
            raise ArtifactVerificationError(
                f"bundle {target.target_path}: sha256 does not match the signed one (tampered or corrupt); refused"
            )

    def download(self, target: VerifiedTarget, dest: Path) -> Path:
        """Fetch ``target`` into ``dest`` through the fetcher, reading at most its signed length
        and checking its hash (no resume: the agent has its own resumable download)."""
        updater = self._refreshed()
        try:
            info = updater.get_targetinfo(target.target_path)
            if info is None:
                raise ArtifactVerificationError(
                    f"{target.target_path!r} is not in the signed targets; refused"
                )
            updater.download_target(info, str(dest))
        except (tuf_exceptions.RepositoryError, tuf_exceptions.DownloadLengthMismatchError) as exc:
            raise _refused(f"target {target.target_path}", exc) from exc
        except tuf_exceptions.DownloadError as exc:
            raise FleetError(
                f"bundle {target.target_path} unreachable ({_one_line(exc)}); retry later", 503
            ) from exc
        self.check_bundle(Path(dest), target)
        return Path(dest)

    # --- offline -------------------------------------------------------------------------

    def _remember(self, target: VerifiedTarget) -> None:
        records = self._verified_records()
        records = [r for r in records if r.get("target_path") != target.target_path]
        records.append(asdict(target))
        data = json.dumps(records[-_MAX_VERIFIED:], sort_keys=True).encode()
        fd, tmp_name = tempfile.mkstemp(dir=self.metadata_dir, prefix=".verified.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, self.metadata_dir / _VERIFIED_FILE)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def _verified_records(self) -> list[dict[str, Any]]:
        try:
            records = json.loads((self.metadata_dir / _VERIFIED_FILE).read_text())
        except (OSError, ValueError):
            return []
        return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []

    def last_verified(self, ref: ArtifactRef) -> VerifiedTarget | None:
        """The target as it was verified when last online (no network, no expiry check), or
        None if this device never verified it. Use it with ``bundle.verify_directory`` to keep
        serving an installed slot while the metadata is expired or unreachable."""
        for record in reversed(self._verified_records()):
            try:
                target = VerifiedTarget(**record)
            except TypeError:
                continue
            if (
                target.target_path == ref.target_path
                and target.sha256 == ref.sha256
                and target.length == ref.length
                and target.artifact_id == ref.artifact_id
            ):
                return target
        return None
