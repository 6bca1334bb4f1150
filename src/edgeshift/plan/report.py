"""report.html: one self-contained page (inline CSS and SVG, no script, nothing fetched)."""

from __future__ import annotations

import html
import io
import math
import re
from typing import Any

from edgeshift.plan.explain import option_cost_usd
from edgeshift.plan.pipeline import (
    AGREEMENT_FACTOR,
    PlanResult,
    compared_workloads,
    savings_usd,
)

_TIER_COLORS = {"mcu": "#4c9a2a", "edge": "#2a7ab0", "server": "#e08a1e", "gpu": "#b5332e"}
_BASELINE_LABELS = {
    "plan": "edgeshift plan",
    "cloud-gpu": "all on cloud GPU",
    "cloud-cpu": "all on cloud CPU",
    "edge": "all at the edge",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1180px;color:#1d232a;padding:0 16px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde}
.sub{color:#5a6570}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #dde;border-radius:8px;padding:10px 14px;min-width:170px}
.card b{display:block;font-size:20px}.ok{color:#2e7d32}.bad{color:#c62828}
table{border-collapse:collapse;width:100%;margin:8px 0}th,td{border-bottom:1px solid #eef;
padding:5px 8px;text-align:left;vertical-align:top}th{background:#f5f7fa}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:16px}.chart svg{width:100%;height:auto}
.wide{grid-column:1 / span 2}.why{color:#3d4750;font-size:13px}code{background:#f3f3f6;padding:0 3px}
"""


def render_report(result: PlanResult, summary: dict[str, Any]) -> str:
    """The HTML page for RESULT; SUMMARY is the plan.json document of the same result."""
    problem, solution = result.problem, result.solution
    title = problem.name or "placement plan"
    placed = len(problem.workloads) - len(solution.unplaced)
    cards = [
        ("monthly cost", _usd(solution.total_usd), ""),
        (
            "workloads placed",
            f"{placed} / {len(problem.workloads)}",
            "ok" if not solution.unplaced else "bad",
        ),
    ]
    for kind in result.baselines:
        saved = savings_usd(result, kind)
        base_usd = saved + sum(
            option_cost_usd(problem, o, solution)
            for w in compared_workloads(result, kind)
            if (o := solution.chosen[w]) is not None
        )
        pct = f" ({saved / base_usd:.0%})" if 0 < base_usd < math.inf else ""
        unplaced = len(result.baselines[kind].unplaced)
        label = f"saves vs {_BASELINE_LABELS[kind]}" + (
            f" (on the workloads it can run; it cannot run {unplaced})" if unplaced else ""
        )
        cards.append((label, f"{_usd(saved)}/mo{pct}", ""))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>edgeshift plan — {_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>edgeshift plan — {_e(title)}</h1>",
        f"<div class='sub'>{len(problem.workloads)} workloads, {len(problem.sites)} sites, "
        f"{sum(p.existing for p in problem.pools):,} existing nodes in "
        f"{len(problem.pools)} pools; solver {solution.status} in {solution.solve_s:.2f} s "
        f"({solution.variables} variables, {solution.constraints} constraints)</div>",
        "<div class='cards'>",
        *(
            f"<div class='card'>{_e(label)}<b class='{cls}'>{_e(value)}</b></div>"
            for label, value, cls in cards
        ),
        "</div>",
        "<h2>Charts</h2><div class='charts'>",
        f"<div class='chart' id='chart-cost'>{_cost_chart(result)}</div>",
        f"<div class='chart' id='chart-baselines'>{_baseline_chart(result)}</div>",
        f"<div class='chart wide' id='chart-latency'>{_latency_chart(result)}</div>",
        "</div>",
        _placement_table(result),
        _unplaced_section(result),
        _baseline_table(result),
        _pool_table(summary),
        _assumptions(result),
        _calibration(result),
        "</body></html>",
    ]
    return "\n".join(parts)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ms(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


# Plot coordinates are clamped here: matplotlib's transforms overflow near 1e300 and refuse inf.
_PLOT_MAX = 1e15
_PLOT_MIN_LOG = 1e-3


def _usd(value: float, *, cents: bool = True) -> str:
    """A dollar figure that stays short however large (1e300 would be 300 digits)."""
    if not math.isfinite(value):
        return "—"
    if abs(value) >= 1e12:
        return f"${value:.3g}"
    return f"${value:,.2f}" if cents else f"${value:,.0f}"


def _plottable(value: float, low: float = -_PLOT_MAX) -> float:
    """VALUE clamped into what a chart can draw; nan (nothing drawn) when not finite."""
    if not math.isfinite(value):
        return math.nan
    return min(max(value, low), _PLOT_MAX)


def _calibration(result: PlanResult) -> str:
    """One paragraph naming the host calibration the estimates used, when the result has one."""
    calibration = getattr(result, "calibration", None)
    if not isinstance(calibration, dict):
        return ""
    host = calibration.get("host") or "this host"
    # pipeline.py records the date as ``created`` (ISO 8601); ``date`` is accepted too.
    date = calibration.get("date") or calibration.get("created") or "an unrecorded date"
    date = str(date)[:16].replace("T", " ")
    figures = calibration.get("figures")
    shown = []
    if isinstance(figures, dict):
        # Scalars only: nested per-precision tables are in plan.json, not for one paragraph.
        scalars = [(k, v) for k, v in figures.items() if isinstance(v, int | float)]
        shown = [f"{k} {_figure_text(v)}" for k, v in scalars[:6]]
        if len(figures) > len(shown):
            shown.append(f"{len(figures) - len(shown)} more in plan.json")
    context = [str(calibration["source"])] if calibration.get("source") else []
    if isinstance(calibration.get("threads"), int):
        context.append(f"{calibration['threads']} threads")
    detail = "; ".join(x for x in (", ".join(context), ", ".join(shown)) if x)
    return (
        f"<p class='why' id='calibration'>Estimates rest on the host calibration of "
        f"{_e(_clip(host))} from {_e(_clip(date))}{_e(f' ({detail})' if detail else '')}.</p>"
    )


def _figure_text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return _clip(value, 40)


def _clip(value: object, chars: int = 128) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _placement_table(result: PlanResult) -> str:
    problem, solution = result.problem, result.solution
    rows = []
    for w in problem.workloads:
        option = solution.chosen.get(w.name)
        why = _e(result.explanations[w.name].line)
        if option is None:
            rows.append(
                f"<tr><td>{_e(w.name)}</td><td colspan='7' class='bad'>not placed</td>"
                f"<td class='why'>{why}</td></tr>"
            )
            continue
        sim = result.simulations.get(w.name)
        sim_ms = sim.quantile_ms(w.quantile) if sim is not None else None
        cls = "ok" if option.latency_ms <= w.slo_ms else "bad"
        keys = {v.name: v.model_key for v in w.variants}
        a = result.assumed.get((keys.get(option.variant, ""), option.target_id, option.precision))
        variant = _e(option.variant)
        if a and a.get("service_interval_ms"):  # the estimate's measured error, not a guess
            lo, hi = a["service_interval_ms"]
            variant += (
                f"<br><small>service {_ms(a['service_ms'])} ms, 80% {_ms(lo)}-{_ms(hi)}</small>"
            )
        rows.append(
            f"<tr><td>{_e(w.name)}</td><td>{_e(option.pool)}</td><td>{_e(option.tier)}</td>"
            f"<td class='num'>{option.replicas}</td><td>{variant}</td>"
            f"<td class='num {cls}'>{_ms(option.latency_ms)}</td><td class='num'>{_ms(sim_ms)}</td>"
            f"<td class='num'>{w.slo_label} {w.slo_ms:g}</td><td class='why'>{why}</td></tr>"
        )
    return (
        "<h2>Placement</h2><table id='plan-table'><thead><tr><th>workload</th><th>pool</th>"
        "<th>tier</th><th class='num'>replicas</th><th>variant</th>"
        "<th class='num'>predicted ms</th><th class='num'>simulated ms</th>"
        "<th class='num'>SLO ms</th><th>why</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _unplaced_section(result: PlanResult) -> str:
    if not result.solution.unplaced:
        return ""
    items = []
    for name in result.solution.unplaced:
        ex = result.explanations[name]
        items.append(
            f"<li><b>{_e(name)}</b>: {_e('; '.join(ex.binding))}<br>fix: "
            f"{_e(' or '.join(ex.fixes))}</li>"
        )
    return "<h2 class='bad'>Infeasible</h2><ul id='infeasible'>" + "".join(items) + "</ul>"


def _baseline_table(result: PlanResult) -> str:
    rows = []
    entries = [("plan", result.solution), *result.baselines.items()]
    for kind, sol in entries:
        rows.append(
            f"<tr><td>{_e(_BASELINE_LABELS[kind])}</td>"
            f"<td class='num'>{_usd(sol.total_usd)}</td>"
            f"<td class='num'>{_usd(sol.purchase_usd)}</td><td class='num'>{_usd(sol.energy_usd)}</td>"
            f"<td class='num'>{_usd(sol.instance_usd)}</td><td class='num'>{_usd(sol.egress_usd)}</td>"
            f"<td>{_e(', '.join(sol.slo_violations) or '—')}</td>"
            f"<td>{_e(', '.join(sol.policy_violations) or '—')}</td>"
            f"<td>{_e(', '.join(sol.unplaced) or '—')}</td></tr>"
        )
    return (
        "<h2>Against the baselines</h2><p class='why'>Each baseline is solved the same way "
        "(same options, same sizing, same solver) but restricted to one kind of placement; it "
        "may break SLOs and data policies, which it then minimizes first and reports.</p>"
        "<table id='baselines'><thead><tr><th>placement</th><th class='num'>$/month</th>"
        "<th class='num'>purchase</th><th class='num'>energy</th><th class='num'>instances</th>"
        "<th class='num'>egress</th><th>SLO violations</th><th>policy violations</th>"
        "<th>unplaced</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _pool_table(summary: dict[str, Any]) -> str:
    rows = [
        f"<tr><td>{_e(p['pool'])}</td><td>{_e(p['target'])}</td><td>{_e(p['tier'])}</td>"
        f"<td class='num'>{p['existing']}</td><td class='num'>{p['used']}</td>"
        f"<td class='num'>{p['added']}</td><td class='num'>{p['max_add']}</td></tr>"
        for p in summary["pools"]
        if p["used"] or p["existing"]
    ]
    return (
        "<h2>Node pools</h2><table id='pools'><thead><tr><th>pool</th><th>target</th>"
        "<th>tier</th><th class='num'>existing</th><th class='num'>used</th>"
        "<th class='num'>to add</th><th class='num'>max add</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _assumptions(result: PlanResult) -> str:
    p = result.problem
    notes = "".join(f"<li>{_e(n)}</li>" for n in p.notes)
    return (
        "<h2>How the numbers are made</h2><ul class='why'>"
        "<li>Latency = network round trip (+ payload transfer over the link) + M/M/c "
        "(Erlang C) waiting-time quantile at the <b>peak</b> rate + service time from "
        "<code>edgeshift estimate</code>. Service times are nearly constant, so the M/M/c wait "
        "over-states the real wait: predictions are conservative. The simulation (Poisson "
        "arrivals at peak, constant service) checks them; agreement means simulated ≤ "
        f"{AGREEMENT_FACTOR:.2f} × predicted.</li>"
        f"<li>Replicas: fewest that keep utilization at peak ≤ {p.headroom:.0%} and meet the "
        "SLO. Each replica is one whole node (nodes are not shared between workloads).</li>"
        f"<li>Monthly costs over {p.hours_per_month:g} h: owned nodes added = purchase / "
        "(lifetime × 12); existing nodes are sunk (no purchase cost) but their energy counts; "
        "energy = (idle + (active − idle) × mean utilization) × hours × site $/kWh; unused "
        "nodes are assumed powered off; cloud instances = $/h × hours (energy included); "
        "egress = payload × mean rate × link $/GB.</li>"
        f"{notes}</ul>"
    )


# ---- charts (matplotlib, SVG backend; fonts as paths so nothing is fetched) ----


def _svg(fig: Any, prefix: str) -> str:
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    FigureCanvasSVG(fig)
    buf = io.StringIO()
    # Glyphs as paths: the page needs no font; a fixed salt makes the output reproducible.
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "edgeshift"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    # Several SVGs share one page: give each its own id namespace.
    ids = set(re.findall(r'id="([^"]+)"', text))
    for ident in sorted(ids, key=len, reverse=True):
        text = text.replace(f'id="{ident}"', f'id="{prefix}-{ident}"')
        text = text.replace(f"#{ident})", f"#{prefix}-{ident})")
        text = text.replace(f'#{ident}"', f'#{prefix}-{ident}"')
    return text


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _cost_chart(result: PlanResult) -> str:
    problem, solution = result.problem, result.solution
    by_site: dict[str, dict[str, float]] = {}
    for option in solution.chosen.values():
        if option is None:
            continue
        tiers = by_site.setdefault(option.site, {})
        tiers[option.tier] = tiers.get(option.tier, 0.0) + option_cost_usd(
            problem, option, solution
        )
    fig = _figure(5.6, 3.4)
    ax = fig.add_subplot()
    sites = sorted(by_site, key=lambda s: -sum(by_site[s].values()))[:12]
    left = [0.0] * len(sites)
    for tier, color in _TIER_COLORS.items():
        values = [by_site[s].get(tier, 0.0) for s in sites]
        if any(values):
            ax.barh(sites, [_plottable(v) for v in values], left=left, color=color, label=tier)
            left = [_plottable(a + b) for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("USD per month")
    ax.set_title("Cost by site and tier")
    if sites:
        ax.legend(fontsize=8, loc="lower right")
    for i, (x, site) in enumerate(zip(left, sites, strict=True)):
        if math.isfinite(x):
            ax.text(x, i, f" {_usd(sum(by_site[site].values()))}", va="center", fontsize=8)
    ax.margins(x=0.25)
    return _svg(fig, "cost")


def _baseline_chart(result: PlanResult) -> str:
    entries = [("plan", result.solution), *result.baselines.items()]
    fig = _figure(5.6, 3.4)
    ax = fig.add_subplot()
    labels = [_BASELINE_LABELS[k] for k, _ in entries]
    totals = [_plottable(s.total_usd, 0.01) for _, s in entries]
    colors = ["#2e7d32", "#b5332e", "#e08a1e", "#2a7ab0"]
    ax.barh(labels, totals, color=colors[: len(entries)])
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("USD per month (log scale)")
    ax.set_title("The plan against the baselines")
    for i, (_, sol) in enumerate(entries):
        flags = []
        if sol.slo_violations:
            flags.append(f"{len(sol.slo_violations)} SLO violations")
        if sol.policy_violations:
            flags.append(f"{len(sol.policy_violations)} policy violations")
        if sol.unplaced:
            flags.append(f"{len(sol.unplaced)} unplaced")
        note = f" ({', '.join(flags)})" if flags else ""
        if math.isfinite(totals[i]):
            label = f" {_usd(sol.total_usd, cents=False)}{note}"
            ax.text(totals[i], i, label, va="center", fontsize=8)
    ax.margins(x=0.6)
    return _svg(fig, "base")


def _latency_chart(result: PlanResult) -> str:
    problem, solution = result.problem, result.solution
    workloads = problem.workloads[:40]  # a readable chart; the table lists every workload
    fig = _figure(11.2, max(2.2, 0.38 * len(workloads) + 1.0))
    ax = fig.add_subplot()
    names = [w.name for w in workloads]
    predicted = []
    for w in workloads:
        option = solution.chosen.get(w.name)
        predicted.append(_plottable(option.latency_ms, _PLOT_MIN_LOG) if option else math.nan)
    ax.barh(names, predicted, color="#2a7ab0", label="predicted (model)")
    sim_x = []
    for w in workloads:
        sim = result.simulations.get(w.name)
        sim_x.append(
            _plottable(sim.quantile_ms(w.quantile), _PLOT_MIN_LOG) if sim is not None else math.nan
        )
    ax.plot(sim_x, range(len(names)), "o", color="#ffb300", label="simulated", ms=6)
    slo_x = [_plottable(w.slo_ms, _PLOT_MIN_LOG) for w in workloads]
    ax.plot(slo_x, range(len(names)), "|", color="#c62828", ms=18, mew=2.5)
    ax.plot([], [], "|", color="#c62828", ms=12, mew=2.5, label="SLO")
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("ms at the SLO's percentile, peak rate (log scale)")
    ax.set_title("Latency against the SLO, per workload")
    ax.legend(fontsize=8, loc="lower right")
    return _svg(fig, "lat")
