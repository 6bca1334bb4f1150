"""CLI: ``edgeshift targets`` (list / show / host), ``edgeshift estimate``, ``edgeshift compare``."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from edgeshift.cli.render import console, err_console, human_bytes, print_json, progress_enabled
from edgeshift.errors import TargetError
from edgeshift.model.shapes import parse_shape_overrides
from edgeshift.targets.catalog import HOST_ID, get_target, load_catalog, parse_target_list
from edgeshift.targets.compare import compare as run_compare
from edgeshift.targets.estimate import Estimate
from edgeshift.targets.estimate import estimate as run_estimate
from edgeshift.targets.host import (
    PinnedCalibration,
    detect_host,
    host_target,
    load_calibration_file,
    save_calibration_file,
)
from edgeshift.targets.schema import TIERS, Quantity, Target

targets_app = typer.Typer(
    help="Hardware targets: list the catalog, show one, calibrate this host.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _warn(line: str) -> None:
    err_console.print(f"[yellow]warning:[/] {line}", highlight=False)


def _resolve(target_id: str, json_output: bool, pinned: PinnedCalibration | None = None) -> Target:
    # The host calibrates on first use: show its progress bar (the library stays silent).
    if target_id == HOST_ID:
        return host_target(progress=progress_enabled(json_output), calibration=pinned, warn=_warn)
    return get_target(target_id)


def _pinned(path: Path | None) -> PinnedCalibration | None:
    return load_calibration_file(path) if path is not None else None


_CALIBRATION_HELP = (
    "Pin the host calibration: a JSON file from `edgeshift targets host --save FILE` "
    "(default: this host's cached calibration)."
)


def _fmt(x: float, unit: str = "") -> str:
    if not math.isfinite(x):
        return "—"
    return f"{x:,.4g}{unit}"


def _price_text(t: Target) -> str:
    if t.usd_per_hour is not None:
        return f"${t.usd_per_hour:.4g}/h"
    return f"${t.purchase_usd:,.4g} / {t.lifetime_years:g} y"


@targets_app.callback()
def targets_list(
    ctx: typer.Context,
    tier: str | None = typer.Option(None, "--tier", help=f"Only one tier: {', '.join(TIERS)}."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the catalog (default), or run a subcommand: show ID, host."""
    if ctx.invoked_subcommand is not None:
        return
    if tier is not None and tier not in TIERS:
        raise TargetError(f"unknown tier {tier!r} — use one of {', '.join(TIERS)}")
    rows = [t for t in load_catalog().values() if tier is None or t.tier == tier]
    rows.sort(key=lambda t: (TIERS.index(t.tier), t.id))
    if json_output:
        print_json([t.model_dump(mode="json", exclude_none=True) for t in rows])
        return
    table = Table(
        title=f"hardware targets ({len(rows)}; `edgeshift targets host` for this machine)"
    )
    for col in ("id", "tier", "cores", "fp32 GFLOP/s", "best peak", "GB/s", "RAM", "price"):
        table.add_column(
            col, justify="left" if col in ("id", "tier") else "right", no_wrap=col == "id"
        )
    for t in rows:
        best = max(t.precisions, key=t.peak)
        table.add_row(
            t.id, t.tier, f"{t.cores.value:g}", _fmt(t.peak("fp32")),
            f"{_fmt(t.peak(best))} {best}", _fmt(t.mem_bandwidth_gbs.value),
            human_bytes(t.ram_bytes), _price_text(t),
        )  # fmt: skip
    console.print(table)


