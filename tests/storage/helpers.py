"""Shared helpers for the storage tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prkdb.storage.recovery import dump


class RecordingLogger:
    """Collects (level, event, kw) so tests can assert what was logged."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append(("warning", event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self.events.append(("debug", event, kw))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.events if e == event]


def segment_paths(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".wal"))


def record_offsets(directory: Path, path: Path) -> list[int]:
    """Offsets of the good records of one segment file."""
    return [r.offset for r in dump(directory) if r.file == str(path)]


def flip_bit(path: Path, offset: int, bit: int = 3) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))
