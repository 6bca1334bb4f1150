"""The rollout engine: a loop that evaluates the rollout policy (fleet/policy.py) over the
Store and carries out its decisions (assign a wave, save the verdict, roll devices back).

All state lives in the Store, so a new engine over the same database continues where a
stopped one left off. Each step writes the devices first and the rollout's record last: a
crash between the two repeats the step, and repeating a step is harmless (a device already
pointed at the artifact by this rollout is not bumped again).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from edgeshift.errors import EdgeshiftError, FleetError
from edgeshift.fleet import policy
from edgeshift.fleet.schema import (
    ActionResult,
    ArtifactRef,
    DesiredState,
    RolloutInfo,
    RolloutSpec,
    RolloutState,
)
from edgeshift.fleet.store import Store

_ID_ATTEMPTS = 20


class RolloutEngine:
    """Creates rollouts, steps them (``tick``) and carries out operator actions."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._awaiting_by_rollout: dict[str, dict[str, int]] = {}
        # When the earliest soak of a running rollout ends (after a tick): the server's loop
        # ticks then, not up to a whole tick interval later.
        self.next_due_at: float | None = None
        # Device -> the generation its current wave waits for it to settle at (after a tick):
        # the report that settles the last one makes the server tick at once.
        self.awaiting: dict[str, int] = {}

    # --- create ----------------------------------------------------------------------------

    def create(self, spec: RolloutSpec, now: float) -> RolloutInfo:
        """A PENDING rollout of SPEC (the next ``tick`` starts its first wave). 404 for an
        unknown artifact, 400 when no device matches, 409 when a matching device is already
        in another active rollout."""
        self.store.get_artifact(spec.artifact_id)  # 404 when it was never published
        devices = self.store.matching_devices(spec.group, dict(spec.selector))
        if not devices:
            where = f"group {spec.group!r}" if spec.group else "the fleet"
            sel = f" with labels {dict(spec.selector)}" if spec.selector else ""
            raise FleetError(
                f"no device in {where}{sel} to roll out to; enrol devices or check the group "
                "and selector",
                400,
            )
        busy = self._claimed_by_others(None)
        for device_id in devices:
            if device_id in busy:
                raise FleetError(
                    f"device {device_id} is already in active rollout {busy[device_id]}; wait "
                    "for it to finish, or pause/cancel it first",
                    409,
                )
        info = RolloutInfo(
            rollout_id=self._new_id(),
            spec=spec,
            state=RolloutState.PENDING,
            wave=-1,
            waves=policy.planned_waves(spec.waves, len(devices)),
            gates=[],
            created_at=now,
            updated_at=now,
        )
        self.store.add_rollout(info)
        return info

    def _new_id(self) -> str:
        for _ in range(_ID_ATTEMPTS):
            candidate = f"r-{secrets.token_hex(4)}"
            try:
                self.store.get_rollout(candidate)
            except FleetError as err:
                if err.status == 404:
                    return candidate
                raise
        raise FleetError("could not pick a free rollout id; try again", 409)

    def _claimed_by_others(self, rollout_id: str | None) -> dict[str, str]:
        """Device id -> the other active rollout that has it (assigned, or matching and still
        to be assigned in a later wave)."""
        claimed: dict[str, str] = {}
        for other in self.store.list_rollouts(active_only=True):
            if other.rollout_id == rollout_id or other.state not in policy.ACTIVE_STATES:
                continue
            for device_id in self.store.rollout_devices(other.rollout_id):
                claimed.setdefault(device_id, other.rollout_id)
            if rollout_id is None:
                spec = other.spec
                for device_id in self.store.matching_devices(spec.group, dict(spec.selector)):
                    claimed.setdefault(device_id, other.rollout_id)
        return claimed

    # --- the loop --------------------------------------------------------------------------

    def tick(self, now: float) -> list[str]:
        """One pass over every active rollout; returns what happened, one line per event,
        each starting with the rollout id. Idempotent; an error in one rollout is reported
        as its line and does not stop the others."""
        events: list[str] = []
        due: list[float] = []
        self._awaiting_by_rollout = {}
        for info in self.store.list_rollouts(active_only=True):
            if info.state not in (RolloutState.PENDING, RolloutState.RUNNING):
                continue
            try:
                info = self._step(info, now, events)
            except EdgeshiftError as err:
                events.append(f"{info.rollout_id}: error: {err}")
                continue
            soak_until = (
                info.waves[info.wave].soak_until if 0 <= info.wave < len(info.waves) else None
            )
            if info.state is RolloutState.RUNNING and soak_until is not None and soak_until > now:
                due.append(soak_until)
        self.next_due_at = min(due, default=None)
        self.awaiting = {
            d: g for part in self._awaiting_by_rollout.values() for d, g in part.items()
        }
        return events

    def device_settled(self, device_id: str, generation: int) -> bool:
        """DEVICE_ID reported a settled phase (policy.SETTLED_PHASES) at GENERATION. True when
        it was the last device the current waves waited for: tick now, not a tick later."""
        awaiting = self.awaiting
        wanted = awaiting.get(device_id)
        if wanted is None or generation < wanted:
            return False
        awaiting.pop(device_id, None)
        return not awaiting

    def _step(self, info: RolloutInfo, now: float, events: list[str]) -> RolloutInfo:
        # A soak that ends and a next wave that starts at once take two decisions.
        for _ in range(len(info.waves) * 3 + 2):
            stats = self._stats(info, now) if policy.needs_stats(info, now) else None
            decision = policy.decide(info, stats, now)
            if decision.info == info:
                break
            new = decision.info
            if decision.start_wave is not None:
                new = self._assign(new, decision.start_wave, now)
            if decision.rollback:
                events.append(self._roll_back_devices(new, now))
            self.store.save_rollout(new)
            events.extend(decision.events)
            info = new
        return info

    def _artifact(self, info: RolloutInfo) -> ArtifactRef:
        return self.store.get_artifact(info.spec.artifact_id).ref

    def _assign(self, info: RolloutInfo, wave: int, now: float) -> RolloutInfo:
        spec = info.spec
        assigned = self.store.rollout_devices(info.rollout_id)
        earlier = [d for d, w in assigned.items() if w < wave]
        busy = self._claimed_by_others(info.rollout_id)
        eligible = [
            d
            for d in self.store.matching_devices(spec.group, dict(spec.selector))
            if d not in busy or assigned.get(d) == wave
        ]
        members = policy.wave_members(info.rollout_id, spec.waves, wave, eligible, earlier)
        ref = self._artifact(info)
        # A repeated step (crash after assigning, before saving): devices this rollout already
        # points at the artifact keep their generation, so their installs are not restarted.
        desired = self._desired(d for d in members if assigned.get(d) == wave)
        fresh = [
            d
            for d in members
            if not (
                d in desired
                and desired[d].rollout_id == info.rollout_id
                and desired[d].artifact == ref
            )
        ]
        if members:
            self.store.assign_wave(info.rollout_id, members, wave)
        if fresh:
            self.store.set_desired(
                fresh,
                ref,
                info.rollout_id,
                shadow_s=spec.shadow_s,
                shadow_min_requests=spec.shadow_min_requests,
                trial_s=spec.trial_s,
                now=now,
            )
        waves = list(info.waves)
        waves[wave] = waves[wave].model_copy(update={"devices": len(members)})
        return info.model_copy(update={"waves": waves})

    def _desired(self, device_ids: Iterable[str]) -> dict[str, DesiredState]:
        return {d: self.store.desired(d) for d in device_ids}

    def _stats(self, info: RolloutInfo, now: float) -> policy.WaveStats:
        k = info.wave
        members = sorted(
            d for d, w in self.store.rollout_devices(info.rollout_id).items() if w == k
        )
        # Two bulk reads of the wave's members only: their desired generations (one small
        # column) and their latest reports. Reading every device of the group (labels, groups,
        # desired state and report, as DeviceInfo) was a third of the control plane's CPU
        # during a 1,000-device rollout, the engine ticking every second.
        generations = self.store.generations(members)
        reports = self.store.reports(members)
        self._awaiting_by_rollout[info.rollout_id] = {
            d: g
            for d, g in generations.items()
            if (r := reports.get(d)) is None
            or r.generation < g
            or r.phase not in policy.SETTLED_PHASES
        }
        started = info.waves[k].started_at
        return policy.wave_stats(
            reports,
            members,
            info.spec.artifact_id,
            generations,
            now,
            now if started is None else started,
            info.spec.install_timeout_s,
            wave=k,
        )

    # --- operator actions ------------------------------------------------------------------

    def pause(self, rollout_id: str, now: float) -> ActionResult:
        """Hold the rollout: no new waves, no verdicts; devices already told keep installing."""
        return self._act(rollout_id, "pause", now)

    def resume(self, rollout_id: str, now: float) -> ActionResult:
        return self._act(rollout_id, "resume", now)

    def cancel(self, rollout_id: str, now: float) -> ActionResult:
        """Stop the rollout for good; devices keep what they run."""
        return self._act(rollout_id, "cancel", now)

    def rollback(self, rollout_id: str, now: float) -> ActionResult:
        """Set every device of the rollout back to what it was desired to serve before it
        (every stage, COMPLETED included)."""
        return self._act(rollout_id, "rollback", now)

    def _act(self, rollout_id: str, action: str, now: float) -> ActionResult:
        info = self.store.get_rollout(rollout_id)
        target = policy.action_target(info.state, action)
        if target is None:
            raise FleetError(f"rollout {rollout_id}: {policy.refusal(info.state, action)}", 409)
        if action == "resume" and info.wave < 0:
            target = RolloutState.PENDING
        message = f"{action} done: the rollout is {target.value}"
        if action == "rollback":
            message = self._roll_back_devices(info, now)
        reason = info.reason
        if action in ("cancel", "rollback"):
            reason = f"{'cancelled' if action == 'cancel' else 'rolled back'} by an operator"
        self.store.save_rollout(
            info.model_copy(update={"state": target, "reason": reason, "updated_at": now})
        )
        return ActionResult(rollout_id=rollout_id, state=target, message=message)

    def _roll_back_devices(self, info: RolloutInfo, now: float) -> str:
        """Point every device this rollout still drives back at its previous artifact; devices
        a later rollout has moved since are left alone."""
        rid = info.rollout_id
        devices = sorted(self.store.rollout_devices(rid))
        desired = self.store.desired_many(devices)
        ours = [d for d in devices if d in desired and desired[d].rollout_id == rid]
        by_previous: dict[str | None, tuple[ArtifactRef | None, list[str]]] = {}
        for device_id in ours:
            previous = self.store.previous_artifact(device_id, rid)
            key = None if previous is None else previous.artifact_id
            by_previous.setdefault(key, (previous, []))[1].append(device_id)
        spec = info.spec
        for previous, group in by_previous.values():
            self.store.set_desired(
                group,
                previous,
                None,
                shadow_s=spec.shadow_s,
                shadow_min_requests=spec.shadow_min_requests,
                trial_s=spec.trial_s,
                now=now,
            )
        skipped = len(devices) - len(ours)
        moved = f"; {skipped} left alone (moved by another rollout since)" if skipped else ""
        return f"{rid}: rolled back {len(ours)} device(s) to their previous artifact{moved}"
