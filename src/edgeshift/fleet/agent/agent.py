"""The agent's core: recover from the journal, then act on desired state through the update
state table (states.py), persisting each phase before entering it.

``Agent(data_dir, transport, host, installer)`` holds no global state and starts no thread:
many run in one event loop (the fleet benchmark). Blocking work (verification, unpacking)
goes to asyncio's default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgeshift.errors import ArtifactVerificationError, EdgeshiftError, FleetError
from edgeshift.fleet.agent import journal as journal_io
from edgeshift.fleet.agent import slots
from edgeshift.fleet.agent.download import (
    DISK_MARGIN_BYTES,
    FreeBytes,
    check_disk_space,
    consistent_target_path,
    disk_free_bytes,
    part_path,
    remove_stale_parts,
)
from edgeshift.fleet.agent.host import ModelHost, ServingWindow
from edgeshift.fleet.agent.journal import Journal, Slot, other_slot
from edgeshift.fleet.agent.links import Links
from edgeshift.fleet.agent.shadow import Comparator
from edgeshift.fleet.agent.slots import Installer
from edgeshift.fleet.agent.states import MAX_TRIAL_BOOTS, ON_RESTART, Resume, check_transition
from edgeshift.fleet.schema import (
    ArtifactRef,
    DesiredState,
    DeviceReport,
    Phase,
    ServingStats,
    TelemetryBatch,
)

log = logging.getLogger("edgeshift.agent")

# Test hook: EDGESHIFT_AGENT_CRASH_AT=<phase> makes the agent SIGKILL itself right after it
# persisted that phase (the crash-consistency tests kill it in every state this way).
CRASH_ENV = "EDGESHIFT_AGENT_CRASH_AT"
# How often shadow and trial look at their numbers; each ends on its deadline to the tick's
# precision of the event loop, not a tick late (see _tick).
TICK_S = 0.25


class Transport(Protocol):
    """The signed requests the agent makes (DeviceTransport, or a fake in tests)."""

    async def desired(self, generation: int, wait_s: float) -> DesiredState | None: ...
    async def report(self, report: DeviceReport) -> None: ...
    async def telemetry(self, batch: TelemetryBatch) -> int: ...
    async def download(self, target_path: str, part_file: Path, expected_length: int) -> Path: ...


@dataclass(frozen=True)
class AgentOptions:
    poll_wait_s: float = 30.0  # long poll
    backoff_min_s: float = 1.0  # link errors: doubling, with jitter, up to backoff_max_s
    backoff_max_s: float = 60.0
    retry_failed_s: float = 30.0  # a FAILED install is tried again after this (doubling)
    report_interval_s: float = 15.0  # serving stats reported and spooled this often
    disk_margin_bytes: int = DISK_MARGIN_BYTES
    # Local trial checks (the rollout's gates are the control plane's; these catch a candidate
    # that is plainly broken, offline too).
    trial_max_error_rate: float = 0.05
    trial_max_p95_ratio: float = 3.0
    trial_min_requests: int = 20  # p95 is judged from this many requests on
    shadow_max_error_rate: float = 0.05
    crash_at: Phase | None = None  # CRASH_ENV
    agent_version: str = ""


class _Superseded(Exception):
    """The control plane changed the desired artifact mid-update."""


class Agent:
    def __init__(
        self,
        data_dir: Path,
        transport: Transport,
        host: ModelHost,
        installer: Installer,
        *,
        options: AgentOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        free_bytes: FreeBytes = disk_free_bytes,
    ) -> None:
        self.data_dir = data_dir
        self.transport = transport
        self.host = host
        self.installer = installer
        self.options = options or AgentOptions()
        self.clock = clock
        self.wall = wall
        self.free_bytes = free_bytes
        self.journal = Journal()
        self.active: ArtifactRef | None = None  # serving now
        self.links = Links(self)
        self._latest: DesiredState | None = None  # highest generation seen
        self._changed = asyncio.Event()
        self._retry_at: float | None = None
        self._baseline: ServingWindow | None = None
        self._shadow_stats: tuple[int, float | None, float | None] = (0, None, None)
        # The slot this process just unpacked (every file hashed against the signed manifest
        # as it was written): SHADOW re-reads a slot only after a restart.
        self._fresh: tuple[Slot, ArtifactRef] | None = None
        for sub in ("downloads", "slots", "spool"):
            (data_dir / sub).mkdir(parents=True, exist_ok=True)

    # --- state and journal ---

    def _persist(self, **changes: object) -> None:
        self.journal = self.journal.model_copy(update=changes)
        journal_io.save(self.data_dir, self.journal)

    def _enter(self, phase: Phase, **changes: object) -> None:
        """Persist PHASE (and CHANGES) before doing anything of it; report it."""
        check_transition(self.journal.phase, phase)
        self._persist(phase=phase, **changes)
        log.info("phase %s (generation %d)", phase.value, self.journal.generation)
        if self.options.crash_at == phase:
            os.kill(os.getpid(), signal.SIGKILL)
        self.links.report_soon()

    def serving_stats(self) -> ServingStats:
        window = self.host.stats()
        samples, agreement, drift = self._shadow_stats
        base = window.stats()
        return base.model_copy(
            update={
                "baseline_p95_ms": self.journal.baseline_p95_ms,
                "shadow_samples": samples,
                "shadow_agreement": agreement,
                "shadow_drift": drift,
            }
        )

    # --- start ---

    async def recover(self) -> None:
        """Serve a good model, then note what the interrupted update needs."""
        loaded = journal_io.load(self.data_dir)
        verify = self.installer
        if loaded is None:
            best, held = await asyncio.to_thread(slots.best_verified, verify, self.data_dir)
            loaded = Journal(last_good=best, slots=held)
            journal_io.save(self.data_dir, loaded)
        elif loaded.last_good is not None and not await asyncio.to_thread(
            slots.verifies, verify, self.data_dir, loaded.last_good, loaded.last_good_ref
        ):
            other = other_slot(loaded.last_good)
            ok = other != loaded.candidate and await asyncio.to_thread(
                slots.verifies, verify, self.data_dir, other, loaded.slot_ref(other)
            )
            held = dict(loaded.slots)
            held[loaded.last_good] = None
            loaded = loaded.model_copy(
                update={"last_good": other if ok else None, "slots": held, "phase": Phase.IDLE}
            )
            journal_io.save(self.data_dir, loaded)
        self.journal = loaded
        await self._serve_last_good()
        if loaded.desired is not None:
            self._latest = loaded.desired

    async def _serve_last_good(self) -> None:
        slot, ref = self.journal.last_good, self.journal.last_good_ref
        if slot is None or ref is None or self.active == ref:
            return
        await self.host.activate(slots.slot_dir(self.data_dir, slot), ref.name)
        self.active = ref

    async def resume(self) -> None:
        """Carry on with the update the journal was in when the agent stopped."""
        j = self.journal
        how = ON_RESTART[j.phase]
        if how is Resume.NOTHING or j.desired is None or j.desired.artifact is None:
            return
        if how is Resume.TRIAL and j.trial_boots >= MAX_TRIAL_BOOTS:
            await self._finish(
                Phase.ROLLED_BACK,
                f"candidate {j.desired.artifact.artifact_id} stopped the agent in trial "
                f"{j.trial_boots} times — rolled back, not retried",
            )
            return
        first = {
            Resume.DOWNLOAD: Phase.DOWNLOADING,
            Resume.VERIFY: Phase.VERIFYING,
            Resume.SHADOW: Phase.SHADOW,
            Resume.TRIAL: Phase.TRIAL,
        }[how]
        # Re-entering the phase it crashed in: the table allows X -> X only via this path.
        self.journal = self.journal.model_copy(update={"phase": _before(first)})
        await self._update(first)

    # --- acting on desired state ---

    def offer(self, desired: DesiredState) -> None:
        """A desired state from the control plane (the poller calls this)."""
        if self._latest is None or desired.generation > self._latest.generation:
            self._latest = desired
            self._changed.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Recover, resume, then follow desired state until STOP is set."""
        await self.recover()
        background = self.links.start(stop)
        try:
            await _unless_stopped(self.resume(), stop)
            while not stop.is_set():
                await _unless_stopped(self.act(), stop)
                await self._wait_for_change(stop)
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _wait_for_change(self, stop: asyncio.Event) -> None:
        timeout = None if self._retry_at is None else max(0.0, self._retry_at - self.clock())
        waiters = [asyncio.ensure_future(self._changed.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        self._changed.clear()

    async def act(self) -> None:
        """Bring the device to the latest desired state, if it is not there."""
        d = self._latest
        j = self.journal
        if d is None or d.artifact is None or d.generation in j.refused_generations:
            return
        ref = d.artifact
        if j.phase is Phase.FAILED and d.generation == j.generation:
            if self._retry_at is None or self.clock() < self._retry_at:
                return
        elif d.generation <= j.generation and j.phase is not Phase.IDLE:
            return
        self._retry_at = None
        if j.last_good_ref == ref:
            if d.generation != j.generation or j.phase is not Phase.COMMITTED:
                self._enter(Phase.COMMITTED, generation=d.generation, desired=d, error="")
            return
        other = other_slot(j.last_good)
        if (
            j.last_good is not None
            and j.slot_ref(other) == ref
            and await asyncio.to_thread(slots.verifies, self.installer, self.data_dir, other, ref)
        ):
            # A rollback by the control plane: the artifact is still in the other slot.
            self._enter(
                Phase.COMMITTED,
                generation=d.generation,
                desired=d,
                last_good=other,
                candidate=None,
                error="",
            )
            await self._serve_last_good()
            return
        self._baseline = self.host.watch()
        self._persist(
            generation=d.generation,
            desired=d,
            trial_boots=0,
            error="",
            baseline_p95_ms=None,
            failures=0 if d.generation != j.generation else j.failures,
        )
        await self._update(Phase.DOWNLOADING)

    async def _update(self, phase: Phase) -> None:
        handlers = {
            Phase.DOWNLOADING: self._download,
            Phase.VERIFYING: self._verify,
            Phase.SHADOW: self._shadow,
            Phase.TRIAL: self._trial,
        }
        try:
            while phase in handlers:
                phase = await handlers[phase]()
        except _Superseded:
            await self._abandon()
        finally:
            if self._baseline is not None:
                self.host.unwatch(self._baseline)
                self._baseline = None

    def _check_superseded(self) -> None:
        d, mine = self._latest, self.journal.desired
        if d is not None and mine is not None and d.generation > mine.generation:
            if d.artifact == mine.artifact:
                self._persist(generation=d.generation, desired=d)  # same artifact: carry on
            else:
                raise _Superseded

    async def _abandon(self) -> None:
        await self._stop_shadow()
        self._enter(Phase.IDLE, candidate=None)
        await self._serve_last_good()

    async def _finish(self, phase: Phase, error: str = "") -> None:
        """FAILED or ROLLED_BACK: persist, then make sure last-good serves."""
        j = self.journal
        changes: dict[str, object] = {"error": error, "candidate": None}
        if phase is Phase.ROLLED_BACK:
            changes["refused_generations"] = [*j.refused_generations[-31:], j.generation]
        else:
            failures = j.failures + 1
            changes["failures"] = failures
            delay = min(self.options.retry_failed_s * 2 ** (failures - 1), 3600.0)
            self._retry_at = self.clock() + delay
        log.warning("%s: %s", phase.value, error)
        self._enter(phase, **changes)
        await self._stop_shadow()
        if self.active != j.last_good_ref:
            self.active = None
            await self._serve_last_good()

    # --- the phases ---

    def _candidate(self) -> tuple[Slot, ArtifactRef]:
        j = self.journal
        assert j.desired is not None and j.desired.artifact is not None
        return (j.candidate or other_slot(j.last_good)), j.desired.artifact

    async def _download(self) -> Phase:
        slot, ref = self._candidate()
        self._enter(Phase.DOWNLOADING, candidate=slot)
        part = part_path(self.data_dir, ref)
        remove_stale_parts(self.data_dir, keep=part)
        backoff_s = self.options.backoff_min_s
        while True:
            self._check_superseded()
            have = part.stat().st_size if part.exists() else 0
            try:
                check_disk_space(
                    part.parent, ref, have, self.options.disk_margin_bytes, self.free_bytes
                )
                await self.transport.download(consistent_target_path(ref), part, ref.length)
                return Phase.VERIFYING
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                await self._finish(
                    Phase.FAILED,
                    f"disk full while downloading {ref.artifact_id} "
                    f"— free space in {self.data_dir}; the agent retries later",
                )
            except FleetError as exc:
                if exc.status in (503, 504):  # the link: resume when it returns
                    await asyncio.sleep(self.links.jitter(backoff_s))
                    backoff_s = min(backoff_s * 2, self.options.backoff_max_s)
                    continue
                await self._finish(Phase.FAILED, str(exc))
            return self.journal.phase

    async def _verify(self) -> Phase:
        slot, ref = self._candidate()
        assert slot != self.journal.last_good, "never unpack over last-good"
        held = dict(self.journal.slots)
        held[slot] = None  # the slot is being overwritten: it holds nothing trustworthy
        self._enter(Phase.VERIFYING, slots=held)
        part = part_path(self.data_dir, ref)
        backoff_s = self.options.backoff_min_s
        while True:
            self._check_superseded()
            try:
                await asyncio.to_thread(self.installer.verify_bundle, ref, part)
                break
            except FleetError as exc:
                if isinstance(exc, ArtifactVerificationError) or exc.status not in (503, 504):
                    await self._fail_verify(slot, ref, part, exc)
                    return self.journal.phase
                # The link (TUF refresh), not the bundle: a partition delays the install, it
                # never fails it. Same backoff as the download's; the phase stays VERIFYING.
                log.info("verifying %s waits for the link: %s", ref.artifact_id, exc)
                await asyncio.sleep(self.links.jitter(backoff_s))
                backoff_s = min(backoff_s * 2, self.options.backoff_max_s)
            except (EdgeshiftError, OSError) as exc:
                await self._fail_verify(slot, ref, part, exc)
                return self.journal.phase
        try:
            await asyncio.to_thread(slots.install, self.installer, self.data_dir, slot, ref, part)
        except (EdgeshiftError, OSError) as exc:
            await self._fail_verify(slot, ref, part, exc)
            return self.journal.phase
        part.unlink(missing_ok=True)
        held[slot] = ref
        self._persist(slots=held)
        self._fresh = (slot, ref)
        return Phase.SHADOW

    async def _fail_verify(
        self, slot: Slot, ref: ArtifactRef, part: Path, exc: EdgeshiftError | OSError
    ) -> None:
        part.unlink(missing_ok=True)  # a bad bundle is fetched afresh next time
        await asyncio.to_thread(slots.clear, self.data_dir, slot)
        reason = str(exc) if isinstance(exc, EdgeshiftError) else f"cannot unpack: {exc}"
        await self._finish(Phase.FAILED, f"{ref.artifact_id}: {reason}")

    async def _stop_shadow(self) -> None:
        stop = getattr(self.host, "stop_shadow", None)
        if stop is not None:
            await stop()

    async def _shadow(self) -> Phase:
        slot, ref = self._candidate()
        self._enter(Phase.SHADOW)
        fresh, self._fresh = self._fresh == (slot, ref), None
        if not fresh and not await asyncio.to_thread(
            slots.verifies, self.installer, self.data_dir, slot, ref
        ):
            await self._finish(
                Phase.FAILED, f"{ref.artifact_id}: the unpacked slot fails verification"
            )
            return self.journal.phase
        d = self.journal.desired
        assert d is not None
        if self.active is None:
            return Phase.TRIAL  # nothing serves: no live traffic to compare on
        try:
            comparator = await self.host.start_shadow(slots.slot_dir(self.data_dir, slot))
        except EdgeshiftError as exc:
            await self._finish(Phase.ROLLED_BACK, f"{ref.artifact_id} does not load: {exc}")
            return self.journal.phase
        started = self.clock()
        try:
            while True:
                self._check_superseded()
                self._shadow_stats = (comparator.samples, comparator.agreement, comparator.drift)
                elapsed = self.clock() - started
                if elapsed >= d.shadow_s and comparator.samples >= d.shadow_min_requests:
                    break
                if elapsed >= d.shadow_s * 4:
                    log.warning(
                        "shadow saw %d of %d requests in %.0f s; going on with those",
                        comparator.samples,
                        d.shadow_min_requests,
                        elapsed,
                    )
                    break
                await asyncio.sleep(_tick(d.shadow_s - elapsed))
            failed = _shadow_failure(comparator, self.options.shadow_max_error_rate)
        finally:
            await self._stop_shadow()
        if failed:
            await self._finish(Phase.ROLLED_BACK, f"{ref.artifact_id} in shadow: {failed}")
            return self.journal.phase
        return Phase.TRIAL

    async def _trial(self) -> Phase:
        slot, ref = self._candidate()
        baseline = self.journal.baseline_p95_ms
        if baseline is None and self._baseline is not None:
            baseline = self._baseline.percentile_ms(95)
        self._enter(Phase.TRIAL, trial_boots=self.journal.trial_boots + 1, baseline_p95_ms=baseline)
        d = self.journal.desired
        assert d is not None
        try:
            await self.host.activate(slots.slot_dir(self.data_dir, slot), ref.name)
        except EdgeshiftError as exc:
            await self._finish(Phase.ROLLED_BACK, f"{ref.artifact_id} does not load: {exc}")
            return self.journal.phase
        self.active = ref
        window = self.host.watch()
        started = self.clock()
        try:
            while (left_s := d.trial_s - (self.clock() - started)) > 0:
                self._check_superseded()
                failed = _trial_failure(window, baseline, self.options)
                if failed:
                    await self._finish(Phase.ROLLED_BACK, f"{ref.artifact_id} in trial: {failed}")
                    return self.journal.phase
                await asyncio.sleep(_tick(left_s))
            failed = _trial_failure(window, baseline, self.options)
        finally:
            self.host.unwatch(window)
        if failed:
            await self._finish(Phase.ROLLED_BACK, f"{ref.artifact_id} in trial: {failed}")
            return self.journal.phase
        self._enter(Phase.COMMITTED, last_good=slot, candidate=None, failures=0, error="")
        return Phase.COMMITTED


async def _unless_stopped(work: Coroutine[object, object, None], stop: asyncio.Event) -> None:
    """Run WORK; cancel it when STOP is set first. The journal then says where it was, as after
    a crash, and the next start resumes from there."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        task.result()


def _before(phase: Phase) -> Phase:
    """The phase the table enters PHASE from (used to re-enter it after a crash)."""
    return {
        Phase.DOWNLOADING: Phase.IDLE,
        Phase.VERIFYING: Phase.DOWNLOADING,
        Phase.SHADOW: Phase.VERIFYING,
        Phase.TRIAL: Phase.SHADOW,
    }[phase]


def _tick(left_s: float) -> float:
    """The next look: a tick, or the deadline LEFT_S away when that is sooner (a look at 0 s
    left is a tick on, when shadow still waits for requests)."""
    return min(TICK_S, left_s) if left_s > 0 else TICK_S


def _shadow_failure(comparator: Comparator, max_error_rate: float) -> str:
    tried = comparator.samples + comparator.errors
    if tried and comparator.errors / tried > max_error_rate:
        return f"{comparator.errors} of {tried} shadow runs failed"
    return ""


def _trial_failure(window: ServingWindow, baseline_p95_ms: float | None, o: AgentOptions) -> str:
    if window.requests and window.error_rate > o.trial_max_error_rate and window.errors >= 2:
        return f"error rate {window.error_rate:.2%} > {o.trial_max_error_rate:.2%}"
    if baseline_p95_ms and window.requests >= o.trial_min_requests:
        p95 = window.percentile_ms(95)
        if p95 is not None and p95 > o.trial_max_p95_ratio * baseline_p95_ms:
            return (
                f"p95 {p95:.1f} ms > {o.trial_max_p95_ratio:g} x baseline {baseline_p95_ms:.1f} ms"
            )
    return ""
