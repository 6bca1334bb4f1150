"""The agent's core with in-memory fakes: the journal, the spool, the state table, and the
update from download to commit, rollback, failure and recovery."""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeshift.fleet.agent import journal as journal_io
from edgeshift.fleet.agent.agent import Agent, AgentOptions
from edgeshift.fleet.agent.journal import Journal
from edgeshift.fleet.agent.shadow import compare_outputs
from edgeshift.fleet.agent.spool import Spool
from edgeshift.fleet.agent.spool import _read as spool_read
from edgeshift.fleet.agent.states import (
    ON_RESTART,
    TRANSITIONS,
    UPDATE_PHASES,
    TransitionError,
    check_transition,
)
from edgeshift.fleet.schema import ArtifactRef, DesiredState, Phase, TelemetryRecord

from .agent_helpers import FakeHost, FakeTransport, LocalInstaller, make_artifact, pack_artifact

FAST = AgentOptions(
    poll_wait_s=0.2,
    backoff_min_s=0.01,
    backoff_max_s=0.05,
    retry_failed_s=0.05,
    report_interval_s=0.05,
    trial_min_requests=5,
)


# --- journal, spool, state table -----------------------------------------------------------


def test_journal_round_trips_and_a_corrupt_one_reads_as_none(tmp_path: Path) -> None:
    j = Journal(phase=Phase.SHADOW, generation=7, last_good="a", trial_boots=2)
    journal_io.save(tmp_path, j)
    assert journal_io.load(tmp_path) == j
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "journal.json").write_text('{"phase": "shadow", "generation": ')  # torn
    assert journal_io.load(tmp_path) is None
    (tmp_path / "journal.json").write_text(json.dumps({"phase": "nonsense"}))
    assert journal_io.load(tmp_path) is None
    (tmp_path / "journal.json").unlink()
    assert journal_io.load(tmp_path) is None


def test_the_state_table_allows_only_its_transitions() -> None:
    assert set(TRANSITIONS) == set(Phase) == set(ON_RESTART)
    check_transition(Phase.IDLE, Phase.DOWNLOADING)
    for bad in [
        (Phase.IDLE, Phase.TRIAL),
        (Phase.DOWNLOADING, Phase.COMMITTED),
        (Phase.VERIFYING, Phase.TRIAL),
        (Phase.SHADOW, Phase.COMMITTED),
    ]:
        with pytest.raises(TransitionError):
            check_transition(*bad)
    # an update phase can always be abandoned (the control plane changed its mind)
    assert all(Phase.IDLE in TRANSITIONS[p] for p in UPDATE_PHASES)


def _record(i: int) -> TelemetryRecord:
    return TelemetryRecord(at=float(i), kind="event", stats=None, event=f"event {i:06d}")


def test_spool_stays_under_its_limit_dropping_the_oldest_and_counting(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=20_000, segment_max_bytes=2_000)
    for i in range(2_000):
        spool.append(_record(i))
    assert spool.size_bytes() <= 20_000
    kept = len(spool)
    assert spool.dropped == 2_000 - kept > 0
    sent: list[TelemetryRecord] = []

    async def send(batch):  # type: ignore[no-untyped-def]
        assert len(batch.records) <= 1000
        sent.extend(batch.records)

    assert asyncio.run(spool.flush(send)) == kept
    assert [r.event for r in sent] == [f"event {i:06d}" for i in range(2_000 - kept, 2_000)]
    assert len(spool) == 0


def test_spool_keeps_records_when_sending_fails_and_survives_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(10):
        spool.append(_record(i))

    async def down(batch):  # type: ignore[no-untyped-def]
        raise OSError("link down")

    with pytest.raises(OSError):
        asyncio.run(spool.flush(down))
    with (tmp_path / sorted(p.name for p in tmp_path.iterdir())[-1]).open("ab") as f:
        f.write(b'{"at": 1.0, "kind": "ev')  # a torn last line (power cut mid-append)
    reopened = Spool(tmp_path)
    got: list[TelemetryRecord] = []

    async def send(batch):  # type: ignore[no-untyped-def]
        got.extend(batch.records)

    asyncio.run(reopened.flush(send))
    assert [r.event for r in got] == [f"event {i:06d}" for i in range(10)]


