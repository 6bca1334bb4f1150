"""CLI: edgeshift plan SCENARIO.yaml — place every workload where it is cheapest within its SLO."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from edgeshift.cli.render import console, err_console, print_json, progress_enabled, to_jsonable
from edgeshift.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)


def plan(
    scenario: Path = typer.Argument(..., help="scenario YAML (see docs/plan.md)"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="directory for plan.json and report.html [default: ./plan-<name>]"
    ),
    json_output: bool = typer.Option(False, "--json", help="print plan.json to stdout"),
    simulate: bool = typer.Option(
        True, "--simulate/--no-simulate", help="check the plan by discrete-event simulation"
    ),
    calibration: Path | None = typer.Option(
        None,
        "--calibration",
        help="pin the host calibration: a file from `edgeshift targets host --save FILE` "
        "(default: this host's cached one)",
    ),
) -> None:
    """Place every workload of SCENARIO at the cheapest spot that meets its SLO and data policy,
    compare with all-cloud-GPU / all-cloud-CPU / all-edge baselines, and write a report."""
    from edgeshift.plan.pipeline import plan_scenario, plan_summary
    from edgeshift.plan.report import render_report

    out_dir = out if out is not None else Path(f"plan-{scenario.stem}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file — give a directory for the report")
    if progress_enabled(json_output):
        with err_console.status("planning") as status:
            result = plan_scenario(
                scenario, simulate=simulate, progress=status.update, calibration=calibration
            )
    else:
        result = plan_scenario(scenario, simulate=simulate, calibration=calibration)
    summary = plan_summary(result)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "plan.json").write_text(json.dumps(to_jsonable(summary), indent=2) + "\n")
        (out_dir / "report.html").write_text(render_report(result, summary))
    except OSError as exc:
        raise ConfigError(f"cannot write to {out_dir} ({exc.strerror}) — choose --out DIR") from exc
    if json_output:
        print_json(summary)
    else:
        _render(summary, out_dir)
    if not summary["feasible"]:
        # The plan and its reasons are written; the exit code tells scripts it is incomplete.
        raise typer.Exit(1)


def _render(summary: dict, out_dir: Path) -> None:
    table = Table(title=f"plan: {summary['scenario'] or 'scenario'}", title_justify="left")
    for col in ("workload", "placement", "×", "predicted", "simulated", "SLO", "$/month"):
        table.add_column(col, justify="right" if col in ("×", "$/month") else "left")
    for w in summary["workloads"]:
        slo = f"p{round(w['slo']['quantile'] * 100)} {w['slo']['ms']:g} ms"
        if not w["placed"]:
            table.add_row(w["workload"], "[red]not placed[/]", "", "", "", slo, "")
            continue
        sim = w["simulated_ms"]
        a = w.get("assumes") or {}
        assumes = f" · {a['runtime']} {a['precision']}" if a else ""
        if a.get("service_interval_ms"):
            lo, hi = a["service_interval_ms"]
            assumes += f" · service {a['service_ms']:.3g} ms, 80% {lo:.3g}-{hi:.3g}"
        table.add_row(
            w["workload"],
            f"{w['pool']} ({w['variant']}{assumes})",
            str(w["replicas"]),
            f"{w['predicted_ms']:.2f} ms",
            "—" if sim is None else f"{sim:.2f} ms",
            slo,
            f"{w['usd_per_month']:,.2f}",
        )
    console.print(table)
    for w in summary["workloads"]:
        console.print(f"  {w['explanation']}", markup=False)
    console.print()
    total = summary["total_usd_per_month"]
    console.print(f"total: [bold]${total:,.2f}[/] per month", highlight=False)
    for kind, base in summary["baselines"].items():
        flags = []
        for key, label in (("slo_violations", "SLO"), ("policy_violations", "policy")):
            if base[key]:
                flags.append(f"{len(base[key])} {label} violations")
        if base["unplaced"]:
            flags.append(f"cannot run {', '.join(base['unplaced'])}")
        extra = f" ({'; '.join(flags)})" if flags else ""
        on = f" on the {base['compared_workloads']} it runs" if base["unplaced"] else ""
        console.print(
            f"  vs {kind}: ${base['total_usd_per_month']:,.2f}{extra} — the plan saves "
            f"${base['savings_usd_per_month']:,.2f}/month{on}",
            markup=False,
        )
    cal = summary.get("calibration")
    if cal:
        console.print(
            f"  estimates rest on the host calibration of {cal['host']} ({cal['created']}, "
            f"{cal['source']})",
            markup=False,
        )
    else:
        console.print("  estimates rest on default efficiencies (no host calibration)")
    if not summary["feasible"]:
        err_console.print("[yellow]some workloads could not be placed: see the reasons above[/]")
    console.print(f"wrote {out_dir / 'plan.json'} and {out_dir / 'report.html'}", markup=False)
