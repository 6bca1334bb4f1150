"""Fixtures for the targets tests: a toy target and analysis whose numbers are easy by hand,
and a synthetic host calibration written to a temporary cache (no measuring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgeshift.model.analysis import NodeCost
from edgeshift.model.shapes import TensorSpec
from edgeshift.targets.host import detect_host, save_calibration
from edgeshift.targets.roofline import Efficiency
from edgeshift.targets.schema import Calibration, Target


def toy_target(**overrides: Any) -> Target:
    """1 core at 1 GHz, 10 GFLOP/s fp32, 1 GB/s, no cache, 100 µs per call, 10 µs per op."""
    data: dict[str, Any] = {
        "id": "toy",
        "name": "toy board",
        "vendor": "test",
        "tier": "edge",
        "isa": "toy",
        "cores": {"value": 1, "source": "t"},
        "clock_ghz": {"value": 1.0, "source": "t"},
        "peak_gops": {
            "fp32": {"value": 10.0, "source": "t"},
            "int8": {"value": 40.0, "source": "t"},
        },
        "mem_bandwidth_gbs": {"value": 1.0, "source": "t"},
        "ram": {"value": "1 MiB", "source": "t"},
        "power": {
            "idle_w": {"value": 1.0, "source": "t"},
            "active_w": {"value": 3.0, "source": "t"},
        },
        "price": {
            "purchase_usd": {"value": 100.0, "source": "t"},
            "lifetime_years": {"value": 1.0, "source": "t"},
        },
        "runtimes": ["onnxruntime"],
        "precisions": ["fp32", "int8"],
        "runtime_overhead": {"value": "1 KiB", "source": "t"},
        "call_overhead_us": {"value": 100.0, "source": "t"},
        "op_overhead_us": {"value": 10.0, "source": "t"},
    }
    data.update(overrides)
    return Target.model_validate(data)


# Half of peak compute and of bandwidth, no size dependence, no cache effect.
HALF = Efficiency(
    compute={k: 0.5 for k in ("gemm", "conv", "norm", "elementwise", "pool", "movement")}
    | {"free": 1.0},
    half_rows={},
    gemm_by_precision={},
    memory=0.5,
    cache_speedup=1.0,
    call_overhead_us={"fp32": 0.0},
    op_overhead_us={"fp32": 0.0},
    reference_clock_ghz=1.0,
    measured=True,
)


@dataclass
class FakeAnalysis:
    """The fields of ModelAnalysis the estimate reads."""

    nodes: list[NodeCost]
    weight_bytes: int
    peak_activation_bytes: int
    params: int
    inputs: list[TensorSpec] = field(
        default_factory=lambda: [TensorSpec("x", "float32", ("batch", 1000))]
    )
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=lambda: {"x": (1, 1000)})
    assumed: list[str] = field(default_factory=list)
    op_histogram: dict[str, int] = field(default_factory=dict)


def gemm_node(macs: int, in_b: int, out_b: int, w_b: int, op: str = "Gemm") -> NodeCost:
    return NodeCost("n", op, macs, 2 * macs, in_b, out_b, w_b, True)


@pytest.fixture
def one_gemm() -> FakeAnalysis:
    # 1M MACs, 4000 B in, 4000 B out, 400000 B of fp32 weights (100k params).
    node = gemm_node(1_000_000, 4000, 4000, 400_000)
    return FakeAnalysis([node], 400_000, 8000, 100_000, op_histogram={"Gemm": 1})


def synthetic_calibration(**overrides: Any) -> Calibration:
    host = detect_host()
    data: dict[str, Any] = {
        "key": host.cache_key,
        "created": "2025-01-01T00:00:00+00:00",
        "cpu_model": host.cpu_model,
        "threads": host.usable_cores,
        "runtime_versions": host.runtime_versions,
        "achieved_gops": {"fp32": 100.0, "int8": 300.0},
        "conv_gflops": 60.0,
        "half_rows": {"gemm_fp32": 8.0, "conv_fp32": 64.0},
        "dram_copy_gbs": 15.0,
        "elementwise_gbs": 12.0,
        "cache_gbs": 60.0,
        "call_overhead_us": {"fp32": 8.0, "int8": 8.0},
        "op_overhead_us": {"fp32": 0.5, "int8": 0.5},
        "runtime_overhead_bytes": 100 << 20,
        "efficiency": {"gemm": 0.5, "conv": 0.3, "memory": 0.6, "gemm_fp32": 0.5},
        "seconds": 1.0,
    }
    data.update(overrides)
    return Calibration.model_validate(data)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("EDGESHIFT_CACHE_DIR", str(d))
    return d


@pytest.fixture
def calibrated_host(cache_dir: Path) -> Calibration:
    """A synthetic calibration in the cache: host estimates run without measuring."""
    cal = synthetic_calibration()
    save_calibration(cal, detect_host())
    return cal


@pytest.fixture
def make_target() -> Any:
    return toy_target


@pytest.fixture
def half() -> Efficiency:
    return HALF


@pytest.fixture
def make_analysis() -> Any:
    return FakeAnalysis


@pytest.fixture
def make_gemm() -> Any:
    return gemm_node


@pytest.fixture
def make_calibration() -> Any:
    return synthetic_calibration
