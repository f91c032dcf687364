"""structlog setup: JSON lines by default, key=value lines for humans.

Events are snake_case past-tense verbs with data as keys (STYLE §8.12):
`log.info("became_leader", partition=3, term=7)`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Protocol, cast

import structlog

from prkdb.raft.logger import Logger


class NodeLogger(Logger, Protocol):
    """The daemon's logger: the lower layers' `Logger` plus the levels and binding
    only the daemon uses (structlog's bound logger is one)."""

    def bind(self, **kw: Any) -> NodeLogger: ...
    def error(self, event: str, **kw: Any) -> object: ...
    def critical(self, event: str, **kw: Any) -> object: ...
    def exception(self, event: str, **kw: Any) -> object: ...

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    """Route structlog to `stream` (stderr) as JSON lines or console key=value."""
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**bind: Any) -> NodeLogger:
    """A structlog logger with `bind` values on every event."""
    return cast(NodeLogger, structlog.get_logger().bind(**bind))
