"""Hardware targets: the catalog (one YAML per device), the host calibration, the estimate."""

from edgeshift.targets.catalog import get_target, load_catalog, load_target_file
from edgeshift.targets.compare import Comparison, compare
from edgeshift.targets.estimate import Estimate, OpClassCost, estimate, estimate_analysis
from edgeshift.targets.host import calibrate_host, detect_host, host_target
from edgeshift.targets.schema import TIERS, Calibration, Target

__all__ = [
    "TIERS",
    "Calibration",
    "Comparison",
    "Estimate",
    "OpClassCost",
    "Target",
    "calibrate_host",
    "compare",
    "detect_host",
    "estimate",
    "estimate_analysis",
    "get_target",
    "host_target",
    "load_catalog",
    "load_target_file",
]
