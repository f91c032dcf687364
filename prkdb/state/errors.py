"""Exceptions of the replicated state machine, in the three kinds of STYLE §8.5.

* **Caller mistake** — :class:`InvalidCommand`: the server asked to propose a
  command that breaks a limit or is ill-formed. Raised by
  :func:`prkdb.state.limits.validate_command` *before* proposing, so the bad
  command never reaches the log. (If one reaches the log anyway, ``apply``
  turns it into a failed no-op result; it never raises, because every replica
  must apply every log entry the same way.)
* **Odd input** — :class:`CommandDecodeError` and :class:`SnapshotDecodeError`:
  bytes that are not a command or a snapshot we wrote. Both subclass
  ``ValueError`` so a caller that decodes untrusted bytes can catch them
  narrowly.
* **Broken invariant** — :class:`StateInvariantError`: the driver fed the
  state machine something that cannot happen in a correct node (e.g. an index
  that does not increase). It subclasses ``AssertionError`` like
  ``RaftInvariantError`` and must only be caught by the partition supervisor,
  which restarts the partition from its WAL and snapshot.
"""

from __future__ import annotations

from prkdb.state.results import ResultCode

__all__ = [
    "CommandDecodeError",
    "InvalidCommand",
    "SnapshotDecodeError",
    "StateError",
    "StateInvariantError",
]


class StateError(Exception):
    """Root of the non-invariant errors raised by :mod:`prkdb.state`."""


class CommandDecodeError(StateError, ValueError):
    """The bytes are not a well-formed encoded command (see ``commands.py``)."""


class SnapshotDecodeError(StateError, ValueError):
    """The bytes are not a well-formed state-machine snapshot."""


class InvalidCommand(StateError, ValueError):
    """A command breaks a limit or a rule; it must not be proposed.

    Attributes:
        code: the :class:`ResultCode` that ``apply`` would have returned for the
            same command, so the server can map it to a wire error
            (``KEY_TOO_LARGE`` -> TOO_LARGE, ``INVALID_COMMAND`` -> BAD_REQUEST).
    """

    def __init__(self, message: str, code: ResultCode = ResultCode.INVALID_COMMAND) -> None:
        super().__init__(message)
        self.code = code


class StateInvariantError(AssertionError):
    """A state-machine invariant broke; the partition must be restarted."""
