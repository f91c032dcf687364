"""The Raft core is a pure state machine: stdlib only, no I/O, no global rng.

STYLE.md §8.1: `prkdb/raft/` may import only a small stdlib allowlist and its
own modules. Anything that touches time, sockets, threads, trio, structlog or
the module-level `random` generator would make a replay from a seed diverge,
so this test parses every module with `ast` (nothing is imported or run) and
names each offending line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RAFT_DIR = Path(__file__).resolve().parents[2] / "prkdb" / "raft"

ALLOWED = frozenset(
    {"__future__", "enum", "dataclasses", "typing", "collections", "collections.abc", "random"}
)
# Attributes of the `random` module that are fine to use: the class itself.
# Every other attribute (random.random, random.randint, random.seed, ...) is
# the hidden module-level generator.
RANDOM_OK_ATTRS = frozenset({"Random"})


def _allowed_module(name: str) -> bool:
    return name in ALLOWED or name == "prkdb.raft" or name.startswith("prkdb.raft.")


def purity_violations(source: str, filename: str) -> list[str]:
    """Return one line per violation in `source`, as `file:line: what`."""
    tree = ast.parse(source, filename)
    out: list[str] = []
    random_aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _allowed_module(alias.name):
                    out.append(f"{filename}:{node.lineno}: import {alias.name}")
                if alias.name == "random":
                    random_aliases.add(alias.asname or "random")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                continue  # relative import: inside prkdb.raft by construction
            mod = node.module or ""
            if not _allowed_module(mod):
                out.append(f"{filename}:{node.lineno}: from {mod} import ...")
            if mod == "random":
                for alias in node.names:
                    if alias.name not in RANDOM_OK_ATTRS:
                        out.append(f"{filename}:{node.lineno}: from random import {alias.name}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("__import__", "eval", "exec", "open")
        ):
            out.append(f"{filename}:{node.lineno}: call to {node.func.id}()")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in random_aliases
            and node.attr not in RANDOM_OK_ATTRS
        ):
            out.append(f"{filename}:{node.lineno}: module-level rng {node.value.id}.{node.attr}")
    return out


def _raft_files() -> list[Path]:
    files = sorted(RAFT_DIR.rglob("*.py"))
    assert len(files) >= 15, f"expected the raft package at {RAFT_DIR}, found {len(files)} files"
    return files


@pytest.mark.parametrize("path", _raft_files(), ids=lambda p: str(p.relative_to(RAFT_DIR)))
def test_raft_module_is_pure(path: Path) -> None:
    violations = purity_violations(path.read_text(), str(path.relative_to(RAFT_DIR)))
    assert violations == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import time\n", ["m.py:1: import time"]),
        ("import trio\n", ["m.py:1: import trio"]),
        ("from os import path\n", ["m.py:1: from os import ..."]),
        ("import structlog as s\n", ["m.py:1: import structlog"]),
        ("import random\nx = random.random()\n", ["m.py:2: module-level rng random.random"]),
        ("import random as r\nr.seed(1)\n", ["m.py:2: module-level rng r.seed"]),
        ("from random import randint\n", ["m.py:1: from random import randint"]),
        ("x = __import__('socket')\n", ["m.py:1: call to __import__()"]),
        ("import random\nrng = random.Random(3)\n", []),
        ("from random import Random\n", []),
        ("from prkdb.raft.types import Entry\nfrom . import log\n", []),
        ("import collections.abc\nfrom typing import final\n", []),
        ("import prkdb.wire\n", ["m.py:1: import prkdb.wire"]),
        ("from prkdb.raftx import y\n", ["m.py:1: from prkdb.raftx import ..."]),
    ],
    ids=[
        "time",
        "trio",
        "os",
        "structlog-alias",
        "random.random",
        "random-alias-seed",
        "from-random-randint",
        "dunder-import",
        "random.Random-ok",
        "from-random-Random-ok",
        "prkdb.raft-ok",
        "stdlib-allowlist-ok",
        "other-prkdb-package",
        "prefix-lookalike",
    ],
)
def test_checker_flags_what_it_should(source: str, expected: list[str]) -> None:
    # The checker itself must be able to fail, or the test above proves nothing.
    assert purity_violations(source, "m.py") == expected
