"""A bounded on-disk spool of telemetry records, kept while the link is down and sent when it
returns. Records are JSON lines in numbered segment files; past the byte limit the oldest
segment is dropped and its records counted, so the spool never fills the disk."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import ValidationError

from edgeshift.fleet.schema import TelemetryBatch, TelemetryRecord

log = logging.getLogger("edgeshift.agent")

SPOOL_MAX_BYTES = 2 << 20
SEGMENT_MAX_BYTES = 64 << 10
BATCH_MAX_RECORDS = 1000  # the control plane's TelemetryBatch limit
_SUFFIX = ".jsonl"


class Spool:
    """Append records; ``flush(send)`` sends the oldest segments first, one batch each."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int = SPOOL_MAX_BYTES,
        segment_max_bytes: int = SEGMENT_MAX_BYTES,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_max_bytes = min(segment_max_bytes, max_bytes)
        self.dropped = 0  # records dropped to keep under max_bytes (since this process began)
        directory.mkdir(parents=True, exist_ok=True)
        segments = self._segments()
        self._next_seq = int(segments[-1].stem) + 1 if segments else 0
        self._current: Path | None = segments[-1] if segments else None
        self._current_lines = _count_lines(self._current) if self._current else 0

    def _segments(self) -> list[Path]:
        return sorted(
            p for p in self.directory.iterdir() if p.suffix == _SUFFIX and p.stem.isdigit()
        )

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._segments())

    def __len__(self) -> int:
        return sum(_count_lines(p) for p in self._segments())

    def append(self, record: TelemetryRecord) -> None:
        line = record.model_dump_json().encode() + b"\n"
        current = self._current
        if (
            current is None
            or not current.exists()
            or current.stat().st_size + len(line) > self.segment_max_bytes
            or self._current_lines >= BATCH_MAX_RECORDS
        ):
            current = self._roll()
        # Appends are not fsynced: telemetry lost in a power cut costs nothing, a sync per
        # record costs the device's flash. A torn last line is skipped when read.
        with current.open("ab") as f:
            f.write(line)
        self._current_lines += 1
        self._trim()

    def _roll(self) -> Path:
        self._current = self.directory / f"{self._next_seq:012d}{_SUFFIX}"
        self._next_seq += 1
        self._current_lines = 0
        self._current.touch()
        return self._current

    def _trim(self) -> None:
        segments = self._segments()
        total = sum(p.stat().st_size for p in segments)
        while total > self.max_bytes and len(segments) > 1:
            oldest = segments.pop(0)
            total -= oldest.stat().st_size
            self.dropped += _count_lines(oldest)
            oldest.unlink()

    async def flush(self, send: Callable[[TelemetryBatch], Awaitable[object]]) -> int:
        """Send every spooled record, oldest first; a segment is deleted once the control plane
        took it. An error from SEND stops the flush (the rest stays for next time) and is
        raised. Returns how many records were sent."""
        sent = 0
        for segment in self._segments():
            records = _read(segment)
            if segment == self._current:
                self._current = None  # appends go to a fresh segment from here on
            if records:
                await send(TelemetryBatch(records=records))
            segment.unlink(missing_ok=True)
            sent += len(records)
        return sent


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _read(path: Path) -> list[TelemetryRecord]:
    records: list[TelemetryRecord] = []
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return records
    for line in lines[:BATCH_MAX_RECORDS]:
        try:
            records.append(TelemetryRecord.model_validate_json(line))
        except ValidationError:
            log.debug("skipping a torn telemetry record in %s", path)
    return records
