"""Artifact bundles: an ``optimize`` output directory shipped as one deterministic tar.

The same directory always packs to the same bytes (sorted members, mtime 0, uid/gid 0, mode
0644, no directory entries), so its sha256 names it. Unpacking trusts nothing in the tar: only
regular files, no absolute, ``..`` or link members, a size limit checked before any byte is
written, and every file's sha256 checked against the signed manifest of file hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from edgeshift.errors import ArtifactVerificationError

MAX_FILES = 1000
MAX_BUNDLE_BYTES = 4 * 1024**3
# manifest.json is read into memory for operators; a larger one is not an optimize manifest.
MAX_MANIFEST_BYTES = 1024 * 1024
_CHUNK_BYTES = 1024 * 1024


def _check_relative(name: str) -> str:
    """Refuse a member or file name that could land outside the directory it belongs to."""
    if not name or "\\" in name or "\x00" in name or any(ord(c) < 0x20 for c in name):
        raise ArtifactVerificationError(f"bundle file {name!r}: unsafe name; rename the file")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise ArtifactVerificationError(
            f"bundle file {name!r}: absolute path; bundles hold relative paths only"
        )
    if any(part in ("..", ".", "") for part in name.split("/")):
        raise ArtifactVerificationError(
            f"bundle file {name!r}: '..', '.' or empty path part; refused"
        )
    return name


def _sha256_stream(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as stream:
        return _sha256_stream(stream)


def file_hashes(directory: Path) -> dict[str, str]:
    """Relative posix path -> sha256 of every file under ``directory``.

    Raises ArtifactVerificationError for symlinks, special files, unsafe names, more than
    1,000 files or more than 4 GiB in all."""
    root = Path(directory)
    if not root.is_dir() or root.is_symlink():
        raise ArtifactVerificationError(
            f"{root}: not a directory; give an optimize output directory"
        )
    found: dict[str, str] = {}
    total_bytes = 0
    for current, dirs, files in os.walk(root, followlinks=False):
        for entry in sorted(dirs + files):
            full = Path(current, entry)
            rel = full.relative_to(root).as_posix()
            _check_relative(rel)
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise ArtifactVerificationError(
                    f"{rel}: a symlink; bundles hold regular files only"
                )
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise ArtifactVerificationError(
                    f"{rel}: a special file; bundles hold regular files only"
                )
            if len(found) >= MAX_FILES:
                raise ArtifactVerificationError(
                    f"{root}: more than {MAX_FILES} files; bundle fewer"
                )
            total_bytes += full.lstat().st_size
            if total_bytes > MAX_BUNDLE_BYTES:
                raise ArtifactVerificationError(
                    f"{root}: more than {MAX_BUNDLE_BYTES} bytes; bundle less"
                )
            found[rel] = file_sha256(full)
    return dict(sorted(found.items()))


def pack(directory: Path, out: Path) -> dict[str, str]:
    """Write ``directory`` as a deterministic uncompressed tar at ``out``; return its file
    hashes (the manifest that gets signed)."""
    root = Path(directory)
    hashes = file_hashes(root)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for rel in hashes:
                info = tarfile.TarInfo(rel)
                info.size = (root / rel).stat().st_size
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.type = tarfile.REGTYPE
                with open(root / rel, "rb") as stream:
                    tar.addfile(info, stream)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return hashes


def _walk_bundle(
    bundle: Path,
    *,
    max_bytes: int,
    expected_files: dict[str, str] | None,
    sink: Callable[[str, IO[bytes]], str],
) -> dict[str, str]:
    """Check every member of ``bundle`` and hand its bytes to ``sink`` (which returns the
    sha256). Checks names and sizes before reading any member's bytes."""
    seen: dict[str, str] = {}
    total_bytes = 0
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            for member in tar:
                name = _check_relative(member.name)
                if not member.isreg():
                    kind = "link" if (member.issym() or member.islnk()) else "non-file"
                    raise ArtifactVerificationError(
                        f"bundle member {name!r}: a {kind} member; refused"
                    )
                if name in seen:
                    raise ArtifactVerificationError(
                        f"bundle member {name!r}: appears twice; refused"
                    )
                if expected_files is not None and name not in expected_files:
                    raise ArtifactVerificationError(
                        f"bundle member {name!r}: not in the signed manifest; refused"
                    )
                if len(seen) >= MAX_FILES:
                    raise ArtifactVerificationError(
                        f"bundle {bundle.name}: more than {MAX_FILES} files; refused"
                    )
                total_bytes += member.size
                if total_bytes > max_bytes:
                    raise ArtifactVerificationError(
                        f"bundle {bundle.name}: more than {max_bytes} bytes unpacked at {name!r}; refused"
                    )
                stream = tar.extractfile(member)
                if stream is None:
                    raise ArtifactVerificationError(f"bundle member {name!r}: unreadable; refused")
                digest = sink(name, stream)
                if expected_files is not None and digest != expected_files[name]:
                    raise ArtifactVerificationError(
                        f"bundle member {name!r}: sha256 {digest[:12]}… is not the signed {expected_files[name][:12]}…"
                    )
                seen[name] = digest
    except (tarfile.TarError, EOFError) as exc:
        raise ArtifactVerificationError(
            f"bundle {bundle.name}: not a readable tar ({exc}); download it again"
        ) from exc
    if expected_files is not None:
        missing = sorted(set(expected_files) - set(seen))
        if missing:
            raise ArtifactVerificationError(
                f"bundle {bundle.name}: signed file {missing[0]!r} is missing; refused"
            )
    return dict(sorted(seen.items()))


