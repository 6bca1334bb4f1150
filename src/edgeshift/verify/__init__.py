"""verify: the same artifact run on x86, Arm64 (QEMU user mode) and, later, Cortex-M.

:func:`verify` runs an artifact on each requested architecture and compares every output with
this host's run of it, under a tolerance set by the artifact's precision and accuracy budget.
Architectures are runners (:mod:`edgeshift.verify.runners`); :func:`register_runner` plugs in
a new one. :func:`build_userland` is the one step that downloads (the arm64 userland).
"""

from edgeshift.verify.pipeline import tolerance_from_manifest, verify, verify_many
from edgeshift.verify.report import EMULATION_NOTE, ArchResult, OutputCheck, VerifyReport
from edgeshift.verify.runners import known_arches, register_runner, runner_for
from edgeshift.verify.userland import build_userland, find_userland

__all__ = [
    "EMULATION_NOTE",
    "ArchResult",
    "OutputCheck",
    "VerifyReport",
    "build_userland",
    "find_userland",
    "known_arches",
    "register_runner",
    "runner_for",
    "tolerance_from_manifest",
    "verify",
    "verify_many",
]
