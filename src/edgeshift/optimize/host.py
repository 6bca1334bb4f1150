"""What this host's CPU can do, as the recipes need it and the manifest records it."""

from __future__ import annotations

import platform
from pathlib import Path

from edgeshift.optimize.manifest import HostInfo
from edgeshift.runtime.threads import usable_cpus

# The flags that decide recipes: int8 dot products, bf16 and fp16 arithmetic, AMX tiles.
_INTERESTING_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
    "asimd",
    "asimdhp",
    "asimddp",
    "fphp",
    "bf16",
    "i8mm",
    "sve",
)


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        text = path.read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware") and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags |= set(value.split())
    return model, flags


def _openvino_capabilities() -> list[str]:
    try:
        from edgeshift.runtime.openvino import cpu_capabilities

        return sorted(cpu_capabilities())
    except Exception:  # OpenVINO missing or without a CPU plugin: no OpenVINO candidates
        return []


def detect_host() -> HostInfo:
    """CPU model, the flags that matter for inference, OpenVINO's view and usable CPUs."""
    model, flags = _cpuinfo()
    return HostInfo(
        cpu_model=model,
        machine=platform.machine(),
        cpu_features=sorted(f for f in _INTERESTING_FLAGS if f in flags),
        openvino_capabilities=_openvino_capabilities(),
        usable_cpus=usable_cpus(),
    )


def has_fp16_arithmetic(host: HostInfo) -> bool:
    """Native fp16 math: AVX512-FP16 / AMX-FP16 on x86, FEAT_FP16 (asimdhp/fphp) on Arm."""
    return bool({"avx512_fp16", "amx_fp16", "asimdhp", "fphp"} & set(host.cpu_features))


def has_int8_dot(host: HostInfo) -> bool:
    """VNNI (x86) or dot-product (Arm) instructions: u8s8 needs no reduced range on them."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"} & set(host.cpu_features))
