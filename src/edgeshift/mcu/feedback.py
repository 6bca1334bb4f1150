"""Measured figures of compiled models, kept so ``estimate`` and ``plan`` can use them.

``compile --verify`` records, per (model file sha256, core), the flash and RAM the linker
reported and the exact instructions per inference QEMU counted. ``estimate --target <MCU>``
looks the model up here and, when it finds it, replaces its extrapolation with these numbers
(and says so). The store is one small JSON file under the user's cache directory
(``$EDGESHIFT_CACHE_DIR`` / ``$XDG_CACHE_HOME/edgeshift`` / ``~/.cache/edgeshift``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORE_NAME = "compiled.json"
STORE_VERSION = 1


@dataclass(frozen=True)
class CompiledFigures:
    """What a verified compile measured for one model on one core."""

    core: str
    flash_bytes: int
    ram_bytes: int
    instructions_per_inference: float
    macs: int
    created: str
    artifact: str


def store_path() -> Path:
    from edgeshift.targets.host import cache_dir

    return cache_dir() / "mcu" / STORE_NAME


def _read() -> dict[str, Any]:
    try:
        data = json.loads(store_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != STORE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def record(manifest: dict[str, Any], out_dir: Path) -> None:
    """Remember a verified compile under its source model's hash and its own model.onnx's."""
    from edgeshift.model.load import sha256_file

    verification = manifest.get("verification")
    if not verification:
        return
    core = manifest["target"]["core"]
    entry = {
        "core": core,
        "flash_bytes": int(verification["flash_bytes"]),
        "ram_bytes": int(verification["ram_bytes"]),
        "instructions_per_inference": float(verification["instructions_per_inference"]),
        "macs": int(manifest["macs"]),
        "created": manifest["created"],
        "artifact": str(out_dir.resolve()),
    }
    entries = _read()
    keys = {manifest["source"]["sha256"], sha256_file(out_dir / manifest["model_file"])}
    for sha in keys:
        entries[f"{sha}:{core}"] = entry
    path = store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic replace: a reader never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".compiled-")
    with os.fdopen(fd, "w") as f:
        json.dump({"version": STORE_VERSION, "entries": entries}, f, indent=1)
    os.replace(tmp, path)


def lookup(model_path: str | Path, core: str) -> CompiledFigures | None:
    """The figures a verified compile of MODEL_PATH for CORE measured, if any."""
    entries = _read()
    if not entries:
        return None
    from edgeshift.model.load import sha256_file

    try:
        sha = sha256_file(Path(model_path))
    except OSError:
        return None
    entry = entries.get(f"{sha}:{core}")
    if not isinstance(entry, dict):
        return None
    try:
        return CompiledFigures(**entry)
    except TypeError:
        return None
