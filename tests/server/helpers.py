"""Helpers for the in-process server tests: free loopback addresses, polling."""

from __future__ import annotations

from typing import Any

import trio

from tests.integration.cluster import free_ports


def free_addr() -> str:
    """A 127.0.0.1 address nothing listens on (yet)."""
    return f"127.0.0.1:{free_ports(1)[0]}"


async def eventually(cond: Any, timeout: float = 10.0) -> None:
    """Poll `cond()` until true (the node changes state in its own task)."""
    with trio.fail_after(timeout):
        while not cond():  # noqa: ASYNC110 - polling state the loop owns
            await trio.sleep(0.01)
