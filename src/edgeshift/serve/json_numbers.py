"""Large flat JSON number arrays, parsed a piece at a time.

orjson parses a whole body in one call that holds the GIL, and makes a Python object of every
number (~32 bytes each): a 63 MiB body of numbers holds the interpreter for a few hundred
milliseconds and needs ~100 MiB of lists on top of its own bytes. For bodies over
``RequestLimits.json_offload_bytes`` (decoded in a worker thread), :func:`lift_number_arrays`
takes every large ``"data": [numbers]`` out of the JSON text before it is parsed, leaving a
placeholder; :func:`parse_numbers` then reads each one in pieces straight into an array of
the input's dtype. Between pieces the worker thread lets go of the GIL, so the event loop
keeps answering other clients; at any time only one piece exists as Python objects.

Anything that is not a plain array of numbers (nested, strings, booleans, null) is left in
place for orjson, and a malformed piece is an error just as orjson would report it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

_NUMBER_BYTES = b"0123456789eE+-., \t\r\n"
_WHITESPACE = b" \t\r\n"
PIECE_BYTES = 256 << 10  # ~1-2 ms of parsing: the longest the event loop waits on a piece
LIFT_BYTES = 1 << 20  # arrays shorter than this stay in the JSON: orjson is as fast
_TOKEN = f"edgeshift-numbers-{secrets.token_hex(8)}-"  # clients cannot guess it


class NumberSyntaxError(ValueError):
    """A lifted array is not valid JSON."""


@dataclass(frozen=True)
class LiftedNumbers:
    """The text of one ``[...]`` of numbers, without its brackets, inside ``source``."""

    source: bytes
    start: int
    end: int

    def pieces(self) -> list[tuple[int, int]]:
        """(start, end) of comma-separated runs of about PIECE_BYTES."""
        out: list[tuple[int, int]] = []
        a = self.start
        while a < self.end:
            b = min(a + PIECE_BYTES, self.end)
            if b < self.end:
                comma = self.source.find(b",", b, self.end)
                b = self.end if comma < 0 else comma
            out.append((a, b))
            a = b + 1
        if a == self.end and out:  # the text ended with a comma: "[1,2,]"
            out.append((a, a))
        return out


def _skip_space(text: bytes, i: int) -> int:
    while i < len(text) and text[i] in _WHITESPACE:
        i += 1
    return i


def _all_numbers(text: bytes, start: int, end: int) -> bool:
    for a in range(start, end, PIECE_BYTES):
        if text[a : min(a + PIECE_BYTES, end)].translate(None, _NUMBER_BYTES):
            return False
    return True


def lift_number_arrays(text: bytes) -> tuple[bytes, dict[str, LiftedNumbers]]:
    """TEXT with every large ``"data": [numbers]`` replaced by a placeholder string, and the
    placeholders' arrays. Text without any comes back as it is."""
    parts: list[bytes] = []
    lifted: dict[str, LiftedNumbers] = {}
    done = pos = 0
    while (key := text.find(b'"data"', pos)) >= 0:
        pos = key + 6
        colon = _skip_space(text, pos)
        if colon >= len(text) or text[colon] != ord(":"):
            continue
        opening = _skip_space(text, colon + 1)
        if opening >= len(text) or text[opening] != ord("["):
            continue
        closing = text.find(b"]", opening)
        if closing < 0 or closing - opening < LIFT_BYTES:
            continue
        if not _all_numbers(text, opening + 1, closing):
            continue  # nested, strings, booleans: orjson's
        token = f"{_TOKEN}{len(lifted)}"
        lifted[token] = LiftedNumbers(text, opening + 1, closing)
        parts += (text[done:opening], b'"', token.encode(), b'"')
        done = pos = closing + 1
    if not lifted:
        return text, lifted
    parts.append(text[done:])
    return b"".join(parts), lifted


def lifted_of(data: Any, lifted: dict[str, LiftedNumbers]) -> LiftedNumbers | None:
    return lifted.get(data) if isinstance(data, str) and data.startswith(_TOKEN) else None


def parse_numbers(
    numbers: LiftedNumbers, dtype: np.dtype[Any], count: int, loads: Any
) -> np.ndarray:
    """The lifted array as COUNT elements of DTYPE (int or float kinds); ValueError with a
    reason when it is not COUNT numbers that fit."""
    out = np.empty(count, dtype=dtype)
    allowed = {int} if dtype.kind in "iu" else {int, float}
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    filled = 0
    for a, b in numbers.pieces():
        try:
            values = loads(b"[" + numbers.source[a:b] + b"]")
        except ValueError as exc:
            raise NumberSyntaxError(
                str(exc).splitlines()[0] if str(exc) else "bad number"
            ) from None
        if not values:
            raise NumberSyntaxError("an empty element in a number array")
        if not set(map(type, values)) <= allowed:
            raise ValueError(f"data must be {'integers' if info else 'numbers'}")
        if info is not None and (min(values) < info.min or max(values) > info.max):
            raise ValueError(f"values outside [{info.min}, {info.max}]")
        if filled + len(values) > count:
            raise ValueError(f"more than the shape's {count} elements")
        with np.errstate(over="raise", invalid="raise"):
            out[filled : filled + len(values)] = np.asarray(values, dtype=dtype)
        filled += len(values)
        time.sleep(0)  # hand the GIL over: the event loop waits at most about one piece
    if filled != count:
        raise ValueError(f"the shape needs {count} elements, got {filled}")
    return out
