"""Load and validate the catalog (one YAML file per device) and look targets up by id."""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edgeshift.errors import ConfigError, TargetError
from edgeshift.targets.schema import Target

CATALOG_DIR = Path(__file__).parent / "catalog"
HOST_ID = "host"


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _validation_message(path: Path, exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = _field_path(tuple(err["loc"]))
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if err["type"] == "missing":
        fix = f'add `{field}: {{value: ..., source: "..."}}`'
        return f"{path.name}: required field {field!r} is missing{more} — {fix}"
    if err["type"] == "greater_than":
        return f"{path.name}: {field} must be positive, not {err['input']!r}{more} — fix the value"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{path.name}: {field}: {msg}{more} — fix the file (see docs/targets.md)"


def load_target_file(path: str | Path) -> Target:
    """Parse and validate one catalog file; ConfigError names the file, the field and the fix."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read catalog file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path.name} is not valid YAML{where} — fix the syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: expected a mapping of fields — see docs/targets.md")
    try:
        target = Target.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_validation_message(path, exc)) from exc
    if target.id != path.stem:
        raise ConfigError(
            f"{path.name}: id {target.id!r} differs from the file name — "
            f"rename the file to {target.id}.yaml or set id: {path.stem}"
        )
    if target.id == HOST_ID:
        raise ConfigError(f"{path.name}: the id 'host' is reserved for this machine — rename it")
    return target


@lru_cache(maxsize=4)
def _load_dir(directory: Path) -> dict[str, Target]:
    return {t.id: t for t in (load_target_file(p) for p in sorted(directory.glob("*.yaml")))}


def load_catalog(directory: str | Path | None = None) -> dict[str, Target]:
    """Every catalog target by id (the host is not included: see :func:`get_target`)."""
    return dict(_load_dir(Path(directory) if directory else CATALOG_DIR))


def suggest_ids(target_id: str, known: list[str], n: int = 3) -> list[str]:
    near = difflib.get_close_matches(target_id, known, n=n, cutoff=0.4)
    if not near:  # "rpi" or "h100" are prefixes / parts of real ids
        near = [k for k in known if target_id and target_id.lower() in k][:n]
    return near


def get_target(target_id: str, *, recalibrate: bool = False) -> Target:
    """The catalog target TARGET_ID, or this machine for ``"host"`` (calibrated and cached).

    Raises TargetError naming the nearest known ids.
    """
    if target_id == HOST_ID:
        from edgeshift.targets.host import host_target

        return host_target(recalibrate=recalibrate)
    catalog = load_catalog()
    if target_id in catalog:
        return catalog[target_id]
    known = [*sorted(catalog), HOST_ID]
    near = suggest_ids(target_id, known)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    raise TargetError(
        f"unknown target {target_id!r} — {hint}run `edgeshift targets` to list all ids"
    )


def parse_target_list(text: str) -> list[str]:
    """``"a,b, c"`` → ``["a", "b", "c"]`` (empty items dropped)."""
    return [t.strip() for t in text.split(",") if t.strip()]
