"""How many CPUs this process may really use: affinity and the cgroup CPU quota.

Runtimes size their thread pools to the host's cores by default; inside a container with a
CPU quota that oversubscribes and slows everything down, so edgeshift asks here instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_quota_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    v2 = root / "cpu.max"
    try:
        quota, period = v2.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: min(affinity set, ceil(cgroup quota)), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota_cpus(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)