def test_compare_outputs_top1_for_scores_allclose_otherwise() -> None:
    ref = {"scores": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}
    same_decision = {"scores": np.array([[0.3, 0.7], [0.6, 0.4]], np.float32)}
    agree, drift = compare_outputs(ref, same_decision)
    assert agree and drift == pytest.approx(0.2, abs=1e-6)
    flipped = {"scores": np.array([[0.9, 0.1], [0.8, 0.2]], np.float32)}
    assert not compare_outputs(ref, flipped)[0]
    reg = {"y": np.array([[1.0], [2.0]], np.float32)}
    assert compare_outputs(reg, {"y": reg["y"] + 1e-5})[0]
    assert not compare_outputs(reg, {"y": reg["y"] + 0.1})[0]
    assert not compare_outputs(reg, {"y": np.zeros((3, 1), np.float32)})[0]
    assert compare_outputs({"i": np.array([1, 2])}, {"i": np.array([1, 2])}) == (True, None)


# --- the update, with fakes -------------------------------------------------------------


class Rig:
    def __init__(self, tmp_path: Path, options: AgentOptions = FAST) -> None:
        self.tmp = tmp_path
        self.data_dir = tmp_path / "agent"
        self.transport = FakeTransport()
        self.host = FakeHost()
        self.installer = LocalInstaller()
        self.options = options
        self.refs: dict[int, ArtifactRef] = {}
        self.generation = 0

    def artifact(self, version: int, seed: int) -> ArtifactRef:
        src = make_artifact(self.tmp / f"src{version}", seed=seed)
        ref, files = pack_artifact(src, self.tmp / f"clf-{version}.tar", "clf", version)
        self.installer.signed[ref.sha256] = files
        self.transport.publish(ref, (self.tmp / f"clf-{version}.tar").read_bytes())
        self.refs[version] = ref
        return ref

    def want(self, ref: ArtifactRef | None, **kw: float) -> int:
        self.generation += 1
        params = {"shadow_s": 0.05, "shadow_min_requests": 3, "trial_s": 0.1, **kw}
        self.transport.want(DesiredState(generation=self.generation, artifact=ref, **params))
        return self.generation

    def agent(self) -> Agent:
        return Agent(self.data_dir, self.transport, self.host, self.installer, options=self.options)

    async def until(self, agent: Agent, done: Callable[[], bool], timeout_s: float = 10) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            async with asyncio.timeout(timeout_s):
                while not done():
                    if task.done():
                        task.result()
                    self.host.traffic(3)
                    await asyncio.sleep(0.01)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)


def _settled(agent: Agent, generation: int, phase: Phase) -> Callable[[], bool]:
    return lambda: agent.journal.generation == generation and agent.journal.phase is phase


