"""This machine as a target: detection, calibration by microbenchmarks, and the cache.

Detection reads /proc and /sys (CPU model, SIMD flags, clock, last-level cache) and the
CPUs this process may use under affinity and cgroup quotas. Calibration (see
:mod:`edgeshift.targets._calibrate`) times small graphs on the real runtimes. The result
is cached as JSON under ``$EDGESHIFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeshift``, else
``~/.cache/edgeshift``, keyed by CPU model + usable cores + runtime versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import psutil
from pydantic import ValidationError

from edgeshift.runtime.threads import usable_cpus
from edgeshift.targets._calibrate import Calibrator, width_factor
from edgeshift.targets.roofline import STREAM_FRACTION, Efficiency, efficiency_from_calibration
from edgeshift.targets.schema import ByteQuantity, Calibration, Power, Price, Quantity, Target

# Bump when what is measured changes: a cache of another version is measured again (its key
# differs), never misread. 7: kernel classes per runtime and precision; 8: one-thread class
# curves and speed-ups; 9: dense convs also by channel width (``conv_width``).
CALIBRATION_VERSION = 9
_RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class HostInfo:
    """What detection finds, before any measurement."""

    cpu_model: str
    vendor: str
    machine: str  # x86_64, aarch64, ...
    family: int | None  # x86 CPU family (AMD Zen generations differ in FMA width)
    flags: frozenset[str]
    usable_cores: int
    clock_ghz: float
    clock_source: str
    memory_bytes: int
    llc_bytes: int | None
    runtime_versions: dict[str, str]

    @property
    def simd(self) -> list[str]:
        f = self.flags
        found = {
            "sse4_2": "sse4_2" in f,
            "avx2": "avx2" in f,
            "fma": "fma" in f,
            "avx512": "avx512f" in f,
            "vnni": bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & f),
            "avx512_bf16": "avx512_bf16" in f,
            "amx": "amx_tile" in f,
            "fp16": bool({"avx512_fp16", "fphp", "asimdhp"} & f),
            "neon": bool({"asimd", "neon"} & f),
            "dotprod": "asimddp" in f,
            "i8mm": "i8mm" in f,
            "bf16": "bf16" in f,
            "sve": "sve" in f,
            "sve2": "sve2" in f,
        }
        return [k for k, v in found.items() if v]

    def flops_per_cycle(self) -> dict[str, tuple[float, str]]:
        """Peak operations per cycle per core for each precision, with the reasoning."""
        f = self.flags
        if "avx512f" in f:
            # Zen 4 (family 25) executes 512-bit ops on two 256-bit pipes.
            if self.vendor == "AuthenticAMD" and (self.family or 0) < 26:
                fp32 = (32.0, "two 256-bit FMA pipes (Zen 4 double-pumps AVX-512): 2*8*2")
            else:
                fp32 = (64.0, "two 512-bit FMA units: 2*16*2")
        elif "avx2" in f and "fma" in f:
            fp32 = (32.0, "two 256-bit FMA units: 2*8*2")
        elif {"asimd", "neon"} & f:
            fp32 = (
                (32.0, "SVE, assumed two 256-bit FMA pipes")
                if "sve" in f
                else (16.0, "two 128-bit NEON FMA pipes: 2*4*2")
            )
        else:
            fp32 = (8.0, "one 128-bit SSE multiply + add per cycle")
        out = {"fp32": fp32}
        if "amx_bf16" in f:
            out["bf16"] = (1024.0, "AMX-BF16 TMUL")
        elif "avx512_bf16" in f or "bf16" in f:
            out["bf16"] = (2 * fp32[0], "bf16 dot product: 2x the fp32 FMA rate")
        if "amx_int8" in f:
            out["int8"] = (2048.0, "AMX-INT8 TMUL")
        elif {"avx512_vnni", "avx_vnni", "asimddp", "i8mm"} & f:
            out["int8"] = (4 * fp32[0], "int8 dot product (VNNI/SDOT): 4x the fp32 FMA rate")
        else:
            out["int8"] = (2 * fp32[0], "widening int8 multiply-add: 2x the fp32 FMA rate")
        return out

    @property
    def cache_key(self) -> str:
        versions = ",".join(f"{k}={v}" for k, v in sorted(self.runtime_versions.items()))
        return f"v{CALIBRATION_VERSION}|{self.cpu_model}|{self.usable_cores}|{versions}"


def _cpuinfo() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor block is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _llc_bytes(cpu_dir: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    best: tuple[int, int] | None = None
    for index in sorted(cpu_dir.glob("index*")):
        level = _read_int(index / "level")
        try:
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if level is None or kind == "Instruction" or not size:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
        nbytes = int(size.rstrip("KMG")) * scale
        if best is None or level > best[0]:
            best = (level, nbytes)
    return best[1] if best else None


def _memory_bytes() -> int:
    total = int(psutil.virtual_memory().total)
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        limit = _read_int(Path(limit_file))
        if limit is not None and 0 < limit < total:
            total = limit
    return total


def runtime_versions() -> dict[str, str]:
    out = {}
    for name in _RUNTIMES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@lru_cache(maxsize=1)
def detect_host() -> HostInfo:
    """Read what this machine is, without measuring anything (fast; once per process)."""
    info = _cpuinfo()
    model = info.get("model name") or info.get("Model") or platform.processor() or "unknown CPU"
    flags = frozenset((info.get("flags") or info.get("Features") or "").split())
    max_khz = _read_int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))
    if max_khz:
        clock, clock_source = max_khz / 1e6, "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"
    elif info.get("cpu MHz"):
        clock, clock_source = float(info["cpu MHz"]) / 1e3, "/proc/cpuinfo 'cpu MHz'"
    else:
        clock, clock_source = 2.0, "unknown: assumed 2 GHz"
    family = info.get("cpu family")
    return HostInfo(
        cpu_model=model,
        vendor=info.get("vendor_id", ""),
        machine=platform.machine(),
        family=int(family) if family and family.isdigit() else None,
        flags=flags,
        usable_cores=usable_cpus(),
        clock_ghz=clock,
        clock_source=clock_source,
        memory_bytes=_memory_bytes(),
        llc_bytes=_llc_bytes(),
        runtime_versions=runtime_versions(),
    )


def cache_dir() -> Path:
    if os.environ.get("EDGESHIFT_CACHE_DIR"):
        return Path(os.environ["EDGESHIFT_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "edgeshift"
    return Path.home() / ".cache" / "edgeshift"


def cache_path(host: HostInfo) -> Path:
    digest = hashlib.sha256(host.cache_key.encode()).hexdigest()[:16]
    return cache_dir() / f"host-calibration-{digest}.json"


def load_calibration(host: HostInfo | None = None) -> Calibration | None:
    """The cached calibration for this host, or None (missing, stale key, or unreadable)."""
    host = host or detect_host()
    path = cache_path(host)
    try:
        cal = Calibration.model_validate(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ValidationError):
        return None
    return cal if cal.key == host.cache_key else None  # the key carries CALIBRATION_VERSION


def save_calibration(cal: Calibration, host: HostInfo) -> Path:
    path = cache_path(host)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(cal.model_dump_json(indent=2))
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


def calibrate_host(
    host: HostInfo | None = None,
    *,
    quick: bool = False,
    progress: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Calibration:
    """Measure this host now and cache the result (about a minute; ``quick`` for tests).

    WARN receives one line when rounds still disagree after re-measuring (another process
    took the CPU)."""
    from edgeshift.targets._calibrate import NOISY_SPREAD, run_calibration_checked

    host = host or detect_host()
    cal, noisy = run_calibration_checked(host, peak_fn=lambda p: host_peak_gops(host).get(p),
                                         quick=quick, progress=progress)  # fmt: skip
    if noisy and warn is not None:
        others = noisy.pop("other processes", None)
        found = [f"other processes used {others:.0%} of this process's CPUs"] if others else []
        if noisy:
            worst = max(noisy, key=lambda k: noisy[k])
            found.append(
                f"{len(noisy)} benchmarks' two fastest rounds differ by more than "
                f"{NOISY_SPREAD:.0%} ({worst}: {noisy[worst]:.0%})"
            )
        warn(
            f"noisy calibration: {'; '.join(found)} — re-run `edgeshift targets host "
            "--recalibrate` when the machine is quiet, or pin a calibration with "
            "--calibration FILE"
        )
    save_calibration(cal, host)
    return cal


def new_calibrator(host: HostInfo | None = None, *, quick: bool = False) -> Calibrator:
    """A calibrator whose passes the caller schedules (see benchmarks/estimate_accuracy.py)."""
    host = host or detect_host()
    return Calibrator(host, lambda p: host_peak_gops(host).get(p), quick=quick)


def host_peak_gops(host: HostInfo) -> dict[str, float]:
    return {
        p: host.usable_cores * host.clock_ghz * f for p, (f, _) in host.flops_per_cycle().items()
    }


def cached_efficiency() -> Efficiency | None:
    """Efficiencies from the cached host calibration, or None when there is none (no I/O
    beyond reading the cache file)."""
    host = detect_host()
    cal = load_calibration(host)
    return efficiency_from_calibration(cal, host.clock_ghz) if cal else None


def host_target(
    *,
    recalibrate: bool = False,
    progress: bool = False,
    calibration: PinnedCalibration | None = None,
    warn: Callable[[str], None] | None = None,
    quick: bool = False,
) -> Target:
    """This machine as a Target, calibrated: by CALIBRATION when pinned, else from the cache
    (measured now when there is none, or when RECALIBRATE; QUICK: one round at smaller
    sizes, for slow or emulated hosts)."""
    host = detect_host()
    if calibration is not None:
        return build_host_target(host, calibration.calibration)
    cal = None if recalibrate else load_calibration(host)
    if cal is None:
        cal = calibrate_host(host, quick=quick, progress=progress, warn=warn)
    return build_host_target(host, cal)


def build_host_target(host: HostInfo, cal: Calibration) -> Target:
    n, ghz = host.usable_cores, host.clock_ghz
    per_cycle = host.flops_per_cycle()
    flag = {p: n * ghz * f for p, (f, _) in per_cycle.items()}
    k = width_factor(flag, cal.achieved_gops)
    peaks = {}
    for p, (f, why) in per_cycle.items():
        if p != "fp32" and p not in cal.achieved_gops:
            continue  # no runtime here reached that precision
        text = f"{n} cores * {ghz:.3f} GHz * {f * k:g} ({why})"
        if k != 1.0:
            text += f", x{k:g}: GEMM beat the flag-based peak, so the vector units are wider"
        peaks[p] = Quantity(value=flag[p] * k, derived=text)
    precisions = [p for p in ("fp32", "bf16", "int8") if p in peaks]
    watts_per_core = 4.0
    llc = (
        ByteQuantity(
            value=host.llc_bytes, source="/sys/devices/system/cpu/cpu0/cache (largest level)"
        )
        if host.llc_bytes
        else None
    )
    usd_h = float(os.environ.get("EDGESHIFT_HOST_USD_PER_HOUR", 0) or 0) or 0.05 * n
    return Target(
        id="host",
        name=f"this machine: {host.cpu_model} ({n} usable cores)",
        vendor=host.vendor or "unknown",
        tier="server",
        isa=host.machine or "unknown",
        simd=host.simd,  # type: ignore[arg-type]
        cores=Quantity(value=n, source="CPU affinity and cgroup quota of this process"),
        clock_ghz=Quantity(value=ghz, source=host.clock_source),
        peak_gops=peaks,  # type: ignore[arg-type]
        mem_bandwidth_gbs=Quantity(
            value=max(cal.dram_copy_gbs, cal.elementwise_gbs) / STREAM_FRACTION,
            derived=f"max(measured copy {cal.dram_copy_gbs:.1f}, runtime Add "
            f"{cal.elementwise_gbs:.1f}) GB/s / {STREAM_FRACTION} (STREAM fraction)",
        ),
        ram=ByteQuantity(value=host.memory_bytes, source="/proc/meminfo and cgroup memory limit"),
        llc=llc,
        power=Power(
            idle_w=Quantity(
                value=0.3 * watts_per_core * n,
                derived=f"0.3 * {watts_per_core} W * {n} cores (assumption)",
            ),
            active_w=Quantity(
                value=watts_per_core * n,
                derived=f"{watts_per_core} W per core * {n} cores (assumption: server TDP / cores)",
            ),
        ),
        price=Price(
            usd_per_hour=Quantity(
                value=usd_h,
                derived="EDGESHIFT_HOST_USD_PER_HOUR, else 0.05 USD per core-hour (assumption: "
                "cloud on-demand CPU order of magnitude)",
            )
        ),
        runtimes=sorted(host.runtime_versions),
        precisions=precisions,  # type: ignore[arg-type]
        runtime_overhead=ByteQuantity(
            value=cal.runtime_overhead_bytes,
            source="measured: process RSS with a runtime session open",
        ),
        notes=f"calibrated {cal.created} in {cal.seconds:.1f} s",
        calibration=cal,
    )


# A pinned calibration file: what `edgeshift targets host --save FILE` writes. Also read:
# `edgeshift targets host --json` output (a Target with its calibration) and a cache file
# (a bare Calibration, whose clock is then this machine's).
CALIBRATION_FILE_FORMAT = "edgeshift-calibration/1"


@dataclass(frozen=True)
class PinnedCalibration:
    """A calibration and the clock of the host that measured it (efficiencies are per clock)."""

    calibration: Calibration
    clock_ghz: float
    source: str  # the file it was read from, or "cache" / "measured now"

    def efficiency(self) -> Efficiency:
        return efficiency_from_calibration(self.calibration, self.clock_ghz)

    def record(self) -> dict[str, object]:
        """What a plan records about the calibration its estimates rest on."""
        cal = self.calibration
        return {
            "source": self.source,
            "host": cal.cpu_model,
            "threads": cal.threads,
            "clock_ghz": self.clock_ghz,
            "created": cal.created,
            "runtime_versions": dict(cal.runtime_versions),
            "figures": cal.model_dump(
                mode="json",
                exclude={"key", "created", "cpu_model", "threads", "runtime_versions", "seconds"},
            ),
        }


def calibration_document(cal: Calibration, host: HostInfo) -> dict[str, object]:
    """The JSON a pinned calibration file holds (see ``CALIBRATION_FILE_FORMAT``)."""
    return {
        "format": CALIBRATION_FILE_FORMAT,
        "clock_ghz": host.clock_ghz,
        "calibration": cal.model_dump(mode="json"),
    }


def save_calibration_file(cal: Calibration, host: HostInfo, path: Path) -> Path:
    """Write CAL to PATH as a pinned calibration file; raises ConfigError if it cannot."""
    from edgeshift.errors import ConfigError

    try:
        path.write_text(json.dumps(calibration_document(cal, host), indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(
            f"cannot write {path} ({exc.strerror}) — choose another --save path"
        ) from exc
    return path


def load_calibration_file(path: str | Path) -> PinnedCalibration:
    """Read a pinned calibration (``targets host --save``/``--json`` output or a cache file).

    Raises ConfigError naming the file and what is wrong with it."""
    from edgeshift.errors import ConfigError

    p = Path(path)
    hint = "give a file written by `edgeshift targets host --save FILE`"
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"--calibration {p}: cannot read it ({exc.strerror}) — {hint}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--calibration {p}: not JSON ({exc}) — {hint}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--calibration {p}: not a JSON object — {hint}")
    clock: object = data.get("clock_ghz")
    if isinstance(clock, dict):  # `targets host --json`: a Quantity
        clock = clock.get("value")
    body = data.get("calibration", data)
    try:
        cal = Calibration.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "calibration"
        raise ConfigError(f"--calibration {p}: {where}: {first['msg']} — {hint}") from exc
    if clock is None:
        clock = detect_host().clock_ghz
    if not isinstance(clock, int | float) or not 0 < float(clock) < 100:
        raise ConfigError(f"--calibration {p}: clock_ghz {clock!r} is not a clock in GHz — {hint}")
    return PinnedCalibration(cal, float(clock), str(p))


def current_calibration() -> PinnedCalibration | None:
    """The cached calibration of this host (no measuring), or None."""
    host = detect_host()
    cal = load_calibration(host)
    return PinnedCalibration(cal, host.clock_ghz, "cache") if cal else None
