"""The real Installer: TUF (fleet/tuf_client.py) for what may be installed, fleet/bundle.py
for unpacking and re-checking slots. Offline, a slot is re-checked against the file hashes
recorded when its target was last verified, so expired metadata never stops serving."""

from __future__ import annotations

from pathlib import Path

from tuf.ngclient import FetcherInterface

from edgeshift.errors import ArtifactVerificationError
from edgeshift.fleet import bundle
from edgeshift.fleet.schema import ArtifactRef
from edgeshift.fleet.tuf_client import ArtifactVerifier, VerifiedTarget


class TufInstaller:
    def __init__(self, metadata_dir: Path, server_url: str, fetcher: FetcherInterface) -> None:
        self.verifier = ArtifactVerifier(
            metadata_dir, server_url.rstrip("/") + "/v1/device/tuf", fetcher
        )
        self._targets: dict[str, VerifiedTarget] = {}  # sha256 -> verified in this process

    def _target(self, ref: ArtifactRef) -> VerifiedTarget:
        target = self._targets.get(ref.sha256) or self.verifier.last_verified(ref)
        if target is None:
            raise ArtifactVerificationError(
                f"artifact {ref.artifact_id} was never verified on this device; reinstall it"
            )
        return target

    def verify_bundle(self, ref: ArtifactRef, bundle_path: Path) -> None:
        self.verifier.refresh()  # every install: expired or rolled-back metadata refuses it
        target = self.verifier.target(ref)
        self.verifier.check_bundle(bundle_path, target)
        self._targets[ref.sha256] = target

    def unpack(self, ref: ArtifactRef, bundle_path: Path, dest: Path) -> None:
        target = self._target(ref)
        bundle.unpack(bundle_path, dest, target.files, max_bytes=max(target.length, 1) * 2)

    def verify_directory(self, directory: Path, ref: ArtifactRef) -> None:
        bundle.verify_directory(directory, self._target(ref).files)
