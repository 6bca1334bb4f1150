"""Every TUF and bundle attack case is refused with its expected one-line error (the table is
data in edgeshift.fleet.tuf_attacks, which benchmarks/fleet.py runs too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeshift.fleet.tuf_attacks import attack_cases, build_world, run_case


@pytest.mark.parametrize("bundled", [False, True], ids=["per-file", "bundled"])
@pytest.mark.parametrize("case", attack_cases(), ids=lambda case: case.name)
def test_attack_is_refused(case, bundled: bool, tmp_path: Path) -> None:
    # bundled: the device's refresh brings the metadata in one bundle (fleet/tuf_bundle.py),
    # the attacker's answers in it; every attack is refused all the same.
    message = run_case(case, tmp_path, bundled=bundled)
    assert case.reason in message


def test_the_table_covers_the_issue_cases() -> None:
    names = " | ".join(case.name for case in attack_cases())
    for needed in (
        "tampered",
        "endless",
        "non-root key",
        "expired",
        "rolled-back timestamp",
        "rolled-back snapshot",
        "rolled-back targets",
        "mix-and-match",
        "root rotation",
        "not in the metadata",
        "'..'",
        "absolute",
        "symlink",
        "extra file",
        "missing file",
    ):
        assert needed in names


@pytest.mark.parametrize("bundled", [False, True], ids=["per-file", "bundled"])
def test_an_honest_world_is_accepted(bundled: bool, tmp_path: Path) -> None:
    # The attacks above are refused because they are attacks: the same world, unattacked, passes.
    world = build_world(tmp_path, bundled=bundled)
    verifier = world.new_verifier()
    verifier.refresh()
    target = verifier.target(world.ref)
    verifier.check_bundle(world.bundle_path, target)
    fetched = verifier.download(target, tmp_path / "fetched.tar")
    assert fetched.read_bytes() == world.bundle_path.read_bytes()
    # one bundle per refresh (the world's first, and this one's), none without bundles
    assert world.fetcher.bundles_fetched == (2 if bundled else 0)