def _show(t: Target, json_output: bool) -> None:
    if json_output:
        print_json(t.model_dump(mode="json", exclude_none=True))
        return
    table = Table(title=f"{t.id} — {t.name}", show_lines=False)
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_column("source / derivation", overflow="fold")

    def q(name: str, qty: Quantity | None, text: str | None = None) -> None:
        if qty is not None:
            table.add_row(name, text or _fmt(qty.value), qty.provenance)

    table.add_row("tier · isa", f"{t.tier} · {t.isa}", "")
    table.add_row("simd", ", ".join(t.simd) or "—", "")
    q("cores", t.cores)
    q("clock GHz", t.clock_ghz)
    for p, qty in t.peak_gops.items():
        q(f"peak {p} {'GOP' if p == 'int8' else 'GFLOP'}/s", qty)
    q("memory GB/s", t.mem_bandwidth_gbs)
    q("RAM", t.ram, human_bytes(t.ram_bytes))
    if t.flash is not None:
        q("flash", t.flash, human_bytes(t.flash.bytes))
    if t.llc is not None:
        q("last-level cache", t.llc, human_bytes(t.llc.bytes))
    q("power idle W", t.power.idle_w)
    q("power active W", t.power.active_w)
    q("price USD/h", t.price.usd_per_hour)
    q("purchase USD", t.price.purchase_usd)
    q("lifetime years", t.price.lifetime_years)
    q("runtime RAM", t.runtime_overhead, human_bytes(t.runtime_overhead.bytes))
    q("call overhead µs", t.call_overhead_us)
    q("op overhead µs", t.op_overhead_us)
    q("host link GB/s", t.host_link_gbs)
    table.add_row("runtimes", ", ".join(t.runtimes), "")
    table.add_row("precisions", ", ".join(t.precisions), "")
    console.print(table)
    if t.calibration is not None:
        c = t.calibration
        cal = Table(title=f"calibration ({c.created}, {c.seconds:.1f} s, {c.threads} threads)")
        cal.add_column("measured")
        cal.add_column("value", justify="right")
        for prec, g in c.achieved_gops.items():
            eff = c.efficiency.get(f"gemm_{prec}")
            frac = f" ({eff:.0%} of peak)" if eff else ""
            cal.add_row(f"GEMM {prec}", f"{g:,.1f} G/s{frac}")
        cal.add_row("Conv fp32", f"{c.conv_gflops:,.1f} GFLOP/s ({c.efficiency['conv']:.0%})")
        cal.add_row("copy bandwidth (numpy)", f"{c.dram_copy_gbs:.1f} GB/s")
        cal.add_row("elementwise, DRAM-sized", f"{c.elementwise_gbs:.1f} GB/s")
        cal.add_row("elementwise, cache-sized", f"{c.cache_gbs:.1f} GB/s")
        for prec, call in c.call_overhead_us.items():
            op = c.op_overhead_us.get(prec, 0.0)
            conv = c.op_overhead_us.get(f"{prec}_conv", op)
            cal.add_row(f"per call / op / conv, {prec}", f"{call:.1f} / {op:.2f} / {conv:.2f} µs")
        cal.add_row("runtime RSS", human_bytes(c.runtime_overhead_bytes))
        console.print(cal)
    if t.notes:
        err_console.print(f"[dim]{t.notes}[/]")


