"""The one logger Protocol of PrkDB's lower layers (STYLE.md §8.12).

The Raft core logs through it, and so does prkdb/storage (the WAL, recovery
and the snapshot store). It lives here because prkdb.raft is the bottom
layer: it may import nothing outside the stdlib and itself, and storage
already depends on it (for `Entry`, `HardState`, ...), so storage importing
it from here adds no new edge, while a third "shared" module would be one
more place to look for no gain.

Events are snake_case past-tense verbs with the data as keyword arguments,
so the driver can pass a structlog logger bound to node and partition
straight in; tests pass a recorder. Whatever a method returns is ignored
(hence `-> object`). Logging never changes what the core decides.
"""

from __future__ import annotations

from typing import Any, Protocol


class Logger(Protocol):
    def debug(self, event: str, **kw: Any) -> object: ...
    def info(self, event: str, **kw: Any) -> object: ...
    def warning(self, event: str, **kw: Any) -> object: ...


class NullLogger:
    """Discards everything; the default so the core never needs a logger."""

    def debug(self, event: str, **kw: Any) -> None:
        pass

    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        pass


NULL_LOGGER = NullLogger()
"""A shared `NullLogger` for defaults (it has no state)."""


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
