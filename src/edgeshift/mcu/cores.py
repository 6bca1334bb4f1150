"""Which Cortex-M core a ``--target`` means, and what one instruction costs on it.

A target is a core id or a catalog MCU whose YAML names its core (``mcu_core``). Cycles per
instruction turn the exact instruction counts that ``compile --verify`` measures under QEMU
into time at the core's clock; they are assumptions with their reasoning, not measurements
(QEMU does not model pipelines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeshift.errors import TargetError


@dataclass(frozen=True)
class CoreInfo:
    """What one executed instruction costs on a core (its build flags and QEMU board are
    :data:`edgeshift.mcu.toolchain.CORES`)."""

    id: str
    cycles_per_instruction: float
    cpi_reason: str


CORES: dict[str, CoreInfo] = {
    "cortex-m4": CoreInfo(
        "cortex-m4", 1.0,
        "assumption: single-issue 3-stage pipeline, ~1 instruction per cycle for the "
        "load/SMLAD-bound inner loops (pipelined LDRs, no cache misses from TCM/SRAM)",
    ),
    "cortex-m7": CoreInfo(
        "cortex-m7", 0.8,
        "assumption: dual-issue 6-stage pipeline pairs a load with a MAC in the inner loops "
        "(~1.25 instructions per cycle), weights and arena in TCM",
    ),
    "cortex-m55": CoreInfo(
        "cortex-m55", 1.0, "assumption: one Helium beat-pair per cycle, ~1 instruction per cycle"
    ),
}  # fmt: skip
CORE_IDS: tuple[str, ...] = tuple(CORES)


def resolve_core(target: str) -> tuple[CoreInfo, Any | None]:
    """The core of TARGET (a core id or a catalog MCU id) and the catalog Target if any."""
    key = target.strip().lower()
    if key in CORES:
        return CORES[key], None
    from edgeshift.targets.catalog import get_target

    tgt = get_target(key)  # raises TargetError naming the known ids
    core = getattr(tgt, "mcu_core", None)
    if tgt.tier != "mcu" or core is None:
        what = (
            f"{'an' if tgt.tier[0] in 'aeiou' else 'a'} {tgt.tier} target"
            if tgt.tier != "mcu"
            else f"an {tgt.isa} MCU, not a Cortex-M"
        )
        raise TargetError(
            f"{tgt.id} is {what}: edgeshift compile targets Cortex-M — use a core "
            f"({', '.join(CORE_IDS)}) or a Cortex-M catalog MCU (stm32f4, stm32h7, nrf52840)"
        )
    return CORES[core], tgt
