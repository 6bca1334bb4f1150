"""Do repeated host calibrations agree? Goal: every figure within 5% between two runs.

Runs N full calibrations back to back (default 2), each in a fresh process as a first
`estimate` would, and prints every figure of each side by side with its spread
(max / min - 1), the worst spread, each run's duration and noisy figures, the load average,
and the verdict against the 5% goal. The same calls are also turned into figures by other
statistics (``--also-q``: quantiles of the calls, 0 = the fastest call) and their spreads
summarised, so statistics are compared on one run. Nothing is written to the calibration
cache.

Run: ``python benchmarks/calibration_stability.py [--runs 2] [--quick] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

GOAL = 0.05
# What a calibration records about itself rather than measures.
_NOT_FIGURES = {"key", "created", "cpu_model", "threads", "runtime_versions", "seconds", "passes",
                "noisy", "version", "peak_corrected"}  # fmt: skip

_ONE_RUN = """
import json, sys
from edgeshift.targets._calibrate import run_calibration_compared
from edgeshift.targets.host import detect_host, host_peak_gops
host = detect_host()
qs = tuple(float(q) for q in sys.argv[3].split(",") if q)
cal, _, alts = run_calibration_compared(host, peak_fn=lambda p: host_peak_gops(host).get(p),
                                        quick=sys.argv[2] == "quick", also_q=qs)
doc = json.loads(cal.model_dump_json())
doc["_alts"] = {str(q): json.loads(a.model_dump_json()) for q, a in alts.items()}
open(sys.argv[1], "w").write(json.dumps(doc))
"""


def figures(doc: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of a calibration, flattened to "field/key/..." -> value."""
    out: dict[str, float] = {}
    for key, value in doc.items():
        if not prefix and key in _NOT_FIGURES:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(figures(value, name + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def spread(values: list[float]) -> float:
    low, high = min(values), max(values)
    return high / low - 1 if low > 0 else (0.0 if high == low else float("inf"))


def calibrate_once(quick: bool, also_q: str = "") -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cal.json"
        env = {**os.environ, "EDGESHIFT_CACHE_DIR": tmp}  # leave the real cache alone
        cmd = [sys.executable, "-c", _ONE_RUN, str(out), "quick" if quick else "full", also_q]
        subprocess.run(cmd, check=True, env=env)
        doc: dict[str, Any] = json.loads(out.read_text())
        return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="calibrations to compare (>= 2)")
    parser.add_argument("--quick", action="store_true", help="one round each (a smoke test)")
    parser.add_argument("--json", type=Path, help="also write the calibrations and spreads here")
    parser.add_argument(
        "--also-q",
        default="0",
        help="other quantiles to compare, e.g. 0,0.5 (-1: each benchmark's best round)",
    )
    args = parser.parse_args()
    if args.runs < 2:
        raise SystemExit("--runs must be >= 2: a spread needs two calibrations")
    console = Console()
    load_before = os.getloadavg()[0]
    runs = []
    for i in range(args.runs):
        console.print(f"calibration {i + 1} of {args.runs} ...")
        runs.append(calibrate_once(args.quick, args.also_q))
    load_after = os.getloadavg()[0]
    alts = {q: [r["_alts"][q] for r in runs] for q in runs[0].get("_alts", {})}
    for r in runs:
        r.pop("_alts", None)
    flat = [figures(r) for r in runs]
    names = sorted(set().union(*flat))
    table = Table(title="host calibration figures, run by run")
    table.add_column("figure")
    for i in range(args.runs):
        table.add_column(f"run {i + 1}", justify="right")
    table.add_column("spread", justify="right")
    spreads: dict[str, float] = {}
    for name in names:
        values = [f.get(name) for f in flat]
        if any(v is None for v in values):
            spreads[name] = float("inf")  # measured in one run only
            table.add_row(name, *("-" if v is None else f"{v:.4g}" for v in values), "missing")
            continue
        present = [float(v) for v in values if v is not None]
        spreads[name] = spread(present)
        mark = "" if spreads[name] <= GOAL else " *"
        table.add_row(name, *(f"{v:.4g}" for v in present), f"{spreads[name]:.1%}{mark}")
    console.print(table)
    for i, r in enumerate(runs):
        noisy = ", ".join(f"{k} {v:.0%}" for k, v in sorted(r.get("noisy", {}).items())) or "none"
        console.print(f"run {i + 1}: {r['seconds']:.1f} s, {r['passes']} rounds; noisy: {noisy}")
    worst = max(spreads, key=lambda k: spreads[k])
    within = sum(1 for v in spreads.values() if v <= GOAL)
    console.print(f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after")
    verdict = "meets" if spreads[worst] <= GOAL else "misses"
    console.print(
        f"{within} of {len(spreads)} figures within {GOAL:.0%}; worst {worst} "
        f"{spreads[worst]:.1%} ({verdict} the goal: every figure within {GOAL:.0%})"
    )
    for q, docs in alts.items():
        alt = [figures(d) for d in docs]
        common = set.intersection(*(set(f) for f in alt))
        sp = sorted(spread([f[n] for f in alt]) for n in common)
        console.print(
            f"same calls, quantile {q}: {sum(v <= GOAL for v in sp)} of {len(sp)} within "
            f"{GOAL:.0%}; median spread {sp[len(sp) // 2]:.1%}, worst {sp[-1]:.1%}"
        )
    if args.json:
        doc = {"runs": runs, "spreads": spreads, "alternatives": alts}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
