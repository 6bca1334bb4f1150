"""The hardware target schema: one YAML file per device, every number with its provenance.

A number in the catalog is never bare: it is ``{value: V, source: "datasheet name"}`` or
``{value: V, derived: "formula over other fields"}``, so that a reader can check it. Values
must be positive. Sizes in bytes may be written as ``"512 KiB"`` / ``"8 GiB"``.

Tiers (what a placement planner may rely on):

- ``mcu``    microcontrollers: bare metal, weights in flash, activations in SRAM
- ``edge``   Linux boards and small boxes (Arm SBCs, Jetson CPU, mini PCs)
- ``server`` CPU servers and cloud CPU instances (and the host, by default)
- ``gpu``    GPU instances (the GPU's numbers; the host CPU is not modelled)
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Tier = Literal["mcu", "edge", "server", "gpu"]
TIERS: tuple[str, ...] = ("mcu", "edge", "server", "gpu")
Precision = Literal["fp32", "fp16", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
# Best first: the estimate picks the first one both the target and the model can use.
PRECISION_PREFERENCE: tuple[str, ...] = ("int8", "fp16", "bf16", "fp32")
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}

SimdFeature = Literal[
    "sse4_2",
    "avx2",
    "fma",
    "avx512",
    "vnni",
    "avx512_bf16",
    "amx",
    "bf16",
    "fp16",
    "neon",
    "dotprod",
    "i8mm",
    "sve",
    "sve2",
    "dsp",
    "fpu",
    "mve",
    "pie",
    "tensor_cores",
]

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}


class Quantity(BaseModel):
    """A positive number with where it comes from: a ``source`` or a ``derived`` formula."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float = Field(gt=0, description="the number, in the unit the field name says")
    source: str | None = Field(
        default=None, description="datasheet / vendor page / price list name"
    )
    derived: str | None = Field(default=None, description="formula over other fields or facts")

    @model_validator(mode="after")
    def _has_provenance(self) -> Quantity:
        given = [s for s in (self.source, self.derived) if s is not None and s.strip()]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `source: <datasheet or vendor page>` or "
                "`derived: <formula>` beside `value`"
            )
        return self

    @property
    def provenance(self) -> str:
        return f"source: {self.source}" if self.source else f"derived: {self.derived}"


