"""``edgeshift fleet …`` against a real control plane on 127.0.0.1: every operator command with
--json, bad input as one line and a non-zero exit, and ``fleet serve`` as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edgeshift.cli.main import app
from edgeshift.fleet.server import FleetServerThread, FleetSettings

from .test_api import enrol_device, make_model_dir

runner = CliRunner()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServerThread]:
    data_dir = tmp_path_factory.mktemp("fleet-cli")
    with FleetServerThread(FleetSettings(data_dir=data_dir, port=0, tick_s=0.05)) as server:
        yield server


@pytest.fixture
def env(fleet: FleetServerThread) -> dict[str, str]:
    token_file = fleet.server.settings.data_dir / "operator.token"
    return {"EDGESHIFT_FLEET_URL": fleet.url, "EDGESHIFT_FLEET_TOKEN_FILE": str(token_file)}


def cli(env: dict[str, str], *args: str) -> Any:
    result = runner.invoke(app, ["fleet", *args, "--json"], env=env)
    assert result.exit_code == 0, (args, result.output, result.stderr)
    return json.loads(result.stdout)


def refused(env: dict[str, str], *args: str) -> str:
    result = runner.invoke(app, ["fleet", *args], env=env)
    assert result.exit_code != 0, (args, result.output)
    assert "Traceback" not in result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_operator_commands_end_to_end(
    fleet: FleetServerThread, env: dict[str, str], tmp_path: Path
) -> None:
    model = make_model_dir(tmp_path / "model")
    art = cli(env, "artifact", "publish", str(model), "--name", "cli", "--version", "1")
    assert art["ref"]["artifact_id"] == "cli-v1"
    assert [a["ref"]["artifact_id"] for a in cli(env, "artifact", "list")] == ["cli-v1"]
    assert cli(env, "artifact", "show", "cli-v1")["files"] == art["files"]

    token = cli(env, "enrol-token", "create", "--label", "site=x", "--ttl", "600")
    assert token["expires_at"] > time.time()
    for name in ("cli-a", "cli-b"):
        enrol_device(fleet, name, {"site": "x"})
    devices = cli(env, "device", "list", "--label", "site=x")
    assert [d["device_id"] for d in devices] == ["cli-a", "cli-b"]
    assert cli(env, "device", "label", "cli-b", "site=x", "room=2")["labels"]["room"] == "2"
    assert cli(env, "device", "show", "cli-b")["labels"] == {"site": "x", "room": "2"}
    assert cli(env, "group", "create", "site-x", "--label", "site=x")["devices"] == 2
    assert [g["name"] for g in cli(env, "group", "list")] == ["site-x"]

    rollout = cli(env, "rollout", "create", "cli-v1", "--group", "site-x", "--waves", "50,100",
                  "--soak", "0", "--gate", "max_p95_ratio=off")  # fmt: skip
    rid = rollout["rollout_id"]
    assert (
        rollout["spec"]["waves"] == [50, 100] and rollout["spec"]["gates"]["max_p95_ratio"] is None
    )
    assert cli(env, "rollout", "pause", rid)["state"] == "paused"
    assert cli(env, "rollout", "show", rid)["state"] == "paused"
    assert cli(env, "rollout", "resume", rid)["state"] == "running"
    assert rid in [r["rollout_id"] for r in cli(env, "rollout", "list", "--active")]
    assert cli(env, "rollout", "cancel", rid)["state"] == "cancelled"
    assert rid not in [r["rollout_id"] for r in cli(env, "rollout", "list", "--active")]

    # A spec file's values stand unless a flag is given: defaults do not override it.
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"waves": [100], "soak_s": 7, "trial_s": 9}))
    second = cli(env, "rollout", "create", "cli-v1", "--spec", str(spec_file), "--shadow", "4")
    assert (second["spec"]["waves"], second["spec"]["soak_s"]) == ([100], 7)
    assert (second["spec"]["trial_s"], second["spec"]["shadow_s"]) == (9, 4)
    assert cli(env, "rollout", "rollback", second["rollout_id"])["state"] == "rolled_back"

    assert cli(env, "device", "revoke", "cli-a")["revoked"] is True
    root = runner.invoke(app, ["fleet", "root"], env=env)
    assert root.exit_code == 0 and json.loads(root.stdout)["signed"]["_type"] == "root"


def test_bad_input_is_one_line_and_a_non_zero_exit(env: dict[str, str], tmp_path: Path) -> None:
    assert "waves" in refused(env, "rollout", "create", "x-v1", "--waves", "10,5,100")
    assert "--waves" in refused(env, "rollout", "create", "x-v1", "--waves", "ten")
    assert "gates" in refused(env, "rollout", "create", "x-v1", "--gate", "bogus=1")
    assert "--gate" in refused(env, "rollout", "create", "x-v1", "--gate", "max_error_rate=x")
    assert "k=v" in refused(env, "group", "create", "g", "--label", "novalue")
    assert "not a directory" in refused(
        env, "artifact", "publish", str(tmp_path / "nope"), "--name", "a", "--version", "1"
    )
    no_token = {k: v for k, v in env.items() if k != "EDGESHIFT_FLEET_TOKEN_FILE"}
    assert "operator token" in refused(no_token, "device", "list")
    wrong = {**no_token, "EDGESHIFT_FLEET_TOKEN": "w" * 32}
    assert "not accepted" in refused(wrong, "device", "list")
    down = {**env, "EDGESHIFT_FLEET_URL": "http://127.0.0.1:9"}
    assert "cannot reach" in refused(down, "rollout", "list")


def test_unknown_ids_answer_with_the_servers_line(env: dict[str, str]) -> None:
    line = refused(env, "rollout", "pause", "nobody")
    assert "nobody" in line
    assert "nobody" in refused(env, "device", "show", "nobody")
    assert "nobody" in refused(env, "artifact", "show", "nobody")


def test_token_create_makes_a_working_operator_token(
    fleet: FleetServerThread, tmp_path: Path
) -> None:
    data_dir = fleet.server.settings.data_dir
    out = tmp_path / "ci.token"
    made = runner.invoke(
        app, ["fleet", "token", "create", "ci", "--data-dir", str(data_dir), "--out", str(out)]
    )
    assert made.exit_code == 0, made.output
    assert out.stat().st_mode & 0o777 == 0o600
    token = out.read_text().strip().split(":", 1)[1]
    answer = httpx.get(f"{fleet.url}/v1/devices", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200


def test_fleet_serve_runs_as_a_process_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    command = [str(Path(sys.executable).with_name("edgeshift"))]
    process = subprocess.Popen(
        [*command, "fleet", "serve", "--port", "0", "--data-dir", str(tmp_path / "d"), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert Path(ready["token_file"]) == tmp_path / "d" / "operator.token"
        assert httpx.get(ready["url"] + "/healthz").json() == {"status": "ok"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_apply_turns_plan_placements_into_rollouts(
    fleet: FleetServerThread, env: dict[str, str], tmp_path: Path
) -> None:
    cli(env, "artifact", "publish", str(make_model_dir(tmp_path / "cam")), "--name", "cam",
        "--version", "1")  # fmt: skip
    enrol_device(fleet, "gw-1", {"line": "1"})
    cli(env, "group", "create", "factory.gateway", "--label", "line=1")
    placement = {"workload": "cam", "placed": True, "site_kind": "edge", "tier": "cpu",
                 "pool": "factory/gateway", "precision": "int8"}  # fmt: skip
    cloud = {**placement, "workload": "llm", "site_kind": "cloud", "pool": "aws/g5"}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"workloads": [placement, cloud]}))
    planned = cli(env, "apply", str(plan), "--dry-run", "--waves", "100", "--soak", "0")
    assert [(s["artifact_id"], s["group"]) for s in planned] == [("cam-v1", "factory.gateway")]
    assert not [r for r in cli(env, "rollout", "list") if r["spec"]["artifact_id"] == "cam-v1"]
    started = cli(env, "apply", str(plan), "--waves", "100", "--soak", "0")
    assert [r["spec"]["group"] for r in started] == ["factory.gateway"]
    plan.write_text(json.dumps({"workloads": [{**placement, "workload": "nothing"}]}))
    assert "nothing" in refused(env, "apply", str(plan))
    plan.write_text("[]")
    assert "plan" in refused(env, "apply", str(plan))