@targets_app.command("show")
def targets_show(
    target_id: str = typer.Argument(..., metavar="ID", help="A catalog id, or host."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every field of one target with its source or derivation."""
    _show(_resolve(target_id, json_output), json_output)


@targets_app.command("host")
def targets_host(
    recalibrate: bool = typer.Option(
        False, "--recalibrate", help="Measure again, ignore the cache."
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="When measuring: one round at smaller sizes (~7x sooner, less precise), for slow"
        " or emulated hosts.",
    ),
    save: Path | None = typer.Option(
        None, "--save", help="Also write the calibration to FILE, to pin with --calibration."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Detect and calibrate this machine (cached; about 40 s the first time)."""
    t = host_target(
        recalibrate=recalibrate, progress=progress_enabled(json_output), warn=_warn, quick=quick
    )
    _show(t, json_output)
    if save is not None and t.calibration is not None:
        save_calibration_file(t.calibration, detect_host(), save)
        err_console.print(f"wrote {save} (pin it with --calibration {save})", highlight=False)


def _render_estimate(e: Estimate) -> None:
    fit = "[green]fits[/]" if e.fits else "[bold red]does not fit[/]"
    table = Table(title=f"{e.model} on {e.target_id} · {e.variant} · batch {e.batch}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    flash = ""
    if e.flash_required_bytes is not None and e.flash_available_bytes is not None:
        flash = f"; flash {human_bytes(e.flash_required_bytes)} of {human_bytes(e.flash_available_bytes)}"
    rows = [
        ("fit", fit),
        ("RAM", f"{human_bytes(e.ram_required_bytes)} of {human_bytes(e.ram_available_bytes)}{flash}"),
        ("latency", _fmt(e.latency_ms, " ms") + f" (fixed {e.overhead_ms:.3g} ms)"),
        ("80% interval" if e.interval_coverage == 0.8 else "interval", interval_text(e)),
        ("throughput", _fmt(e.throughput_items_s, " items/s") + (f" ({e.streams} streams)" if e.streams > 1 else "")),
        ("energy", _fmt(e.energy_j * 1e3, " mJ/item")),
        ("cost", _fmt(e.usd_per_million, " USD per million")),
    ]  # fmt: skip
    if e.measured is not None:
        m = e.measured
        ratio = e.latency_ms / m.p50_ms if m.p50_ms > 0 else math.inf
        inside = ""
        if e.interval_ms is not None:
            lo, hi = e.interval_ms
            inside = "; inside the interval" if lo <= m.p50_ms <= hi else "; OUTSIDE the interval"
        rows.insert(4, ("measured (bench)", f"{m.p50_ms:,.4g} ms p50, {m.p90_ms:,.4g} ms p90 on "
                        f"{m.backend} {m.precision}: estimate x{ratio:.2f}{inside}"))  # fmt: skip
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print(f"assumes: {e.variant}", markup=False)
    console.print(e.fit_reason, markup=False)
    if e.breakdown:
        bd = Table(title="per op class (one call)")
        for col in ("class", "nodes", "GFLOP", "MiB moved", "bound", "ms", "of which dispatch"):
            bd.add_column(col, justify="left" if col in ("class", "bound") else "right")
        for b in e.breakdown:
            bd.add_row(
                b.op_class, str(b.nodes), f"{b.flops / 1e9:.4g}", f"{b.bytes / (1 << 20):.3g}",
                b.bound, f"{b.ms:.4g}", f"{b.overhead_ms:.3g}",
            )  # fmt: skip
        console.print(bd)
    console.print(f"interval: {e.interval_basis}", markup=False)
    for note in e.notes:
        console.print(f"  · {note}", markup=False, style="dim")


def interval_text(e: Estimate) -> str:
    """``3.7-5.1 ms`` (the estimate's interval), or ``—`` when none was measured."""
    if e.interval_ms is None:
        return "—"
    lo, hi = e.interval_ms
    return f"{lo:,.3g}-{hi:,.3g} ms"


_SHAPE_HELP = "NAME=DIMS for an input (1x3x224x224) or a symbolic dim (seq=128)."


def estimate_command(
    model: Path = typer.Argument(..., help="A .onnx file or an optimize artifact directory."),
    target: str = typer.Option(
        ..., "--target", "-t", help="A target id (`edgeshift targets`) or host."
    ),
    batch: int = typer.Option(1, "--batch", help="Items per inference call."),
    shape: list[str] = typer.Option([], "--shape", help=_SHAPE_HELP),
    precision: str | None = typer.Option(
        None, "--precision", "-p", help="fp32, fp16, bf16 or int8 (default: the fastest usable)."
    ),
    usd_per_kwh: float = typer.Option(
        0.15, "--usd-per-kwh", help="Electricity price for owned devices."
    ),
    utilization: float = typer.Option(
        1.0, "--utilization", help="Busy fraction of the device, (0, 1]."
    ),
    calibration: Path | None = typer.Option(None, "--calibration", help=_CALIBRATION_HELP),
    measure: bool = typer.Option(
        False, "--measure", help="On the host, also time the model with `bench` and show both."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Fit, latency, throughput, energy and cost of MODEL on one target, with the breakdown."""
    if not 0 < utilization <= 1:
        raise TargetError(f"--utilization must be in (0, 1], not {utilization}")
    if measure and target != HOST_ID:
        raise TargetError(
            f"--measure times the model on this machine, not on {target} — use --target host"
        )
    pinned = _pinned(calibration)
    t = _resolve(target, json_output, pinned)
    shapes = parse_shape_overrides(shape)
    e = run_estimate(model, t, batch=batch, precision=precision, shapes=shapes,
                     usd_per_kwh=usd_per_kwh, utilization=utilization,
                     calibration=pinned)  # fmt: skip
    if measure:
        e.measured = _measure(model, e, shapes, json_output)
    if json_output:
        print_json(e)
        return
    _render_estimate(e)


def _measure(model: Path, e: Estimate, shapes: dict, json_output: bool) -> object:
    from edgeshift.bench import bench

    if e.precision == "int8" and e.recipe is None and "int8" not in (e.runtime, ""):
        stored_int8 = any("int8" in n for n in e.notes)  # a float model at int8: not built yet
        if stored_int8:
            raise TargetError(
                "--measure: an int8 estimate of a float model has nothing to time — build the "
                "variant with `edgeshift optimize` and measure that"
            )
    # ORT runs the stored graph (an int8 graph stays int8); OpenVINO takes the precision hint.
    precision = e.precision if e.runtime == "openvino" else None
    return bench(model, backend=e.runtime, precision=precision, batch=e.batch, shapes=shapes,
                 duration_s=3.0, progress=progress_enabled(json_output))  # fmt: skip


def compare_command(
    model: Path = typer.Argument(..., help="A .onnx file or an optimize artifact directory."),
    targets: str = typer.Option(
        ..., "--targets", help="Comma-separated target ids (host allowed)."
    ),
    slo_ms: float | None = typer.Option(None, "--slo-ms", help="Latency SLO per call in ms."),
    batch: int = typer.Option(1, "--batch", help="Items per inference call."),
    shape: list[str] = typer.Option([], "--shape", help=_SHAPE_HELP),
    precision: str | None = typer.Option(
        None, "--precision", "-p", help="Use this precision where a target runs it."
    ),
    usd_per_kwh: float = typer.Option(
        0.15, "--usd-per-kwh", help="Electricity price for owned devices."
    ),
    utilization: float = typer.Option(
        1.0, "--utilization", help="Busy fraction of each device, (0, 1]."
    ),
    calibration: Path | None = typer.Option(None, "--calibration", help=_CALIBRATION_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The same figures on several targets, cheapest first among those meeting the SLO."""
    if not 0 < utilization <= 1:
        raise TargetError(f"--utilization must be in (0, 1], not {utilization}")
    ids = parse_target_list(targets)
    pinned = _pinned(calibration)
    resolved = [_resolve(i, json_output, pinned) for i in ids]
    c = run_compare(model, resolved, slo_ms=slo_ms, batch=batch, precision=precision,
                    shapes=parse_shape_overrides(shape), usd_per_kwh=usd_per_kwh,
                    utilization=utilization, calibration=pinned)  # fmt: skip
    if json_output:
        print_json(c)
        return
    slo = f" · SLO {slo_ms:g} ms" if slo_ms is not None else ""
    table = Table(title=f"{c.model} · batch {c.batch}{slo}")
    cols = (
        "target",
        "tier",
        "assumes",
        "fits",
        "latency ms",
        "80% interval",
        "items/s",
        "mJ/item",
        "USD/million",
        "SLO",
    )
    for col in cols:
        left = col in ("target", "tier", "assumes")
        table.add_column(col, justify="left" if left else "right", no_wrap=col == "target")
    for e in c.rows:
        table.add_row(
            e.target_id, c.tiers.get(e.target_id, ""), e.variant, "yes" if e.fits else "[red]no[/]",
            _fmt(e.latency_ms), interval_text(e), _fmt(e.throughput_items_s), _fmt(e.energy_j * 1e3),
            _fmt(e.usd_per_million), "[green]ok[/]" if c.meets_slo[e.target_id] else "[red]miss[/]",
        )  # fmt: skip
    console.print(table)
    console.print(c.answer, markup=False)
    bases = {e.interval_basis for e in c.rows if e.interval_basis}
    for basis in sorted(bases):
        console.print(f"  interval: {basis}", markup=False, style="dim")
    for e in c.rows:
        if not e.fits:
            console.print(f"  · {e.target_id}: {e.fit_reason}", markup=False, style="dim")


def register(app: typer.Typer) -> None:
    app.add_typer(targets_app, name="targets")
    app.command("estimate")(estimate_command)
    app.command("compare")(compare_command)
