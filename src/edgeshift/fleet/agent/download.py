"""Where downloads go and whether they fit: DIR/downloads/<artifact>-<sha prefix>.part, named
from validated fields only (never from a path a server sent), and a disk-space check before
the first byte."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from edgeshift.errors import FleetError
from edgeshift.fleet.schema import ArtifactRef

DISK_MARGIN_BYTES = 16 << 20  # left free for the spool, the journal and the OS
_MB = 1 << 20

FreeBytes = Callable[[Path], int]


def disk_free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def consistent_target_path(ref: ArtifactRef) -> str:
    """The path a TUF consistent snapshot serves REF's bundle under: the sha256 prefixed to
    the file name (as python-tuf's ngclient asks for it)."""
    directory, _sep, base = ref.target_path.rpartition("/")
    return f"{directory}/{ref.sha256}.{base}" if directory else f"{ref.sha256}.{base}"


def part_path(data_dir: Path, ref: ArtifactRef) -> Path:
    return data_dir / "downloads" / f"{ref.artifact_id}-{ref.sha256[:16]}.part"


def check_disk_space(
    directory: Path,
    ref: ArtifactRef,
    have_bytes: int,
    margin_bytes: int = DISK_MARGIN_BYTES,
    free_bytes: FreeBytes = disk_free_bytes,
) -> None:
    """Refuse to start when the rest of the download, the unpacked slot (at most the tar's
    length: bundles are uncompressed) and a margin do not fit."""
    need = max(0, ref.length - have_bytes) + ref.length + margin_bytes
    free = free_bytes(directory)
    if free < need:
        raise FleetError(
            f"disk full: need {need / _MB:.1f} MB, have {free / _MB:.1f} MB for "
            f"{ref.artifact_id} — free space in the data dir; the agent retries later",
            507,
        )


def remove_stale_parts(data_dir: Path, keep: Path | None) -> None:
    for part in (data_dir / "downloads").glob("*.part"):
        if part != keep:
            part.unlink(missing_ok=True)
