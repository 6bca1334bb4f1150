"""Scoring recognizers: greedy CTC decoding, edit distance, exact-match and character error
rates — the ``sequence`` metric of :mod:`edgeshift.optimize.metrics`. Pure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeshift.errors import DataError, OptimizeError


def ctc_greedy_decode(scores: np.ndarray, blank: int) -> list[tuple[int, ...]]:
    """Best path per sample of ``[N, T, C]`` scores: argmax per step, repeats merged, blanks
    dropped."""
    best = np.argmax(scores, axis=-1)
    keep = best != blank
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    return [tuple(row[mask].tolist()) for row, mask in zip(best, keep, strict=True)]


def edit_distance(got: Sequence[int], want: Sequence[int]) -> int:
    """Levenshtein distance: insertions, deletions and substitutions, each costing 1."""
    previous = list(range(len(want) + 1))
    for i, g in enumerate(got, start=1):
        current = [i]
        for j, w in enumerate(want, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (g != w)))
        previous = current
    return previous[-1]


def _label_sequences(labels: np.ndarray) -> list[tuple[int, ...]]:
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"sequence labels must be integers [N, L] (got {labels.dtype} "
            f"{list(labels.shape)}) — pad shorter lines with -1"
        )
    return [tuple(row[row >= 0].tolist()) for row in labels]


def sequence_scores(
    got: np.ndarray, reference: np.ndarray | None, labels: np.ndarray | None, blank: int | str
) -> tuple[float, float]:
    """Exact-match rate and character error rate (both in percent) of greedy CTC decodes of
    ``[N, T, C]`` scores, against labels ``[N, L]`` (-1 padded) or the reference's decodes.
    ``blank`` is a class index or ``"last"``."""
    blank_index = got.shape[-1] - 1 if blank == "last" else int(blank)
    decoded = ctc_greedy_decode(got, blank_index)
    if labels is not None:
        wanted = _label_sequences(labels)
    else:
        assert reference is not None
        wanted = ctc_greedy_decode(reference, blank_index)
    exact = float(np.mean([d == w for d, w in zip(decoded, wanted, strict=True)]) * 100.0)
    # Most lines match: skip the quadratic edit distance for them.
    errors = sum(edit_distance(d, w) for d, w in zip(decoded, wanted, strict=True) if d != w)
    # Corpus CER: edits over all reference characters, so long lines weigh more than short.
    cer = 100.0 * errors / max(1, sum(len(w) for w in wanted))
    return exact, cer


def parse_sequence_options(text: str) -> tuple[int | str, bool]:
    """``sequence[:blank=N|last][,cer]`` → (blank, score on CER)."""
    _, _, options = text.partition(":")
    blank: int | str = 0
    cer = False
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key == "cer" and not value:
            cer = True
        elif key == "blank" and (value == "last" or value.isdigit()):
            blank = value if value == "last" else int(value)
        else:
            raise OptimizeError(
                f"--metric {text}: unknown option {option!r} — use sequence:blank=N|last,cer"
            )
    return blank, cer