def bundle_files(bundle: Path, *, max_bytes: int = MAX_BUNDLE_BYTES) -> dict[str, str]:
    """Check ``bundle`` as ``unpack`` would, without writing anything; return its file hashes."""
    return _walk_bundle(
        Path(bundle), max_bytes=max_bytes, expected_files=None, sink=lambda _n, s: _sha256_stream(s)
    )


def read_manifest(bundle: Path) -> dict[str, object]:
    """The bundle's manifest.json as a dict ({} when it has none or it is not a JSON object)."""
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            for member in tar:
                if (
                    member.name == "manifest.json"
                    and member.isreg()
                    and member.size <= MAX_MANIFEST_BYTES
                ):
                    stream = tar.extractfile(member)
                    data = json.loads(stream.read()) if stream is not None else {}
                    return data if isinstance(data, dict) else {}
    except (tarfile.TarError, EOFError, ValueError):
        return {}
    return {}


def unpack(bundle: Path, dest: Path, expected_files: dict[str, str], *, max_bytes: int) -> None:
    """Unpack ``bundle`` into ``dest`` (which must not exist, or be empty) after checking every
    member against ``expected_files``; on any failure nothing is left at ``dest``.

    Raises ArtifactVerificationError naming the offending file."""
    bundle, dest = Path(bundle), Path(dest)
    if dest.exists():
        if dest.is_symlink() or not dest.is_dir() or any(dest.iterdir()):
            raise ArtifactVerificationError(
                f"{dest}: exists and is not an empty directory; give a fresh slot"
            )
        dest.rmdir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Unpack beside dest and rename at the end: a crash never leaves a half-filled slot.
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.unpack-"))

    def write(name: str, stream: IO[bytes]) -> str:
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(target, flags, 0o644), "wb") as out:
            while chunk := stream.read(_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
        return digest.hexdigest()

    try:
        _walk_bundle(bundle, max_bytes=max_bytes, expected_files=expected_files, sink=write)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def verify_directory(directory: Path, expected_files: dict[str, str]) -> None:
    """Re-check an unpacked slot (e.g. at boot): exactly the signed files, each with its hash.

    Raises ArtifactVerificationError naming the first file that differs."""
    actual = file_hashes(Path(directory))
    for name in sorted(set(expected_files) | set(actual)):
        if name not in actual:
            raise ArtifactVerificationError(
                f"{directory}: signed file {name!r} is missing; reinstall the artifact"
            )
        if name not in expected_files:
            raise ArtifactVerificationError(
                f"{directory}: file {name!r} is not in the signed manifest; reinstall"
            )
        if actual[name] != expected_files[name]:
            raise ArtifactVerificationError(
                f"{directory}: file {name!r} does not match its signed sha256; reinstall"
            )
