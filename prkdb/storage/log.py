"""The logger protocol used by storage (same shape as the Raft core's, STYLE §12).

Events are snake_case past-tense verbs with the data as keyword arguments, so
the daemon can pass `structlog.get_logger().bind(node=...)` straight in.
"""

from __future__ import annotations

from typing import Any, Protocol


class Logger(Protocol):
    def info(self, event: str, **kw: Any) -> None: ...

    def warning(self, event: str, **kw: Any) -> None: ...


class NullLogger:
    """Default logger: drops everything."""

    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        pass

    def debug(self, event: str, **kw: Any) -> None:
        pass


NULL_LOGGER = NullLogger()
