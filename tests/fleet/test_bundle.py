"""Bundles: deterministic packing, safe unpacking, boot-time re-checks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edgeshift.errors import ArtifactVerificationError
from edgeshift.fleet import bundle
from edgeshift.fleet.tuf_attacks import make_model_dir


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pack_is_deterministic_whatever_the_mtimes_and_modes(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "model")
    (model / "sub").mkdir()
    (model / "sub" / "weights.bin").write_bytes(b"w" * 1000)
    first = bundle.pack(model, tmp_path / "a.tar")
    os.utime(model / "model.onnx", (1, 1))
    os.chmod(model / "sub" / "weights.bin", 0o600)
    second = bundle.pack(model, tmp_path / "b.tar")
    assert first == second
    assert sorted(first) == ["manifest.json", "model.onnx", "sub/weights.bin"]
    assert first["sub/weights.bin"] == hashlib.sha256(b"w" * 1000).hexdigest()
    assert sha256(tmp_path / "a.tar") == sha256(tmp_path / "b.tar")


def test_round_trip_unpack_then_verify_directory(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "model", size_bytes=100_000)
    files = bundle.pack(model, tmp_path / "m.tar")
    assert bundle.bundle_files(tmp_path / "m.tar") == files
    assert bundle.read_manifest(tmp_path / "m.tar")["model"] == "model.onnx"
    slot = tmp_path / "slots" / "a"
    bundle.unpack(tmp_path / "m.tar", slot, files, max_bytes=1 << 20)
    assert (slot / "model.onnx").read_bytes() == (model / "model.onnx").read_bytes()
    bundle.verify_directory(slot, files)


def test_verify_directory_names_the_changed_extra_or_missing_file(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "model")
    files = bundle.pack(model, tmp_path / "m.tar")
    slot = tmp_path / "slot"
    bundle.unpack(tmp_path / "m.tar", slot, files, max_bytes=1 << 20)
    (slot / "model.onnx").write_bytes(b"bit rot")
    with pytest.raises(ArtifactVerificationError, match="'model.onnx' does not match"):
        bundle.verify_directory(slot, files)
    (slot / "model.onnx").unlink()
    with pytest.raises(ArtifactVerificationError, match="'model.onnx' is missing"):
        bundle.verify_directory(slot, files)
    (slot / "model.onnx").write_bytes((model / "model.onnx").read_bytes())
    (slot / "evil.py").write_text("x")
    with pytest.raises(ArtifactVerificationError, match="'evil.py' is not in the signed manifest"):
        bundle.verify_directory(slot, files)


def test_unpack_with_a_wrong_hash_leaves_nothing_behind(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "model")
    files = bundle.pack(model, tmp_path / "m.tar")
    wrong = dict(files, **{"model.onnx": "0" * 64})
    with pytest.raises(ArtifactVerificationError, match="'model.onnx': sha256"):
        bundle.unpack(tmp_path / "m.tar", tmp_path / "slot", wrong, max_bytes=1 << 20)
    assert not (tmp_path / "slot").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unpack_refuses_a_used_slot_and_a_truncated_tar(tmp_path: Path) -> None:
    files = bundle.pack(make_model_dir(tmp_path / "model"), tmp_path / "m.tar")
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("x")
    with pytest.raises(ArtifactVerificationError, match="not an empty directory"):
        bundle.unpack(tmp_path / "m.tar", used, files, max_bytes=1 << 20)
    data = (tmp_path / "m.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:2000])
    with pytest.raises(ArtifactVerificationError):
        bundle.unpack(tmp_path / "cut.tar", tmp_path / "slot", files, max_bytes=1 << 20)
    assert not (tmp_path / "slot").exists()


def test_file_hashes_refuses_symlinks_and_special_files(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "model")
    (model / "link.onnx").symlink_to(model / "model.onnx")
    with pytest.raises(ArtifactVerificationError, match="link.onnx: a symlink"):
        bundle.file_hashes(model)
    (model / "link.onnx").unlink()
    os.mkfifo(model / "pipe")
    with pytest.raises(ArtifactVerificationError, match="pipe: a special file"):
        bundle.pack(model, tmp_path / "m.tar")


def test_file_hashes_refuses_too_many_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model_dir(tmp_path / "model")
    monkeypatch.setattr(bundle, "MAX_FILES", 1)
    with pytest.raises(ArtifactVerificationError, match="more than 1 files"):
        bundle.file_hashes(model)
