"""The agent's update as a state table (Mender style): which phase may follow which, and where
an update resumes after a crash. Pure data; the agent persists a phase before it enters it.

    IDLE/COMMITTED/FAILED/ROLLED_BACK --desired artifact--> DOWNLOADING
    DOWNLOADING --> VERIFYING | FAILED
    VERIFYING   --> SHADOW | FAILED
    SHADOW      --> TRIAL | ROLLED_BACK | FAILED (the unpacked slot no longer verifies)
    TRIAL       --> COMMITTED | ROLLED_BACK

A desired artifact that already sits verified in the other slot (a rollback by the control
plane) goes straight to COMMITTED: a local slot switch, no download.
"""

from __future__ import annotations

from enum import Enum

from edgeshift.fleet.schema import Phase

# Phases where no update is in flight: the agent serves last-good and waits for desired state.
RESTING = frozenset({Phase.IDLE, Phase.COMMITTED, Phase.FAILED, Phase.ROLLED_BACK})
# Phases of an update in flight, in order.
UPDATE_PHASES = (Phase.DOWNLOADING, Phase.VERIFYING, Phase.SHADOW, Phase.TRIAL)

TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.DOWNLOADING, Phase.COMMITTED}),
    Phase.COMMITTED: frozenset({Phase.DOWNLOADING, Phase.COMMITTED, Phase.IDLE}),
    Phase.FAILED: frozenset({Phase.DOWNLOADING, Phase.COMMITTED, Phase.IDLE}),
    Phase.ROLLED_BACK: frozenset({Phase.DOWNLOADING, Phase.COMMITTED, Phase.IDLE}),
    Phase.DOWNLOADING: frozenset({Phase.VERIFYING, Phase.FAILED, Phase.IDLE}),
    Phase.VERIFYING: frozenset({Phase.SHADOW, Phase.FAILED, Phase.IDLE}),
    Phase.SHADOW: frozenset({Phase.TRIAL, Phase.ROLLED_BACK, Phase.FAILED, Phase.IDLE}),
    Phase.TRIAL: frozenset({Phase.COMMITTED, Phase.ROLLED_BACK, Phase.IDLE}),
}
# (IDLE out of an update phase: the control plane changed its mind mid-update; last-good
# kept serving throughout, the candidate is dropped.)


class Resume(str, Enum):
    """What the agent does at start when the journal says it was in a phase."""

    NOTHING = "nothing"  # a resting phase: serve last-good, wait for desired state
    DOWNLOAD = "download"  # the .part file is kept: an HTTP Range request resumes it
    VERIFY = "verify"  # verification and unpacking are redone from the downloaded bundle
    SHADOW = "shadow"  # the candidate slot is verified again, then shadow starts over
    TRIAL = "trial"  # a crash in trial is a failed boot of the candidate (see MAX_TRIAL_BOOTS)


ON_RESTART: dict[Phase, Resume] = {
    Phase.IDLE: Resume.NOTHING,
    Phase.COMMITTED: Resume.NOTHING,
    Phase.FAILED: Resume.NOTHING,
    Phase.ROLLED_BACK: Resume.NOTHING,
    Phase.DOWNLOADING: Resume.DOWNLOAD,
    Phase.VERIFYING: Resume.VERIFY,
    Phase.SHADOW: Resume.SHADOW,
    Phase.TRIAL: Resume.TRIAL,
}

# A candidate that took the agent down this many times in trial is rolled back for good (the
# first boot plus two retries).
MAX_TRIAL_BOOTS = 3


class TransitionError(RuntimeError):
    """A transition the table does not allow: a bug in the agent, never a user's doing."""


def check_transition(current: Phase, following: Phase) -> None:
    if following not in TRANSITIONS[current]:
        raise TransitionError(f"agent bug: {current.value} -> {following.value} is not allowed")
