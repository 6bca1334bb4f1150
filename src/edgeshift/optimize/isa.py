"""Recipes that know their ISA: which candidates exist on a catalog target's CPU (pure).

A variant chosen on an x86 host must exist where it will run. The target's YAML says which
runtimes and precisions it has and which SIMD extensions its cores offer; a recipe survives
only when its runtime is listed, its precision is listed, and the instructions that make that
precision worthwhile are there (int8 on Arm needs the dot product, bf16 and fp16 their own
arithmetic).
"""

from __future__ import annotations

from edgeshift.errors import TargetError
from edgeshift.targets.schema import Target

# The SIMD extension (catalog `simd` names) a reduced precision needs on an Arm core.
_ARM_NEEDS = {"int8": "dotprod", "bf16": "bf16", "fp16": "fp16"}


def target_arch(target: Target) -> str:
    """The `verify --arch` that runs code for TARGET's CPU."""
    isa = target.isa.lower()
    if isa.startswith(("armv8", "armv9")):
        return "arm64"
    if isa.startswith("x86"):
        return "x86_64"
    if target.mcu_core is not None:
        return target.mcu_core
    raise TargetError(
        f"target {target.id} ({target.isa}) runs no edgeshift runtime — pick a CPU target "
        "(`edgeshift targets`)"
    )


def recipe_skip_reason(backend: str, precision: str, target: Target) -> str | None:
    """Why a recipe building BACKEND at PRECISION does not exist on TARGET, or None."""
    if backend not in target.runtimes:
        return f"{backend} is not among {target.id}'s runtimes ({', '.join(target.runtimes)})"
    if precision not in target.precisions:
        return f"{target.id} has no {precision} ({', '.join(target.precisions)})"
    need = _ARM_NEEDS.get(precision)
    if target_arch(target) == "arm64" and need is not None and need not in target.simd:
        return f"{target.id}'s cores lack the {need} extension that {precision} needs"
    return None
