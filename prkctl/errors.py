"""prkctl's failures and their exit codes (a leaf module: everything may import it).

    0  success
    1  the operation failed (cluster unreachable, no leader, cas mismatch, ...)
    2  bad usage (click), or bad input read from stdin (`BadInputError`)
    3  OutcomeUnknown: a write may or may not have been applied
"""

from __future__ import annotations

from typing import Any

import click

__all__ = ["BadInputError", "OutcomeUnknownError", "PrkctlError"]


class PrkctlError(click.ClickException):
    """An operation failed; exits 1 with one line on stderr."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"prkctl: {self.format_message()}", err=True)


class OutcomeUnknownError(PrkctlError):
    """A write's fate is unknown (it may have been applied); exits 3."""

    exit_code = 3


class BadInputError(PrkctlError):
    """Input read from stdin (`prkctl txn`) cannot be used; exits 2 like bad usage.

    The message names the spot: ``stdin line 3: ...`` or ``success[1]: ...``.
    """

    exit_code = 2
