"""Recovery's float set is pruned after bisection: a node a prefix of the ranking holds but the
budget does not need goes back to int8 (the ranking is a proxy; only builds are evidence)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgeshift.optimize.recipes import Variant
from edgeshift.optimize.recovery import PRUNE_MAX_BUILDS, RecoveryOutcome, _fallback

BUDGET = 0.01


def _attempts(needed: set[str]):  # type: ignore[no-untyped-def]
    """A stand-in for build + evaluate: a float set meets the budget iff it holds NEEDED.
    Memoized by set like recovery's own attempt; BUILDS lists the sets really built."""
    builds: list[tuple[str, ...]] = []
    stages: list[str] = []
    done: dict[frozenset[str], tuple[Variant, float, float]] = {}

    def attempt(exclude: Sequence[str], stage: str) -> tuple[Variant, float, float]:
        key = frozenset(exclude)
        if key not in done:
            builds.append(tuple(exclude))
            stages.append(stage)
            drop = 0.0 if needed <= key else 0.5
            done[key] = (
                Variant(Path(f"{len(builds)}.onnx"), "onnxruntime", "fp32"),
                1 - drop,
                drop,
            )
        return done[key]

    return attempt, builds, stages


def test_prefix_with_unneeded_nodes_is_pruned_to_the_needed_ones() -> None:
    # The ranking puts two harmless nodes (b, d) above the two that break int8 (a, c).
    order = ["b", "d", "a", "c", "e", "f", "g", "h"]
    attempt, builds, _ = _attempts({"a", "c"})
    outcome = _fallback(order, attempt, RecoveryOutcome(None, None, None, [], []), BUDGET, True)
    assert outcome.float_nodes == ["a", "c"]
    assert outcome.drop == 0.0
    assert "2 more re-quantized by pruning" in outcome.reason
    # Greedy 1, 2, 4; bisection 3; then each of the 4 tried back in int8, lowest-ranked first
    # (c's trial is the bisection's set again: no new build).
    assert builds == [
        ("b",),
        ("b", "d"),
        ("b", "d", "a", "c"),
        ("b", "d", "a"),
        ("b", "d", "c"),
        ("b", "a", "c"),
        ("a", "c"),
    ]


def test_small_sets_are_left_to_bisection() -> None:
    # Under 4 float nodes bisection has already found the fewest: no pruning builds.
    order = ["b", "a", "c", "d"]
    attempt, builds, _ = _attempts({"b", "a"})
    outcome = _fallback(order, attempt, RecoveryOutcome(None, None, None, [], []), BUDGET, True)
    assert outcome.float_nodes == ["b", "a"]
    assert builds == [("b",), ("b", "a")]


def test_pruning_is_bounded() -> None:
    order = [f"n{i}" for i in range(64)]
    attempt, _, stages = _attempts({"n0", "n20"})
    outcome = _fallback(order, attempt, RecoveryOutcome(None, None, None, [], []), BUDGET, True)
    # Bisection stops at the prefix to n20 (21 nodes); only its 16 lowest-ranked are tried
    # back (n20 itself, needed, and n19..n5), so n1..n4 stay float unexamined.
    assert outcome.float_nodes == ["n0", "n1", "n2", "n3", "n4", "n20"]
    assert outcome.drop == 0.0
    # n20's trial is the prefix to n19, which bisection built already.
    assert stages.count("prune") == PRUNE_MAX_BUILDS - 1
