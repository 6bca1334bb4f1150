"""The agent's traffic with the control plane, as background tasks that never block serving
or the update: the desired-state long poll (backoff with jitter on errors), reports (latest
phase wins; sent on each phase and every report interval), and telemetry through the on-disk
spool (carried by a report once per report interval)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING

from edgeshift.errors import FleetError
from edgeshift.fleet.agent.spool import Spool
from edgeshift.fleet.agent.states import RESTING, UPDATE_PHASES
from edgeshift.fleet.schema import DeviceReport, Phase, TelemetryBatch, TelemetryRecord

if TYPE_CHECKING:
    from edgeshift.fleet.agent.agent import Agent

log = logging.getLogger("edgeshift.agent")
# Reported the moment they are entered: the resting phases the rollout's gates count, and
# DOWNLOADING (the device took the wave). VERIFYING, SHADOW and TRIAL are seconds apart on a
# healthy install; reporting each at once cost three of an install's requests.
PROMPT_PHASES = RESTING | {Phase.DOWNLOADING}
FAST_ANSWER_S = 0.2  # a long poll answered sooner than this without news: pause before the next


class Links:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.spool = Spool(agent.data_dir / "spool")
        self.online = False
        self.reports_sent = 0
        self.reports_failed = 0
        self._report_due = asyncio.Event()
        self._random = random.Random()
        self._last_phase_spooled: tuple[object, ...] | None = None
        self._flushed_at = float("-inf")
        self._serving_spooled_at = float("-inf")

    def jitter(self, seconds: float) -> float:
        return seconds * self._random.uniform(0.5, 1.5)

    def report_soon(self) -> None:
        """The journal's phase changed: spool it as an event, and report it now if the control
        plane acts on it (PROMPT_PHASES); the steps between go with the next interval's report."""
        j = self.agent.journal
        if j.phase in PROMPT_PHASES:
            self._report_due.set()
        key = (j.phase, j.generation, j.error)
        if key != self._last_phase_spooled:
            self._last_phase_spooled = key
            event = f"phase {j.phase.value} generation {j.generation}"
            self.spool.append(
                TelemetryRecord(
                    at=self.agent.wall(),
                    kind="event",
                    stats=None,
                    event=(event + (f": {j.error}" if j.error else ""))[:500],
                )
            )

    def start(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        self._report_due.set()  # say where it is right after a (re)start
        return [
            asyncio.create_task(self._poll(stop), name="agent-poll"),
            asyncio.create_task(self._report(stop), name="agent-report"),
        ]

    def build_report(self) -> DeviceReport:
        a, j = self.agent, self.agent.journal
        target = j.desired.artifact if j.desired is not None else None
        return DeviceReport(
            generation=j.generation,
            phase=j.phase,
            active=a.active.artifact_id if a.active else None,
            last_good=j.last_good_ref.artifact_id if j.last_good_ref else None,
            target=target.artifact_id if target and j.phase in UPDATE_PHASES else None,
            error=j.error[:1000],
            stats=a.serving_stats(),
            agent_version=a.options.agent_version,
            sent_at=a.wall(),
        )

    async def _poll(self, stop: asyncio.Event) -> None:
        o = self.agent.options
        backoff_s = o.backoff_min_s
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            latest = self.agent._latest
            seen = max(self.agent.journal.generation, latest.generation if latest else 0)
            started = loop.time()
            try:
                desired = await self.agent.transport.desired(seen, o.poll_wait_s)
            except FleetError as exc:
                if self.online:
                    log.warning("%s", exc)
                self.online = False
                await asyncio.sleep(self.jitter(backoff_s))
                backoff_s = min(backoff_s * 2, o.backoff_max_s)
                continue
            was_offline, self.online, backoff_s = not self.online, True, o.backoff_min_s
            if desired is not None:
                self.agent.offer(desired)
            if was_offline:
                self._report_due.set()  # what happened offline, now
            if (desired is None or desired.generation <= seen) and (
                loop.time() - started < FAST_ANSWER_S
            ):
                await asyncio.sleep(self.jitter(1.0))

    async def _report(self, stop: asyncio.Event) -> None:
        interval_s = self.agent.options.report_interval_s
        o = self.agent.options
        backoff_s = o.backoff_min_s
        retry = False
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_due.wait(), timeout=interval_s)
            self._report_due.clear()
            report = self.build_report()
            now = asyncio.get_running_loop().time()
            if now - self._serving_spooled_at >= interval_s or not retry:
                # Serving stats once per interval, offline too (retries come faster).
                self._serving_spooled_at = now
                self.spool.append(
                    TelemetryRecord(at=report.sent_at, kind="serving", stats=report.stats, event="")
                )
            # Once an interval the report carries the spool (serving stats, phase events): one
            # request, where a report and a telemetry POST were two.
            with_spool = now - self._flushed_at >= interval_s
            try:
                if with_spool:
                    await self._report_with_spool(report)
                    self._flushed_at = now
                else:
                    await self.agent.transport.report(report)
            except FleetError as exc:
                self.reports_failed += 1
                log.debug("report not sent (%s); spooled", exc)
                # Again after the link's backoff, not a whole report interval later: a wave's
                # gates wait for this device's phase (a dropped keep-alive connection alone
                # held installs up by 15 s).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.jitter(backoff_s))
                backoff_s = min(backoff_s * 2, o.backoff_max_s)
                retry = True
                self._report_due.set()
                continue
            backoff_s, retry = o.backoff_min_s, False
            self.reports_sent += 1
            self.agent.host.stats().reset()

    async def _report_with_spool(self, report: DeviceReport) -> None:
        """REPORT with the spool's oldest segment; segments left over from a long time offline
        follow as telemetry POSTs. Raises FleetError only when the report was not taken."""
        transport = self.agent.transport
        taken = False

        async def send(batch: TelemetryBatch) -> None:
            nonlocal taken
            if taken:
                await transport.telemetry(batch)
            else:
                await transport.report(report.model_copy(update={"telemetry": batch.records}))
                taken = True

        try:
            await self.spool.flush(send)
        except FleetError as exc:
            if not taken:
                raise
            log.debug("telemetry kept in the spool (%s)", exc)  # the report itself went
        if not taken:  # nothing spooled
            await transport.report(report)
        if self.spool.dropped:
            log.warning("the telemetry spool dropped %d records while offline", self.spool.dropped)
