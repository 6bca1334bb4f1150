from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeshift.runtime.threads import usable_cpus


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_no_cgroup_files_means_affinity(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path) == _affinity()


@pytest.mark.parametrize(
    ("quota", "expected"), [("50000 100000", 1), ("100000 100000", 1), ("150000 100000", 2)]
)
def test_cgroup_v2_quota_caps_threads(tmp_path: Path, quota: str, expected: int) -> None:
    (tmp_path / "cpu.max").write_text(quota + "\n")
    assert usable_cpus(tmp_path) == min(expected, _affinity())


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == _affinity()


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(tmp_path) == 1


def test_big_quota_never_exceeds_affinity(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("6400000 100000\n")
    assert usable_cpus(tmp_path) == _affinity()
