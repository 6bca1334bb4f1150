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
    id: str
    arch: str
    dsp: bool  # ACLE DSP instructions (SMLAD, SXTB16)
    mve: bool  # Helium
    cycles_per_instruction: float
    cpi_reason: str
    reference_clock_mhz: float  # a typical part's clock, for cores given without a catalog MCU


CORES: dict[str, CoreInfo] = {
    "cortex-m4": CoreInfo(
        "cortex-m4",
        "armv7e-m",
        True,
        False,
        1.0,
        "assumption: single-issue 3-stage pipeline, ~1 instruction per cycle for the "
        "load/SMLAD-bound inner loops (pipelined LDRs, no cache misses from TCM/SRAM)",
        120.0,
    ),
    "cortex-m7": CoreInfo(
        "cortex-m7",
        "armv7e-m",
        True,
        False,
        0.8,
        "assumption: dual-issue 6-stage pipeline pairs a load with a MAC in the inner loops "
        "(~1.25 instructions per cycle), weights and arena in TCM",
        480.0,
    ),
    "cortex-m55": CoreInfo(
        "cortex-m55",
        "armv8.1-m",
        True,
        True,
        1.0,
        "assumption: one Helium beat-pair per cycle, ~1 instruction per cycle",
        160.0,
    ),
}
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
