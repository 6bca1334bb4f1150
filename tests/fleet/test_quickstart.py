"""docs/fleet.md's quick start, run as written: every command of its bash block, in order, as a
real process (the control plane and the agent in the background), on free ports."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "fleet.md"
BIN = Path(sys.executable).parent


def _commands() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Quick start") :]
    block = section[section.index("```bash") + len("```bash") : section.index("```\n", 10)]
    joined = block.replace("\\\n", " ")
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {timeout_s} s")


@pytest.mark.slow
def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    commands = _commands()
    assert any(c.startswith("edgeshift agent") for c in commands), commands
    cp_port, device_port = _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("EDGESHIFT_FLEET_TOKEN", None)
    # The doc's commands use the default control plane URL (port 8600): point them at ours.
    env["EDGESHIFT_FLEET_URL"] = f"http://127.0.0.1:{cp_port}"
    background: list[subprocess.Popen[bytes]] = []
    outputs: dict[str, str] = {}
    token = ""
    try:
        for command in commands:
            command = command.replace("8600", str(cp_port)).replace("8011", str(device_port))
            command = command.replace("TOKEN", token) if token else command
            if command.startswith("export "):
                name, _, value = command[len("export ") :].partition("=")
                env[name] = value
                continue
            if command.endswith("&"):
                argv = shlex.split(command[:-1])
                if argv[:3] == ["edgeshift", "fleet", "serve"]:
                    argv += ["--port", str(cp_port)]
                log = open(tmp_path / f"bg{len(background)}.log", "wb")  # noqa: SIM115
                background.append(
                    subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=log)
                )
                _wait_port(cp_port if "fleet serve" in command else device_port, 60)
                continue
            if "rollout list" in command:  # wait for the rollout the previous line started
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    listed = subprocess.run(
                        [*shlex.split(command), "--json"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    if json.loads(listed.stdout)[0]["state"] == "completed":
                        break
                    time.sleep(1)
            run, _, redirect = command.partition(">")
            argv = shlex.split(run)
            done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{command}: {done.stderr}"
            if redirect:
                (tmp_path / redirect.strip()).write_text(done.stdout)
            outputs[command] = done.stdout
            if "enrol-token create" in command:
                token = json.loads(done.stdout)["token"]
        rollouts = next(v for k, v in outputs.items() if "rollout list" in k)
        assert "completed" in rollouts and "digits-v1" in rollouts
        devices = next(v for k, v in outputs.items() if "device list" in k)
        assert re.search(r"dev1\s+online\s+digits-v1\s+committed", devices), devices
        served = json.loads(next(v for k, v in outputs.items() if k.startswith("curl")))
        assert served["name"] == "digits" and served["versions"] == ["1"]
    finally:
        for process in reversed(background):
            process.send_signal(signal.SIGTERM)
        for process in reversed(background):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
