"""Real agents (``edgeshift agent`` subprocesses) against the real control plane on 127.0.0.1:
enrol, install over TUF, serve throughout, and come back from a SIGKILL in every phase."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeshift.fleet.agent.agent import CRASH_ENV
from edgeshift.fleet.client import OperatorClient
from edgeshift.fleet.schema import EnrolmentTokenSpec, Phase, RolloutSpec, RolloutState
from edgeshift.fleet.server import FleetServerThread, FleetSettings

from .agent_helpers import make_artifact

BODY = {
    "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]
}


class Fleet:
    def __init__(self, root: Path, thread: FleetServerThread, operator: OperatorClient) -> None:
        self.root, self.thread, self.operator = root, thread, operator
        self.root_json = root / "root.json"
        self.root_json.write_bytes(operator.root_json())

    def publish(self, version: int, seed: int) -> str:
        from edgeshift.fleet import bundle

        src = make_artifact(self.root / f"src-{version}", seed=seed)
        (src / "notes.txt").write_text(f"release {version}")  # same weights, new bytes
        tar = self.root / f"clf-{version}.tar"
        bundle.pack(src, tar)
        return self.operator.publish_artifact(tar, "clf", version).ref.artifact_id

    def roll_out(self, artifact_id: str, case: str) -> str:
        spec = RolloutSpec(
            artifact_id=artifact_id,
            selector={"case": case},
            waves=[100],
            soak_s=0,
            shadow_s=0.3,
            shadow_min_requests=0,
            trial_s=0.3,
            install_timeout_s=120,
        )
        return self.operator.create_rollout(spec).rollout_id

    def wait_reported(self, device_id: str, artifact_id: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = self.operator.get_device(device_id).reported
            if r and r.phase is Phase.COMMITTED and r.active == artifact_id:
                return
            time.sleep(0.1)
        raise AssertionError(f"{device_id} never reported {artifact_id} committed: {r}")

    def wait_rollout_done(self, rollout_id: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.operator.get_rollout(rollout_id).state is not RolloutState.RUNNING:
                return
            time.sleep(0.1)
        raise AssertionError(f"rollout {rollout_id} still running")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    settings = FleetSettings(data_dir=root / "cp", port=0, tick_s=0.2, recheck_s=0.2)
    with (
        FleetServerThread(settings) as thread,
        OperatorClient(thread.url, thread.operator_token) as operator,
    ):
        yield Fleet(root, thread, operator)


class AgentProcess:
    """``edgeshift agent --json`` as a real process; traffic on a thread counts answers."""

    def __init__(self, fleet: Fleet, data_dir: Path, case: str, crash_at: str | None = None):
        env = {**os.environ}
        env.pop(CRASH_ENV, None)
        if crash_at:
            env[CRASH_ENV] = crash_at
        args = [
            sys.executable,
            "-m",
            "edgeshift",
            "agent",
            "--server",
            fleet.thread.url,
            "--data-dir",
            str(data_dir),
            "--port",
            "0",
            "--threads",
            "1",
            "--json",
            "--log-level",
            "warning",
        ]
        if not (data_dir / "identity.json").exists():
            token = fleet.operator.create_enrolment_token(EnrolmentTokenSpec(labels={"case": case}))
            args += ["--enrol-token", token.token, "--root", str(fleet.root_json), "--name", case]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.stderr: list[bytes] = []
        threading.Thread(target=self._drain, daemon=True).start()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise AssertionError(b"".join(self.stderr).decode()[-2000:])
        self.ready = json.loads(line)
        self.ok = self.failed = 0
        self._stop = threading.Event()
        self._traffic = threading.Thread(target=self._send, daemon=True)
        self._traffic.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _send(self) -> None:
        url = f"{self.ready['serving']}/v2/models/clf/infer"
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set() and self.proc.poll() is None:
                try:
                    ok = client.post(url, json=BODY).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if self.proc.poll() is None:
                    self.ok, self.failed = self.ok + ok, self.failed + (not ok)
                time.sleep(0.01)

    def wait_killed(self, timeout_s: float = 60) -> int:
        code = self.proc.wait(timeout_s)
        self._stop.set()
        return code

    def stop(self) -> int:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def test_an_agent_enrols_installs_over_tuf_and_answers_throughout(
    fleet: Fleet, tmp_path: Path
) -> None:
    v1 = fleet.publish(1, seed=1)
    agent = AgentProcess(fleet, tmp_path / "dev", "e2e")
    try:
        device = agent.ready["device_id"]
        assert agent.ready["active"] is None
        assert oct((tmp_path / "dev" / "identity.json").stat().st_mode & 0o777) == "0o600"
        rollout = fleet.roll_out(v1, "e2e")
        fleet.wait_reported(device, v1)
        fleet.wait_rollout_done(rollout)
        assert fleet.operator.get_rollout(rollout).state is RolloutState.COMPLETED
        ok_before = agent.ok
        time.sleep(0.3)
        assert agent.ok > ok_before
    finally:
        assert agent.stop() == 0
    again = AgentProcess(fleet, tmp_path / "dev", "e2e")  # a restart needs no token
    try:
        assert again.ready["active"] == v1 and again.ready["device_id"] == device
    finally:
        again.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    "phase",
    [Phase.DOWNLOADING, Phase.VERIFYING, Phase.SHADOW, Phase.TRIAL, Phase.COMMITTED],
)
def test_kill_9_in_every_phase_comes_back_serving_and_finishes(
    fleet: Fleet, tmp_path: Path, phase: Phase
) -> None:
    case = f"kill-{phase.value}"
    versions = {p: i for i, p in enumerate(Phase)}
    v_old = fleet.publish(10 + 2 * versions[phase], seed=1)
    v_new = fleet.publish(11 + 2 * versions[phase], seed=1)
    data_dir = tmp_path / case
    first = AgentProcess(fleet, data_dir, case)
    device = first.ready["device_id"]
    try:
        rollout = fleet.roll_out(v_old, case)
        fleet.wait_reported(device, v_old)
        fleet.wait_rollout_done(rollout)
    finally:
        first.stop()
    fleet.roll_out(v_new, case)
    doomed = AgentProcess(fleet, data_dir, case, crash_at=phase.value)
    assert doomed.ready["active"] == v_old
    assert doomed.wait_killed() == -signal.SIGKILL
    journal = json.loads((data_dir / "journal.json").read_text())
    assert journal["phase"] == phase.value
    back = AgentProcess(fleet, data_dir, case)
    try:
        # serving a good model at once: last-good, or the new one when it was committed
        assert back.ready["active"] == (v_new if phase is Phase.COMMITTED else v_old)
        deadline = time.monotonic() + 10
        while back.ok == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert back.ok > 0
        fleet.wait_reported(device, v_new)
    finally:
        back.stop()