def test_install_update_and_control_plane_rollback_switches_slots_without_download(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    v1, v2 = rig.artifact(1, seed=1), rig.artifact(2, seed=2)

    async def scenario() -> None:
        agent = rig.agent()
        g1 = rig.want(v1)
        await rig.until(agent, _settled(agent, g1, Phase.COMMITTED))
        assert agent.journal.last_good_ref == v1 and rig.host.active_slot == "a"
        g2 = rig.want(v2)
        await rig.until(agent, _settled(agent, g2, Phase.COMMITTED))
        assert agent.journal.last_good == "b" and rig.host.active_slot == "b"
        assert agent.journal.baseline_p95_ms is not None  # v1's p95 before v2 began
        downloads = len(rig.transport.downloads)
        g3 = rig.want(v1)  # the control plane rolls back
        await rig.until(agent, _settled(agent, g3, Phase.COMMITTED))
        assert len(rig.transport.downloads) == downloads
        assert agent.journal.last_good == "a" and rig.host.active_slot == "a"
        await rig.until(agent, lambda: rig.transport.reports[-1].generation == g3)

    asyncio.run(scenario())
    seen = rig.transport.phases()
    assert "shadow" in seen and "committed" in seen
    last = rig.transport.reports[-1]
    assert (last.active, last.last_good) == ("clf-v1", "clf-v1")
    assert not list((rig.data_dir / "downloads").iterdir())


def test_a_candidate_failing_its_trial_rolls_back_and_is_not_retried(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    v1, v2 = rig.artifact(1, seed=1), rig.artifact(2, seed=2)

    async def scenario() -> None:
        agent = rig.agent()
        await rig.until(agent, _settled(agent, rig.want(v1), Phase.COMMITTED))
        rig.host.fail_trial = True
        g2 = rig.want(v2, trial_s=5.0)
        await rig.until(agent, _settled(agent, g2, Phase.ROLLED_BACK))
        assert "error rate" in agent.journal.error
        assert agent.journal.last_good_ref == v1 and rig.host.active_slot == "a"
        assert g2 in agent.journal.refused_generations
        activations = len(rig.host.activations)
        await rig.until(agent, lambda: rig.transport.reports[-1].phase is Phase.ROLLED_BACK)
        await asyncio.sleep(0.1)
        assert len(rig.host.activations) == activations  # not tried again

    asyncio.run(scenario())


def test_disk_full_and_tampered_bundles_fail_while_last_good_keeps_serving(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    v1, v2 = rig.artifact(1, seed=1), rig.artifact(2, seed=2)

    async def scenario() -> None:
        agent = rig.agent()
        await rig.until(agent, _settled(agent, rig.want(v1), Phase.COMMITTED))
        agent.free_bytes = lambda _p: 1 << 20
        g2 = rig.want(v2)
        await rig.until(agent, _settled(agent, g2, Phase.FAILED))
        assert agent.journal.error.startswith("disk full: need ")
        assert rig.host.active_slot == "a"
        # space comes back, but the bundle was tampered with on the way
        agent.free_bytes = lambda _p: 1 << 40
        path = next(p for p in rig.transport.bundles if p.endswith(".2.tar"))
        data = bytearray(rig.transport.bundles[path])
        data[600] ^= 0xFF
        rig.transport.bundles[path] = bytes(data)
        await rig.until(agent, lambda: "sha256 mismatch" in agent.journal.error)
        assert agent.journal.phase is Phase.FAILED and rig.host.active_slot == "a"
        assert agent.journal.slots["b"] is None
        rig.installer.expired = True
        await rig.until(agent, lambda: "expired" in agent.journal.error)
        assert rig.host.active_slot == "a"

    asyncio.run(scenario())


def test_a_dropped_link_resumes_the_download_with_range(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    v1 = rig.artifact(1, seed=1)
    rig.transport.cut_after_bytes = 1500

    async def scenario() -> None:
        agent = rig.agent()
        await rig.until(agent, _settled(agent, rig.want(v1), Phase.COMMITTED))

    asyncio.run(scenario())
    starts = [start for _, start in rig.transport.downloads]
    assert starts == list(range(0, v1.length, 1500))


def test_offline_telemetry_is_spooled_and_sent_when_the_link_returns(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    v1 = rig.artifact(1, seed=1)

    async def scenario() -> None:
        agent = rig.agent()
        await rig.until(agent, _settled(agent, rig.want(v1), Phase.COMMITTED))
        rig.transport.online = False
        reports = len(rig.transport.reports)
        # reports are retried with the link's backoff; serving stats spool once an interval
        await rig.until(
            agent, lambda: agent.links.reports_failed >= 3 and len(agent.links.spool) >= 3
        )
        assert len(rig.transport.reports) == reports
        rig.transport.online = True
        await rig.until(agent, lambda: len(agent.links.spool) == 0)

    asyncio.run(scenario())
    kinds = {r.kind for b in rig.transport.telemetry_batches for r in b.records}
    assert kinds == {"serving", "event"}


def test_an_install_reports_downloading_and_its_outcome_at_once_and_the_steps_between_later(
    tmp_path: Path,
) -> None:
    # A report interval longer than the test: every report seen is a prompt one.
    rig = Rig(tmp_path, replace(FAST, report_interval_s=60.0))
    v1 = rig.artifact(1, seed=1)

    async def scenario() -> None:
        agent = rig.agent()
        g1 = rig.want(v1)
        await rig.until(agent, _settled(agent, g1, Phase.COMMITTED))
        await rig.until(agent, lambda: rig.transport.phases()[-1:] == ["committed"])
        events = [r.event for r in _read_spool(agent)]
        for step in ("verifying", "shadow", "trial"):
            assert f"phase {step} generation {g1}" in events  # in the telemetry still

    asyncio.run(scenario())
    # the first report: where it is at (re)start; then one for DOWNLOADING (built when it is
    # sent: latest phase wins, so a fast download already says verifying) and the outcome
    after_start = rig.transport.phases()[1:]
    assert len(after_start) == 2 and after_start[-1] == "committed"
    assert after_start[0] in ("downloading", "verifying")


def _read_spool(agent: Agent) -> list[TelemetryRecord]:
    return [r for seg in agent.links.spool._segments() for r in spool_read(seg)]


def test_the_spool_rides_on_the_report_and_a_backlog_follows_as_telemetry_posts(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    v1 = rig.artifact(1, seed=1)

    async def scenario() -> None:
        agent = rig.agent()
        await rig.until(agent, _settled(agent, rig.want(v1), Phase.COMMITTED))
        # online: the serving stats and phase events arrive inside reports, no telemetry POST
        await rig.until(agent, lambda: sum(bool(r.telemetry) for r in rig.transport.reports) >= 3)
        assert rig.transport.telemetry_posts == 0
        carried = [r for rep in rig.transport.reports for r in rep.telemetry]
        assert {r.kind for r in carried} == {"serving", "event"}
        # offline long enough to fill several segments: the first rides on the report, the
        # rest follow as POSTs, and nothing is lost
        rig.transport.online = False
        for i in range(400):
            agent.links.spool.append(TelemetryRecord(at=float(i), kind="event", event="x" * 400))
        segments = len(agent.links.spool._segments())
        assert segments >= 2
        rig.transport.online = True
        await rig.until(agent, lambda: len(agent.links.spool) == 0)
        assert rig.transport.telemetry_posts >= segments - 1

    asyncio.run(scenario())
    sent = [r for b in rig.transport.telemetry_batches for r in b.records if r.event == "x" * 400]
    assert len(sent) == 400


def test_restart_with_a_corrupt_journal_serves_the_slot_that_verifies(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    v1, v2 = rig.artifact(1, seed=1), rig.artifact(2, seed=2)

    async def scenario() -> None:
        agent = rig.agent()
        await rig.until(agent, _settled(agent, rig.want(v1), Phase.COMMITTED))
        await rig.until(agent, _settled(agent, rig.want(v2), Phase.COMMITTED))
        (rig.data_dir / "journal.json").write_bytes(b"\x00garbage")
        # and v2's slot is damaged: v1 in the other slot is what verifies
        (rig.data_dir / "slots" / "b" / "model.onnx").write_bytes(b"broken")
        rig.host.activations.clear()
        again = rig.agent()
        await again.recover()
        assert again.journal.last_good == "a" and again.journal.last_good_ref == v1
        assert rig.host.active_slot == "a"

    asyncio.run(scenario())


def test_a_crash_in_trial_counts_as_a_failed_boot_and_the_third_rolls_back(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    v1, v2 = rig.artifact(1, seed=1), rig.artifact(2, seed=2)

    async def scenario() -> None:
        agent = rig.agent()
        await rig.until(agent, _settled(agent, rig.want(v1), Phase.COMMITTED))
        g2 = rig.want(v2, trial_s=30.0)
        await rig.until(agent, lambda: agent.journal.phase is Phase.TRIAL)
        # what a kill -9 leaves: the journal in TRIAL; restart it twice more in trial
        for boots in (1, 2):
            assert journal_io.load(rig.data_dir).trial_boots == boots  # type: ignore[union-attr]
            again = rig.agent()
            await rig.until(again, lambda a=again, b=boots: a.journal.trial_boots == b + 1)  # type: ignore[misc]
        last = rig.agent()
        await last.recover()
        assert rig.host.active_slot == "a"  # last-good serves first, at every start
        await last.resume()
        assert last.journal.phase is Phase.ROLLED_BACK and g2 in last.journal.refused_generations
        assert "3 times" in last.journal.error and rig.host.active_slot == "a"

    asyncio.run(scenario())


def test_enospc_mid_download_fails_keeps_serving_and_a_new_desired_state_supersedes(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    v1, v2, v3 = rig.artifact(1, seed=1), rig.artifact(2, seed=2), rig.artifact(3, seed=3)
    real_download = rig.transport.download

    async def full_disk(target_path: str, part_file: Path, expected_length: int) -> Path:
        part_file.write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    async def scenario() -> None:
        agent = rig.agent()
        await rig.until(agent, _settled(agent, rig.want(v1), Phase.COMMITTED))
        rig.transport.download = full_disk  # type: ignore[method-assign]
        g2 = rig.want(v2)
        await rig.until(agent, _settled(agent, g2, Phase.FAILED))
        assert agent.journal.error.startswith("disk full while downloading clf-v2")
        assert rig.host.active_slot == "a"
        rig.transport.download = real_download  # type: ignore[method-assign]
        # v2 would now shadow for long; the control plane changes its mind to v3 meanwhile
        g3 = rig.want(v3, shadow_s=0.05)
        await rig.until(agent, _settled(agent, g3, Phase.COMMITTED))
        assert agent.journal.last_good_ref == v3

    asyncio.run(scenario())


def test_a_new_desired_state_mid_shadow_abandons_the_candidate(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    v1, v2 = rig.artifact(1, seed=1), rig.artifact(2, seed=2)

    async def scenario() -> None:
        agent = rig.agent()
        await rig.until(agent, _settled(agent, rig.want(v1), Phase.COMMITTED))
        rig.want(v2, shadow_s=60.0)
        await rig.until(agent, lambda: agent.journal.phase is Phase.SHADOW)
        g3 = rig.want(v1)  # roll back before it got anywhere
        await rig.until(agent, _settled(agent, g3, Phase.COMMITTED))
        assert rig.host.active_slot == "a" and rig.host.shadow is None
        assert agent.journal.last_good == "a" and len(rig.transport.downloads) == 2

        def events() -> list[str]:
            return [r.event for b in rig.transport.telemetry_batches for r in b.records]

        # the abandoned update, in the telemetry sent at the next report interval
        await rig.until(agent, lambda: any(e.startswith("phase idle") for e in events()))

    asyncio.run(scenario())


def test_shadow_and_trial_look_each_tick_and_end_on_their_deadline() -> None:
    from edgeshift.fleet.agent.agent import TICK_S, _tick

    assert _tick(10.0) == TICK_S  # far from the deadline: a tick
    assert _tick(TICK_S / 5) == TICK_S / 5  # the deadline comes first: wake on it
    assert _tick(0.0) == TICK_S and _tick(-1.0) == TICK_S  # past it (shadow waits for requests)
