"""From plan to fleet: ``edgeshift plan``'s plan.json placements on edge pools become
rollout specs for the matching device groups (pure: data in, data out).

The mapping (docs/fleet.md, "From plan to fleet"):

- a placement is taken when ``placed`` is true and its ``site_kind`` is ``edge``,
  ``on-prem`` or ``device`` and its ``tier`` is not ``mcu`` (cloud instances are not fleet
  devices; microcontrollers run firmware from ``edgeshift mcu``, not the agent);
- its device group is ``pool`` ("site/name") with the slash made a dot and any other
  character outside the fleet's name alphabet made a dash: ``factory/gateway`` →
  ``factory.gateway``;
- its artifact is the newest published one whose model ``name`` is the ``workload``'s name
  (or, failing that, the stem of the optimize artifact directory the chosen ``variant``
  names, e.g. ``int8 (artifacts/audio-int8)`` → ``audio-int8``), and whose manifest's
  precision, when it records one, is the placement's ``precision``;
- two placements on one pool are refused: a device's desired state holds one artifact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from pydantic import ValidationError

from edgeshift.errors import FleetError
from edgeshift.fleet.schema import ArtifactInfo, RolloutSpec, is_name

FLEET_SITE_KINDS = frozenset({"edge", "on-prem", "device"})
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_VARIANT_SOURCE = re.compile(r"^\S+ \((?P<source>.+)\)$")
_PRECISION_ALIASES = {
    "f32": "fp32",
    "float32": "fp32",
    "f16": "fp16",
    "float16": "fp16",
    "i8": "int8",
}


def group_for_pool(pool: str) -> str:
    """The device group a plan pool ("site/name") rolls out to."""
    name = _NOT_NAME_CHAR.sub("-", pool.replace("/", "."))
    if not is_name(name):
        raise FleetError(
            f"plan pool {pool!r} gives the group name {name!r}, which is not a valid fleet name "
            "(letters, digits, '.', '_', '-'; at most 63 characters); shorten the site or pool "
            "name in the scenario"
        )
    return name


def _precision(value: object) -> str:
    text = str(value or "fp32").lower()
    return _PRECISION_ALIASES.get(text, text)


def _model_names(placement: Mapping[str, Any]) -> list[str]:
    names = [str(placement["workload"])]
    match = _VARIANT_SOURCE.match(str(placement.get("variant", "")))
    if match:
        stem = PurePosixPath(match["source"].replace("\\", "/")).name
        if stem.endswith(".onnx"):
            stem = stem[: -len(".onnx")]
        if stem and stem not in names:
            names.append(stem)
    return names


def artifact_for(placement: Mapping[str, Any], artifacts: Mapping[str, ArtifactInfo]) -> str:
    """The id of the artifact a placement rolls out (see the module docstring)."""
    precision = _precision(placement.get("precision"))
    names = _model_names(placement)
    for name in names:
        found = [
            info
            for info in artifacts.values()
            if info.ref.name == name
            and (
                "precision" not in info.manifest
                or _precision(info.manifest["precision"]) == precision
            )
        ]
        if found:
            return max(found, key=lambda info: info.ref.version).ref.artifact_id
    tried = " or ".join(repr(n) for n in names)
    raise FleetError(
        f"plan workload {placement['workload']!r} on pool {placement.get('pool')!r}: no "
        f"published {precision} artifact named {tried}; publish its `edgeshift optimize` "
        f"output with `edgeshift fleet artifact publish DIR --name {names[0]} --version V` "
        "and apply again",
        404,
    )


def fleet_placements(plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The placements of PLAN that go to fleet devices, in plan order."""
    workloads = plan.get("workloads")
    if not isinstance(workloads, list):
        raise FleetError(
            "plan.json has no 'workloads' list; give the plan.json `edgeshift plan` wrote"
        )
    out = []
    for index, entry in enumerate(workloads):
        if not isinstance(entry, dict) or "workload" not in entry:
            raise FleetError(
                f"plan.json workloads[{index}] is not a placement; re-run edgeshift plan"
            )
        if not entry.get("placed"):
            continue
        if entry.get("site_kind") not in FLEET_SITE_KINDS or entry.get("tier") == "mcu":
            continue
        if not isinstance(entry.get("pool"), str):
            raise FleetError(f"plan.json workloads[{index}] has no pool; re-run edgeshift plan")
        out.append(entry)
    return out


def plan_to_rollouts(
    plan: Mapping[str, Any],
    artifacts: Mapping[str, ArtifactInfo],
    defaults: Mapping[str, Any] | None = None,
    workloads: Sequence[str] | None = None,
) -> list[RolloutSpec]:
    """One RolloutSpec per placement of PLAN on a fleet pool: ARTIFACTS (id -> info) are the
    published ones, DEFAULTS any other RolloutSpec fields (waves, soak_s, gates, …) for all,
    WORKLOADS (None: all) the plan's workloads to roll out. A placement whose model has no
    published artifact is a FleetError (404)."""
    extra = dict(defaults or {})
    for owned in ("artifact_id", "group"):
        if owned in extra:
            raise FleetError(
                f"rollout defaults may not set {owned!r}: the plan decides it per placement"
            )
    placements = fleet_placements(plan)
    if workloads is not None:
        known = {p["workload"] for p in placements}
        unknown = sorted(set(workloads) - known)
        if unknown:
            raise FleetError(
                f"--workload {', '.join(unknown)}: not placed on a fleet pool by this plan "
                f"(placed there: {', '.join(sorted(known)) or 'none'})"
            )
        placements = [p for p in placements if p["workload"] in set(workloads)]
    by_group: dict[str, list[str]] = {}
    for placement in placements:
        by_group.setdefault(group_for_pool(placement["pool"]), []).append(placement["workload"])
    for group, names in by_group.items():
        if len(names) > 1:
            # A device's desired state holds one artifact: a second rollout would replace the
            # first model rather than add to it.
            raise FleetError(
                f"plan pool group {group!r} hosts {len(names)} workloads ({', '.join(names)}) "
                "but a fleet device serves one artifact at a time; roll out one of them with "
                "--workload NAME, or give each workload its own node pool in the scenario"
            )
    specs = []
    for placement in placements:
        fields = {
            **extra,
            "artifact_id": artifact_for(placement, artifacts),
            "group": group_for_pool(placement["pool"]),
        }
        try:
            specs.append(RolloutSpec.model_validate(fields))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "spec"
            raise FleetError(f"rollout defaults: {where}: {first['msg']}") from None
    return specs
