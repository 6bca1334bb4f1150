"""A/B slots: DIR/slots/a and DIR/slots/b each hold one unpacked artifact; last-good is one
of them, an update unpacks into the other. A slot is filled through a temporary directory
and a rename, and DIR/slots/<slot>.json records which artifact it holds, so a slot is either
whole or recognisably not there."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from edgeshift.errors import ArtifactVerificationError, EdgeshiftError
from edgeshift.fleet.agent.journal import SLOTS, Slot, write_atomic
from edgeshift.fleet.schema import ArtifactRef

log = logging.getLogger("edgeshift.agent")


class Installer(Protocol):
    """The trust and packaging steps (fleet/tuf_client.py and fleet/bundle.py in the real
    agent). Blocking: the agent calls them on a worker thread. Each raises
    ArtifactVerificationError with one line naming what failed."""

    def verify_bundle(self, ref: ArtifactRef, bundle: Path) -> None:
        """Refresh TUF metadata, then check BUNDLE is REF's signed target (length, hashes)."""

    def unpack(self, ref: ArtifactRef, bundle: Path, dest: Path) -> None:
        """Unpack REF's checked BUNDLE into the empty directory DEST, hashing every file as
        it is written and refusing any that is not exactly the signed manifest's."""

    def verify_directory(self, directory: Path, ref: ArtifactRef) -> None:
        """Check an unpacked artifact against its signed manifest of file hashes."""


def slot_dir(data_dir: Path, slot: Slot) -> Path:
    return data_dir / "slots" / slot


def _record(data_dir: Path, slot: Slot) -> Path:
    return data_dir / "slots" / f"{slot}.json"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clear(data_dir: Path, slot: Slot) -> None:
    """Forget what SLOT holds (its record first: a half-removed slot is never trusted)."""
    _record(data_dir, slot).unlink(missing_ok=True)
    shutil.rmtree(slot_dir(data_dir, slot), ignore_errors=True)
    shutil.rmtree(slot_dir(data_dir, slot).with_name(f"{slot}.tmp"), ignore_errors=True)


def install(
    installer: Installer, data_dir: Path, slot: Slot, ref: ArtifactRef, bundle: Path
) -> Path:
    """Unpack BUNDLE (already verified) into SLOT, record it. The unpack hashes every file
    against the signed manifest as it writes it (and refuses extra or missing files), so the
    slot is not read back here: that would hash the same bytes again from the page cache."""
    clear(data_dir, slot)
    final = slot_dir(data_dir, slot)
    tmp = final.with_name(f"{slot}.tmp")
    tmp.mkdir(parents=True)
    installer.unpack(ref, bundle, tmp)
    _fsync_tree(tmp)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    write_atomic(_record(data_dir, slot), ref.model_dump_json().encode())
    return final


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(directory))


def recorded(data_dir: Path, slot: Slot) -> ArtifactRef | None:
    try:
        return ArtifactRef.model_validate_json(_record(data_dir, slot).read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


def verifies(installer: Installer, data_dir: Path, slot: Slot, ref: ArtifactRef | None) -> bool:
    """True when SLOT holds REF intact."""
    if ref is None or recorded(data_dir, slot) != ref:
        return False
    try:
        installer.verify_directory(slot_dir(data_dir, slot), ref)
    except (ArtifactVerificationError, EdgeshiftError, OSError) as exc:
        log.warning("slot %s (%s) fails verification: %s", slot, ref.artifact_id, exc)
        return False
    return True


def best_verified(
    installer: Installer, data_dir: Path
) -> tuple[Slot | None, dict[Slot, ArtifactRef | None]]:
    """With no journal: the slot holding the highest version that verifies, and what each
    slot verifiably holds."""
    held: dict[Slot, ArtifactRef | None] = {}
    for slot in SLOTS:
        ref = recorded(data_dir, slot)
        held[slot] = ref if verifies(installer, data_dir, slot, ref) else None
    candidates = [(ref.version, slot) for slot, ref in held.items() if ref is not None]
    return (max(candidates)[1] if candidates else None), held