class ByteQuantity(Quantity):
    """A size: ``value`` is bytes, or a string such as ``"512 KiB"`` or ``"8 GiB"``."""

    @field_validator("value", mode="before")
    @classmethod
    def _parse_size(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = _SIZE_RE.match(v)
            if not m:
                raise ValueError(f"size {v!r} is not like '512 KiB', '8 GiB' or a byte count")
            return float(m.group(1)) * _SIZE_UNITS[m.group(2)]
        return v

    @property
    def bytes(self) -> int:
        return int(self.value)


class Power(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    idle_w: Quantity
    active_w: Quantity

    @model_validator(mode="after")
    def _active_at_least_idle(self) -> Power:
        if self.active_w.value < self.idle_w.value:
            raise ValueError("active_w must be >= idle_w")
        return self


class Price(BaseModel):
    """Owned hardware: ``purchase_usd`` + ``lifetime_years``; rented: ``usd_per_hour``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    purchase_usd: Quantity | None = None
    lifetime_years: Quantity | None = None
    usd_per_hour: Quantity | None = None

    @model_validator(mode="after")
    def _one_pricing(self) -> Price:
        owned = self.purchase_usd is not None and self.lifetime_years is not None
        partial = (self.purchase_usd is None) != (self.lifetime_years is None)
        rented = self.usd_per_hour is not None
        if partial or owned == rented:
            raise ValueError(
                "give either purchase_usd and lifetime_years (owned) or usd_per_hour (rented)"
            )
        return self


class Calibration(BaseModel):
    """What was measured on the host (cached as JSON); see :mod:`edgeshift.targets.host`.

    Timings are a low quantile of many short runs, interleaved over rounds, so a busy
    neighbour inflates them less. ``kernel_gops`` holds the achieved GOP/s of each kernel class per
    runtime and precision at several sizes (``targets.roofline.KERNEL_CLASSES``); the older
    layout (``version`` 6) had only GEMM/Conv saturation fits:
    ``achieved(rows) = max * rows / (rows + half_rows)``.
    """

    model_config = ConfigDict(extra="forbid")

    # The layout of what was measured: a cache of another version is measured again, and a
    # pinned file of an older one is read with the figures it has (no kernel classes).
    version: int = 6
    key: str
    created: str  # ISO time
    cpu_model: str
    threads: int
    runtime_versions: dict[str, str]
    achieved_gops: dict[str, float]  # saturated GEMM GFLOP/s (GOP/s for int8) per precision
    conv_gflops: float  # saturated fp32 Conv GFLOP/s
    half_rows: dict[str, float]  # "gemm_fp32", "gemm_bf16", "gemm_int8", "conv_fp32"
    dram_copy_gbs: float  # numpy copy of a buffer much larger than the caches
    elementwise_gbs: float  # runtime elementwise op on a buffer much larger than the caches
    cache_gbs: float  # runtime elementwise op on a cache-resident buffer
    call_overhead_us: dict[str, float]  # per precision (its runtime): a one-node graph
    op_overhead_us: dict[str, float]  # per precision: each further tiny node
    runtime_overhead_bytes: int  # process RSS with a runtime session open (an upper bound)
    efficiency: dict[str, float]  # achieved / peak: gemm, conv, memory, gemm_<precision>
    peak_corrected: bool = False  # the flag-based peak was below what GEMM reached
    # "<runtime>/<precision>/<kernel class>" -> {size: GOP/s} (size as text: JSON keys), net
    # of the call and per-op overheads; size is rows (GEMM M, Conv positions, RNN steps) or
    # an attention MatMul's MACs
    kernel_gops: dict[str, dict[str, float]] = Field(default_factory=dict)
    # (version 8) what kernel_gops is made of: the same curves on one thread, and each class's
    # speed-up at ``threads`` measured at its largest size (kernel_gops = 1t x speed-up, the
    # speed-up fading out for short kernels)
    kernel_gops_1t: dict[str, dict[str, float]] = Field(default_factory=dict)
    thread_speedup: dict[str, float] = Field(default_factory=dict)
    peak_gops: dict[str, float] = Field(default_factory=dict)  # host peaks efficiency divides by
    seconds: float  # how long the calibration took
    passes: int = 1  # measurement rounds over every microbenchmark (re-measures not counted)
    # Benchmarks whose two fastest rounds still disagreed after re-measuring (name -> spread)
    # and, as "other processes", the share of our CPUs others used meanwhile: why a figure
    # may not repeat.
    noisy: dict[str, float] = Field(default_factory=dict)


class Target(BaseModel):
    """One hardware target. Read by the estimate and by the placement planner."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    name: str
    vendor: str
    tier: Tier
    isa: str
    simd: list[SimdFeature] = Field(default_factory=list)
    cores: Quantity  # CPU cores used for inference (GPUs: streaming multiprocessors)
    clock_ghz: Quantity
    # GFLOP/s for float precisions, GOP/s for int8, whole target.
    peak_gops: dict[Precision, Quantity]
    mem_bandwidth_gbs: Quantity
    ram: ByteQuantity
    flash: ByteQuantity | None = None  # MCUs: weights and code live here
    # Cortex-M MCUs: the core `edgeshift compile` builds for (and its measured figures apply to)
    mcu_core: Literal["cortex-m4", "cortex-m7", "cortex-m55"] | None = None
    llc: ByteQuantity | None = None  # last-level cache: memory-bound ops that fit run faster
    power: Power
    price: Price
    runtimes: list[str] = Field(min_length=1)
    precisions: list[Precision] = Field(min_length=1)
    runtime_overhead: ByteQuantity  # RAM the runtime takes beyond weights and activations
    runtime_code: ByteQuantity | None = None  # MCUs: flash the runtime's code takes
    call_overhead_us: Quantity | None = None  # per inference call (GPU: launch, sync)
    op_overhead_us: Quantity | None = None  # per op (GPU: kernel launch)
    host_link_gbs: Quantity | None = None  # GPU: host <-> device copies of inputs/outputs
    notes: str = ""
    calibration: Calibration | None = None  # only the host carries one

    @model_validator(mode="after")
    def _consistent(self) -> Target:
        missing = [p for p in self.precisions if p not in self.peak_gops]
        if missing:
            raise ValueError(
                f"precisions lists {', '.join(missing)} but peak_gops has no entry for it — "
                "add peak_gops.<precision> or drop it from precisions"
            )
        if self.tier == "mcu" and self.flash is None:
            raise ValueError("an mcu target needs `flash` (weights live there)")
        if self.tier == "gpu" and self.host_link_gbs is None:
            raise ValueError("a gpu target needs `host_link_gbs` (PCIe bandwidth for inputs)")
        return self

    # Plain numbers for the planner and the estimate.
    @property
    def ram_bytes(self) -> int:
        return self.ram.bytes

    @property
    def flash_bytes(self) -> int | None:
        return self.flash.bytes if self.flash is not None else None

    @property
    def power_idle_w(self) -> float:
        return self.power.idle_w.value

    @property
    def power_active_w(self) -> float:
        return self.power.active_w.value

    @property
    def is_rented(self) -> bool:
        return self.price.usd_per_hour is not None

    @property
    def usd_per_hour(self) -> float | None:
        return self.price.usd_per_hour.value if self.price.usd_per_hour else None

    @property
    def purchase_usd(self) -> float | None:
        return self.price.purchase_usd.value if self.price.purchase_usd else None

    @property
    def lifetime_years(self) -> float | None:
        return self.price.lifetime_years.value if self.price.lifetime_years else None

    def peak(self, precision: str) -> float:
        """Peak GFLOP/s (GOP/s for int8) at PRECISION, 0.0 when the target lacks it."""
        q = self.peak_gops.get(precision)  # type: ignore[call-overload]
        return q.value if q is not None else 0.0
