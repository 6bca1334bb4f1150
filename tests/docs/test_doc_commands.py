"""Every shell command in README.md and docs/*.md runs, as written (issue #13).

One test case per command, id ``doc:line``, run in document order in one working directory
per document, with this venv's ``edgeshift`` on PATH, offline (``HF_HUB_OFFLINE=1``) and one
isolated ``EDGESHIFT_CACHE_DIR`` for the whole session (the host calibration and the arm64
userland are made once). Blocks that cannot run here carry a visible
``<!-- doc-test: skip — REASON -->`` in the doc; shown output is compared only for blocks
marked ``<!-- doc-test: compare -->``. See tests/docs/doccmd.py for what counts as a command.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.docs.doccmd import DocCommand, doc_paths, extract, output_matches
from tests.docs.docrun import COMMAND_TIMEOUT_S, REPO_INPUTS, DocTerminal

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [cmd for path in doc_paths(ROOT) for cmd in extract(path, ROOT)]
# The last command of each document: its terminal's servers are stopped after it.
LAST = {cmd.doc: cmd.id for cmd in COMMANDS}
# Skipped blocks stay rare: raise this only with a reason a reviewer accepts (other machines,
# installing packages, the full test suite and the benchmarks).
MAX_SKIPPED_BLOCKS = 12  # 9 + the three zoo rebuild blocks (they retrain the shipped models)
# A JSON-lines file to append each command's wall and CPU seconds to (unset: none).
TIMINGS = os.environ.get("EDGESHIFT_DOC_TIMINGS")


@pytest.fixture(scope="session")
def doc_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("edgeshift-cache")
    _share_arm64_userland(cache)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        EDGESHIFT_CACHE_DIR=str(cache),
        PYTHONUNBUFFERED="1",
        COLUMNS="120",
    )
    for name in ("EDGESHIFT_FLEET_TOKEN_FILE", "EDGESHIFT_FLEET_TOKEN", "EDGESHIFT_FLEET_URL"):
        env.pop(name, None)  # the docs set what they need
    return env


def _share_arm64_userland(cache: Path) -> None:
    """Link the user's arm64 userland into the isolated cache, building it once if needed.

    It is ~400 MB of Debian packages: built once per machine (tests/verify builds the same
    one), never per test session. Without qemu-user the docs' arm64 command fails by itself,
    with its own message."""
    if shutil.which("qemu-aarch64") is None:
        return
    from edgeshift.errors import EdgeshiftError
    from edgeshift.verify import build_userland, find_userland

    try:
        found = find_userland() or build_userland()
    except EdgeshiftError:
        return
    (cache / found.root.name).symlink_to(found.root, target_is_directory=True)


@pytest.fixture(scope="session")
def terminal_for(
    doc_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], DocTerminal]]:
    """One terminal per document, opened at its first command, in a fresh directory."""
    opened: dict[str, DocTerminal] = {}

    def open_for(doc: str) -> DocTerminal:
        if doc not in opened:
            workdir = tmp_path_factory.mktemp(doc.replace("/", "-").removesuffix(".md"))
            for rel in REPO_INPUTS:
                shutil.copytree(ROOT / rel, workdir / rel)
            opened[doc] = DocTerminal(workdir, doc_env)
        return opened[doc]

    yield open_for
    for terminal in opened.values():
        terminal.close()


@pytest.mark.slow
@pytest.mark.timeout(COMMAND_TIMEOUT_S + 120)
@pytest.mark.parametrize("cmd", COMMANDS, ids=[cmd.id for cmd in COMMANDS])
def test_doc_command(cmd: DocCommand, terminal_for: Callable[[str], DocTerminal]) -> None:
    terminal = terminal_for(cmd.doc)
    started, cpu_before = time.monotonic(), _children_cpu_s()
    try:
        if cmd.skip is not None:
            pytest.skip(f"marked in the doc: {cmd.skip}")
        result = terminal.run(cmd)
    finally:
        problems = terminal.close() if LAST[cmd.doc] == cmd.id else []
        if TIMINGS:  # the CI budget, measured: wall and CPU seconds of each command's processes
            with open(TIMINGS, "a") as sink:
                wall_s, cpu_s = time.monotonic() - started, _children_cpu_s() - cpu_before
                sink.write(json.dumps({"id": cmd.id, "wall_s": wall_s, "cpu_s": cpu_s}) + "\n")
    where = f"{cmd.id}: `{cmd.text}`"
    if result.timed_out:
        pytest.fail(f"{where} did not finish in time\n{_tail(result.stderr)}")
    if result.returncode != cmd.exit_code:
        pytest.fail(
            f"{where} exited {result.returncode}"
            + (f" (the doc shows an error: exit {cmd.exit_code})" if cmd.exit_code else "")
            + f"\n--- stderr ---\n{_tail(result.stderr)}\n--- stdout ---\n{_tail(result.stdout)}"
        )
    if cmd.expected is not None:
        shown = result.stderr if cmd.exit_code else result.stdout
        mismatch = output_matches(cmd.expected, shown)
        assert mismatch is None, f"{where}: {mismatch}"
    assert not problems, "\n".join(problems)


def test_skipped_blocks_are_few_and_explained() -> None:
    skipped = {(cmd.doc, cmd.block): cmd.skip for cmd in COMMANDS if cmd.skip is not None}
    assert all(reason.strip() for reason in skipped.values())
    listing = "\n".join(
        f"{doc}:{line}: {reason}" for (doc, line), reason in sorted(skipped.items())
    )
    assert len(skipped) <= MAX_SKIPPED_BLOCKS, listing
    assert len(COMMANDS) - sum(cmd.skip is not None for cmd in COMMANDS) >= 50


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
