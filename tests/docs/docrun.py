"""Run one document's commands in order, as a reader would in one terminal.

Each document gets its own working directory (with copies of the repository paths the docs
name, such as ``examples/``); environment changes (``export``) and ``cd`` carry from one
command to the next. Background commands run in their own process group; servers are
waited for until their health endpoint answers, and everything still running is stopped
(SIGTERM, then SIGKILL) when the document ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.docs.doccmd import DocCommand

# Paths of the repository that commands in the docs read (copied, never written in place).
REPO_INPUTS = ("examples", "tests/mcu/fixtures")
COMMAND_TIMEOUT_S = 300.0
SERVER_READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
# Set by the shell, not by the reader: never carried to the next command.
_SHELL_VARS = frozenset({"_", "SHLVL", "PWD", "OLDPWD"})


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


class DocTerminal:
    """One reader's terminal for one document."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.cwd = workdir
        self.env = dict(env)
        self.background: list[tuple[DocCommand, subprocess.Popen[bytes], Path]] = []
        self._state = workdir.parent / f"{workdir.name}.state"
        self._state.mkdir(exist_ok=True)
        self._count = 0

    def run(self, cmd: DocCommand, timeout_s: float = COMMAND_TIMEOUT_S) -> CommandResult:
        if cmd.background:
            return self._start(cmd)
        env_file, pwd_file = self._state / "env", self._state / "pwd"
        script = f"set -o pipefail\ntrap 'env -0 > {env_file}; pwd > {pwd_file}' EXIT\n{cmd.text}\n"
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            out, err = proc.communicate()
            return CommandResult(-1, _text(out), _text(err), timed_out=True)
        if env_file.is_file():
            pairs = env_file.read_bytes().split(b"\0")
            self.env = {
                k: v
                for k, _, v in (p.decode("utf-8", "replace").partition("=") for p in pairs if p)
                if k not in _SHELL_VARS
            }
            self.cwd = Path(pwd_file.read_text().strip())
        return CommandResult(proc.returncode, _text(out), _text(err))

    def _start(self, cmd: DocCommand) -> CommandResult:
        self._count += 1
        log = self._state / f"background-{self._count}.log"
        server = cmd.server
        if server is not None and _port_in_use(server[0]):
            return CommandResult(1, "", f"port {server[0]} is already in use on this machine")
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                ["bash", "-c", cmd.foreground_text],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.background.append((cmd, proc, log))
        if server is None:
            return CommandResult(0, "", "")
        port, path, tls = server
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return CommandResult(
                    proc.returncode or 1, "", f"exited before it answered:\n{_tail(log)}"
                )
            if _answers(port, path, tls):
                return CommandResult(0, _tail(log), "")
            time.sleep(0.25)
        return CommandResult(
            -1, "", f"no answer on {path} of port {port}:\n{_tail(log)}", timed_out=True
        )

    def close(self) -> list[str]:
        """Stop every background command; return a line per one that had failed by itself."""
        problems = []
        for cmd, proc, log in self.background:
            if proc.poll() is not None and proc.returncode != 0:
                problems.append(f"{cmd.id} exited {proc.returncode} by itself:\n{_tail(log)}")
            _stop(proc)
        self.background.clear()
        return problems


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # the whole group: bash and what it started
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their shell


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _answers(port: int, path: str, tls: bool) -> bool:
    scheme = "https" if tls else "http"
    context = None
    if tls:  # the docs' self-signed certificate: reachability is all that is checked here
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(
            f"{scheme}://127.0.0.1:{port}{path}", timeout=2, context=context
        ) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""
