"""The agent's journal: one small JSON record of where the update is, written atomically
(tmp file, fsync, rename, fsync of the directory) before each phase is entered, so that a
kill -9 or a power cut leaves either the old record or the new one, never half of one."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from edgeshift.fleet.schema import ArtifactRef, DesiredState, Phase

log = logging.getLogger("edgeshift.agent")

Slot = Literal["a", "b"]
SLOTS: tuple[Slot, Slot] = ("a", "b")
JOURNAL_NAME = "journal.json"


def other_slot(slot: Slot | None) -> Slot:
    return "b" if slot == "a" else "a"


class Journal(BaseModel):
    """Everything the agent must know after a restart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phase: Phase = Phase.IDLE
    generation: int = 0  # of the desired state acted on (echoed in reports)
    desired: DesiredState | None = None  # the one being installed, or the last acted on
    last_good: Slot | None = None
    slots: dict[Slot, ArtifactRef | None] = {"a": None, "b": None}  # what each slot holds
    candidate: Slot | None = None  # the slot being installed into
    trial_boots: int = 0  # times the candidate was started in trial
    baseline_p95_ms: float | None = None  # last-good's p95 when this update began
    error: str = ""
    refused_generations: list[int] = []  # rolled back: not tried again
    failures: int = 0  # consecutive failed attempts at this generation (retry backoff)

    def slot_ref(self, slot: Slot | None) -> ArtifactRef | None:
        return None if slot is None else self.slots.get(slot)

    @property
    def last_good_ref(self) -> ArtifactRef | None:
        return self.slot_ref(self.last_good)

    @property
    def candidate_ref(self) -> ArtifactRef | None:
        return self.slot_ref(self.candidate)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """DATA at PATH, all or nothing, durable once this returns."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a power cut
    finally:
        os.close(dir_fd)


def save(data_dir: Path, journal: Journal) -> None:
    write_atomic(data_dir / JOURNAL_NAME, journal.model_dump_json().encode())


def load(data_dir: Path) -> Journal | None:
    """The journal, or None when it is missing or unreadable (then the agent serves whichever
    slot verifies)."""
    path = data_dir / JOURNAL_NAME
    try:
        return Journal.model_validate(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ValidationError) as exc:
        log.warning("journal %s is unreadable (%s); recovering from the slots", path, exc)
        return None
