"""The logger Protocol the core logs through (STYLE.md §8.12).

Logging never changes what the core decides; the driver passes a structlog
logger bound to node and partition, tests pass a recorder.
"""

from __future__ import annotations

from typing import Any, Protocol


class Logger(Protocol):
    def debug(self, event: str, **kw: Any) -> Any: ...
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...


class NullLogger:
    """Discards everything; the default so the core never needs a logger."""

    def debug(self, event: str, **kw: Any) -> None:
        pass

    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        pass


class RecordingLogger:
    """Keeps events as `LEVEL id event k=v` lines; used by tests and goldens."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _add(self, level: str, event: str, kw: dict[str, Any]) -> None:
        tail = " ".join(f"{k}={v}" for k, v in kw.items())
        self.lines.append(f"{level} {event} {tail}".rstrip())

    def debug(self, event: str, **kw: Any) -> None:
        self._add("DEBUG", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._add("INFO", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._add("WARNING", event, kw)
