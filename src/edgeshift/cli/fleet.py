"""CLI: ``edgeshift fleet …`` — the control plane and the operators' commands (docs/fleet.md)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ValidationError

from edgeshift.errors import ConfigError, FleetError

fleet_app = typer.Typer(
    help="Roll models out to edge devices: control plane, devices, groups, artifacts, rollouts.",
    no_args_is_help=True,
)
token_app = typer.Typer(help="Operator API tokens.", no_args_is_help=True)
enrol_app = typer.Typer(help="One-time enrolment tokens for devices.", no_args_is_help=True)
device_app = typer.Typer(help="Enrolled devices.", no_args_is_help=True)
group_app = typer.Typer(help="Device groups (label selectors).", no_args_is_help=True)
artifact_app = typer.Typer(help="Signed model artifacts.", no_args_is_help=True)
rollout_app = typer.Typer(help="Staged rollouts.", no_args_is_help=True)
fleet_app.add_typer(token_app, name="token")
fleet_app.add_typer(enrol_app, name="enrol-token")
fleet_app.add_typer(device_app, name="device")
fleet_app.add_typer(group_app, name="group")
fleet_app.add_typer(artifact_app, name="artifact")
fleet_app.add_typer(rollout_app, name="rollout")

DEFAULT_URL = "http://127.0.0.1:8600"

SERVER = typer.Option(
    DEFAULT_URL, "--server", envvar="EDGESHIFT_FLEET_URL", help="The control plane's URL."
)
TOKEN_FILE = typer.Option(
    None,
    "--token-file",
    envvar="EDGESHIFT_FLEET_TOKEN_FILE",
    help="File with the operator token (name:token or a bare token); or set EDGESHIFT_FLEET_TOKEN.",
)
JSON = typer.Option(False, "--json", help="Print JSON instead of text.")
LABELS = typer.Option([], "--label", help="k=v (repeat for more).")


def register(app: typer.Typer) -> None:
    app.add_typer(fleet_app, name="fleet")


# --- helpers ---------------------------------------------------------------------------------


def _token(token_file: Path | None) -> str:
    from edgeshift.fleet.guard import parse_token_file

    if token_file is not None:
        return next(iter(parse_token_file(token_file).values()))
    token = os.environ.get("EDGESHIFT_FLEET_TOKEN", "").strip()
    if not token:
        raise FleetError(
            "no operator token — give --token-file FILE or set EDGESHIFT_FLEET_TOKEN (the"
            " control plane wrote one to DATA_DIR/operator.token on its first start)",
            401,
        )
    return token


def _client(server: str, token_file: Path | None) -> Any:
    from edgeshift.fleet.client import OperatorClient

    ca = os.environ.get("EDGESHIFT_FLEET_CA")  # a PEM CA for a control plane's own certificate
    return OperatorClient(server, _token(token_file), verify=ca or True)


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


def _emit(value: Any, json_output: bool, text: Callable[[Any], str] | None = None) -> None:
    if json_output or text is None:
        typer.echo(json.dumps(_dump(value), indent=None if json_output else 2))
    else:
        typer.echo(text(value))


def _labels(items: Sequence[str], flag: str = "--label") -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FleetError(f"{flag} {item!r} must be k=v", 400)
        labels[key] = value
    return labels


def _model(model: type[Any], data: dict[str, Any], what: str) -> Any:
    from edgeshift.fleet.guard import validation_line

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise FleetError(validation_line(what, exc), 400) from None


def _table(rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


# --- serve and tokens ------------------------------------------------------------------------


@fleet_app.command("serve")
def serve_command(
    db: str | None = typer.Option(
        None, "--db", help="SQLAlchemy URL (default: SQLite in DATA_DIR/fleet.db)."
    ),
    data_dir: Path = typer.Option(Path("fleet-data"), "--data-dir", help="Keys, TUF, uploads."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    port: int = typer.Option(8600, "--port", help="Port; 0 picks a free one."),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="Operator tokens, name:token per line (or one bare token)."
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate (HTTPS)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM key for --tls-cert."),
    json_output: bool = typer.Option(False, "--json", help="Print where it serves as JSON."),
) -> None:
    """Run the control plane until SIGTERM or Ctrl-C."""
    from edgeshift.fleet.server import FleetServer, FleetSettings, run_fleet_server
    from edgeshift.serve.security import TlsSettings

    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("give --tls-cert and --tls-key together")
    tls = TlsSettings(tls_cert, tls_key) if tls_cert and tls_key else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter on every start
    settings = FleetSettings(
        data_dir=data_dir, db_url=db, host=host, port=port, token_file=token_file, tls=tls
    )

    def started(server: FleetServer) -> None:
        token_path = token_file or data_dir / "operator.token"
        if json_output:
            line = {"url": server.url, "data_dir": str(data_dir), "token_file": str(token_path)}
            typer.echo(json.dumps(line))
        else:
            typer.echo(f"fleet control plane on {server.url}; operator token in {token_path}")
        sys.stdout.flush()

    run_fleet_server(settings, started)


@token_app.command("create")
def token_create_command(
    name: str = typer.Argument(..., help="The operator's name."),
    db: str | None = typer.Option(None, "--db", help="The control plane's database URL."),
    data_dir: Path = typer.Option(Path("fleet-data"), "--data-dir", help="Its data dir."),
    out: Path | None = typer.Option(None, "--out", help="Write name:token here (0600)."),
    json_output: bool = JSON,
) -> None:
    """Make an operator token (on the control plane's host: this opens its database)."""
    from edgeshift.fleet.schema import is_name
    from edgeshift.fleet.server import FleetSettings
    from edgeshift.fleet.store import Store

    if not is_name(name):
        raise FleetError(f"{name!r} is not a name — use letters, digits, '.', '_', '-'", 400)
    url = FleetSettings(data_dir=data_dir, db_url=db).database_url()
    if db is None and not (data_dir / "fleet.db").exists():
        raise ConfigError(f"no control plane database in {data_dir} — give --data-dir or --db")
    token = secrets.token_urlsafe(32)
    store = Store.open(url)
    try:
        store.add_operator_token(name, token, time.time())
    finally:
        store.close()
    if out is not None:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(f"{name}:{token}\n")
    shown = None if out is not None else token
    if json_output:
        typer.echo(json.dumps({"name": name, "token": shown, "file": out and str(out)}))
    else:
        typer.echo(f"wrote {name}'s token to {out}" if out else token)


@enrol_app.command("create")
def enrol_token_create_command(
    group: str | None = typer.Option(None, "--group", help="The group the device joins."),
    label: list[str] = LABELS,
    ttl: float = typer.Option(24 * 3600.0, "--ttl", help="Seconds until it expires."),
    server: str = SERVER,
    token_file: Path | None = TOKEN_FILE,
    json_output: bool = JSON,
) -> None:
    """Make a one-time enrolment token for one device."""
    from edgeshift.fleet.schema import EnrolmentTokenSpec

    spec = _model(
        EnrolmentTokenSpec,
        {"group": group, "labels": _labels(label), "ttl_s": ttl},
        "enrolment token",
    )
    with _client(server, token_file) as client:
        result = client.create_enrolment_token(spec)
    _emit(result, json_output, lambda r: r.token)


# --- devices and groups ----------------------------------------------------------------------


def _device_rows(devices: list[Any]) -> str:
    rows = [
        [
            d.device_id,
            "revoked" if d.revoked else ("online" if d.online else "offline"),
            (d.reported.active if d.reported else None) or "-",
            d.reported.phase.value if d.reported else "-",
            ",".join(f"{k}={v}" for k, v in sorted(d.labels.items())),
        ]
        for d in devices
    ]
    return _table(rows, ["DEVICE", "STATE", "SERVING", "PHASE", "LABELS"])


@device_app.command("list")
def device_list_command(
    group: str | None = typer.Option(None, "--group"),
    label: list[str] = LABELS,
    server: str = SERVER,
    token_file: Path | None = TOKEN_FILE,
    json_output: bool = JSON,
) -> None:
    """List devices (filter by group and labels)."""
    with _client(server, token_file) as client:
        _emit(client.list_devices(group, _labels(label)), json_output, _device_rows)


@device_app.command("show")
def device_show_command(
    device_id: str,
    server: str = SERVER,
    token_file: Path | None = TOKEN_FILE,
    json_output: bool = JSON,
) -> None:
    """One device: labels, desired and reported state."""
    with _client(server, token_file) as client:
        _emit(client.get_device(device_id), json_output)


@device_app.command("label")
def device_label_command(
    device_id: str,
    labels: list[str] = typer.Argument(..., help="k=v pairs: the device's new labels."),
    server: str = SERVER,
    token_file: Path | None = TOKEN_FILE,
    json_output: bool = JSON,
) -> None:
    """Replace a device's labels."""
    with _client(server, token_file) as client:
        _emit(client.set_labels(device_id, _labels(labels, "label")), json_output)


@device_app.command("revoke")
def device_revoke_command(
    device_id: str,
    server: str = SERVER,
    token_file: Path | None = TOKEN_FILE,
    json_output: bool = JSON,
) -> None:
    """Revoke a device: its signed requests are refused from now on."""
    with _client(server, token_file) as client:
        _emit(client.revoke_device(device_id), json_output, lambda d: f"revoked {d.device_id}")


@group_app.command("list")
def group_list_command(
    server: str = SERVER, token_file: Path | None = TOKEN_FILE, json_output: bool = JSON
) -> None:
    """List groups with their selectors and device counts."""
    with _client(server, token_file) as client:
        groups = client.list_groups()
    rows = [
        [g.name, ",".join(f"{k}={v}" for k, v in sorted(g.selector.items())), str(g.devices)]
        for g in groups
    ]
    _emit(groups, json_output, lambda _: _table(rows, ["GROUP", "SELECTOR", "DEVICES"]))


@group_app.command("create")
def group_create_command(
    name: str,
    label: list[str] = LABELS,
    server: str = SERVER,
    token_file: Path | None = TOKEN_FILE,
    json_output: bool = JSON,
) -> None:
    """Create (or replace) a group: the devices whose labels include every --label."""
    from edgeshift.fleet.schema import GroupSpec

    spec = _model(GroupSpec, {"name": name, "selector": _labels(label)}, "group")
    with _client(server, token_file) as client:
        _emit(client.put_group(spec), json_output, lambda g: f"group {g.name}: {g.devices} devices")


# --- artifacts -------------------------------------------------------------------------------


def _artifact_rows(artifacts: list[Any]) -> str:
    rows = [
        [a.ref.artifact_id, str(a.ref.length), a.ref.sha256[:12], str(len(a.files))]
        for a in artifacts
    ]
    return _table(rows, ["ARTIFACT", "BYTES", "SHA256", "FILES"])


@artifact_app.command("publish")
def artifact_publish_command(
    directory: Path = typer.Argument(..., help="An optimize output directory."),
    name: str = typer.Option(..., "--name", help="The model's name on the devices."),
    version: int = typer.Option(..., "--version", help="An integer >= 1, rising."),
    server: str = SERVER,
    token_file: Path | None = TOKEN_FILE,
    json_output: bool = JSON,
) -> None:
    """Pack DIRECTORY into a bundle, upload it, and have it signed into TUF."""
    from edgeshift.fleet.bundle import pack

    if not directory.is_dir():
        raise FleetError(f"{directory} is not a directory — give an optimize output folder", 400)
    with tempfile.TemporaryDirectory(prefix="edgeshift-bundle-") as tmp:
        bundle = Path(tmp) / "bundle.tar"
        pack(directory, bundle)
        with _client(server, token_file) as client:
            info = client.publish_artifact(bundle, name, version)
    _emit(info, json_output, lambda a: f"published {a.ref.artifact_id} ({a.ref.length} bytes)")


@artifact_app.command("list")
def artifact_list_command(
    server: str = SERVER, token_file: Path | None = TOKEN_FILE, json_output: bool = JSON
) -> None:
    """List published artifacts."""
    with _client(server, token_file) as client:
        _emit(client.list_artifacts(), json_output, _artifact_rows)


@artifact_app.command("show")
def artifact_show_command(
    artifact_id: str,
    server: str = SERVER,
    token_file: Path | None = TOKEN_FILE,
    json_output: bool = JSON,
) -> None:
    """One artifact: its TUF target, file hashes and optimize manifest."""
    with _client(server, token_file) as client:
        _emit(client.get_artifact(artifact_id), json_output)


@fleet_app.command("root")
def root_command(server: str = SERVER, token_file: Path | None = TOKEN_FILE) -> None:
    """Print the trusted TUF root for agents: edgeshift fleet root > root.json."""
    with _client(server, token_file) as client:
        sys.stdout.buffer.write(client.root_json())
    sys.stdout.flush()


# --- rollouts --------------------------------------------------------------------------------


def parse_waves(text: str) -> list[float] | dict[str, float]:
    """``1,10,50,100`` (cumulative percentages) or ``exp:START:FACTOR``."""
    try:
        if text.startswith("exp:"):
            _, start, factor = text.split(":")
            return {"start_percent": float(start), "factor": float(factor)}
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise FleetError(
            f"--waves {text!r}: give percentages like 1,10,50,100 or exp:1:10", 400
        ) from None


def parse_gates(items: Sequence[str]) -> dict[str, float | None]:
    gates: dict[str, float | None] = {}
    for key, value in _labels(items, "--gate").items():
        if value.lower() in ("none", "off"):
            gates[key] = None
            continue
        try:
            gates[key] = float(value)
        except ValueError:
            raise FleetError(f"--gate {key}={value!r}: give a number or 'off'", 400) from None
    return gates


def _rollout_line(info: Any) -> str:
    done = sum(1 for w in info.waves if w.finished_at is not None)
    line = f"{info.rollout_id}  {info.state.value}  wave {info.wave + 1}/{len(info.waves)}"
    line += f" ({done} done)  {info.spec.artifact_id}"
    return line + (f"  — {info.reason}" if info.reason else "")


@rollout_app.command("create")
def rollout_create_command(
    artifact: str = typer.Argument(..., help="The artifact id, e.g. minilm-v3."),
    group: str | None = typer.Option(None, "--group"),
    selector: list[str] = typer.Option([], "--selector", help="k=v label equality (repeat)."),
    waves: str | None = typer.Option(
        None, "--waves", help="1,10,50,100 (the default) or exp:1:10."
    ),
    soak: float | None = typer.Option(
        None, "--soak", help="Seconds each wave soaks after it installed (default 300)."
    ),
    shadow: float | None = typer.Option(
        None, "--shadow", help="Seconds a device runs the new model in shadow (default 30)."
    ),
    trial: float | None = typer.Option(
        None, "--trial", help="Seconds a device serves it on trial before it commits (default 30)."
    ),
    install_timeout: float | None = typer.Option(
        None,
        "--install-timeout",
        help="Seconds a wave's devices get to install before silence is a failure (default 600).",
    ),
    gate: list[str] = typer.Option([], "--gate", help="k=v, e.g. max_error_rate=0.02 (repeat)."),
    no_auto_rollback: bool = typer.Option(False, "--no-auto-rollback"),
    spec_file: Path | None = typer.Option(
        None, "--spec", help="A RolloutSpec JSON file; the options above override it."
    ),
    server: str = SERVER,
    token_file: Path | None = TOKEN_FILE,
    json_output: bool = JSON,
) -> None:
    """Start a staged rollout of ARTIFACT."""
    from edgeshift.fleet.schema import RolloutSpec

    data: dict[str, Any] = {}
    if spec_file is not None:
        try:
            loaded = json.loads(spec_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FleetError(f"cannot read --spec {spec_file}: {exc}", 400) from None
        if not isinstance(loaded, dict):
            raise FleetError(f"--spec {spec_file} must hold a JSON object", 400)
        data = loaded
    data["artifact_id"] = artifact
    if waves is not None:
        data["waves"] = parse_waves(waves)
    given = {
        "soak_s": soak,
        "shadow_s": shadow,
        "trial_s": trial,
        "install_timeout_s": install_timeout,
    }
    data.update({key: value for key, value in given.items() if value is not None})
    if group is not None:
        data["group"] = group
    if selector:
        data["selector"] = _labels(selector, "--selector")
    if gate:
        data["gates"] = {**data.get("gates", {}), **parse_gates(gate)}
    if no_auto_rollback:
        data["auto_rollback"] = False
    spec = _model(RolloutSpec, data, "rollout spec")
    with _client(server, token_file) as client:
        _emit(client.create_rollout(spec), json_output, _rollout_line)


@rollout_app.command("list")
def rollout_list_command(
    active: bool = typer.Option(False, "--active", help="Only pending, running or paused."),
    server: str = SERVER,
    token_file: Path | None = TOKEN_FILE,
    json_output: bool = JSON,
) -> None:
    """List rollouts."""
    with _client(server, token_file) as client:
        found = client.list_rollouts(active)
    _emit(found, json_output, lambda rs: "\n".join(map(_rollout_line, rs)) or "(none)")


@rollout_app.command("show")
def rollout_show_command(
    rollout_id: str,
    server: str = SERVER,
    token_file: Path | None = TOKEN_FILE,
    json_output: bool = JSON,
) -> None:
    """One rollout: waves, gate results, state."""
    with _client(server, token_file) as client:
        _emit(client.get_rollout(rollout_id), json_output)


def _action(action: str) -> Callable[..., None]:
    def command(
        rollout_id: str,
        server: str = SERVER,
        token_file: Path | None = TOKEN_FILE,
        json_output: bool = JSON,
    ) -> None:
        with _client(server, token_file) as client:
            result = client.rollout_action(rollout_id, action)
        _emit(result, json_output, lambda r: f"{r.rollout_id}: {r.state.value} — {r.message}")

    command.__doc__ = f"{action.capitalize()} a rollout."
    return command


for _action_name in ("pause", "resume", "cancel", "rollback"):
    rollout_app.command(_action_name)(_action(_action_name))


def _spec_lines(specs: list[Any]) -> str:
    lines = [f"{s.artifact_id} -> group {s.group}" for s in specs]
    return "\n".join(lines) or "(no fleet placements)"


@fleet_app.command("apply")
def apply_command(
    plan_file: Path = typer.Argument(..., help="plan.json from edgeshift plan."),
    waves: str | None = typer.Option(None, "--waves", help="1,10,50,100 or exp:1:10."),
    soak: float | None = typer.Option(None, "--soak", help="Seconds each wave soaks."),
    gate: list[str] = typer.Option([], "--gate", help="k=v, e.g. max_error_rate=0.02 (repeat)."),
    workload: list[str] = typer.Option(
        [], "--workload", help="Roll out only this plan workload (repeat); default: all."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the rollouts; start none."),
    server: str = SERVER,
    token_file: Path | None = TOKEN_FILE,
    json_output: bool = JSON,
) -> None:
    """Start one rollout per plan placement on an edge pool (to the pool's device group)."""
    from edgeshift.fleet.apply import plan_to_rollouts

    try:
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FleetError(
            f"cannot read plan {plan_file}: {exc} — give edgeshift plan's plan.json", 400
        ) from None
    if not isinstance(plan, dict):
        raise FleetError(
            f"{plan_file} is not a plan (a JSON object) — give edgeshift plan's plan.json", 400
        )
    defaults: dict[str, Any] = {}
    if waves is not None:
        defaults["waves"] = parse_waves(waves)
    if soak is not None:
        defaults["soak_s"] = soak
    if gate:
        defaults["gates"] = parse_gates(gate)
    with _client(server, token_file) as client:
        artifacts = {a.ref.artifact_id: a for a in client.list_artifacts()}
        specs = plan_to_rollouts(plan, artifacts, defaults, workload or None)
        if dry_run:
            _emit(specs, json_output, _spec_lines)
            return
        started = [client.create_rollout(spec) for spec in specs]
    _emit(
        started,
        json_output,
        lambda rs: "\n".join(map(_rollout_line, rs)) or "(no fleet placements)",
    )
