"""Fenced code blocks of the docs, and how the docs test treats each one.

tests/docs/test_docs_blocks.py runs every shell and Python block of README.md
and docs/*.md against a real `prkdb dev --nodes 3` cluster, so a renamed flag or
a changed signature fails CI instead of a reader. This module only reads the
markdown; it runs nothing.

What runs:

- ```` ```bash ````, ```` ```sh ````, ```` ```shell ````: the whole block, with
  `bash` under `set -eo pipefail` (a command that is expected to fail must say
  so, e.g. `prkctl get nope || echo absent`);
- ```` ```console ````: the lines starting with `$ ` (the rest is output and
  is not compared);
- ```` ```python ````: the block as a program (`sys.executable`, a subprocess).
  A block with a top-level `await` / `async with` is a fragment of an async
  function: it runs under `trio.run` (the `asyncio` option: `asyncio.run`).
- Untagged blocks are output, diagrams or wire dumps and are not run, unless
  they look like commands (a line starting with `$ `, `prkctl `, `prkdb `,
  `python ` or `pip `): those fail until tagged, so a command cannot hide in
  an untagged block. Other tags (`toml`, `text`, ...) are never run.

Shell and Python blocks run in one temp dir, the `prkdb dev` cluster's cwd
(so `prkdb-data/` is where the docs say), in file order, README.md first;
files written by one block are there for the next. `prkctl`, `prkdb` and
`python` resolve to the test's interpreter and this working tree.

The marker, an HTML comment on the line before the fence (blank lines between
are allowed; GitHub does not render it):

    <!-- docs-test: skip: REASON -->      not run; reported as skipped with REASON
    <!-- docs-test: timeout=60 -->        seconds for this block (default 30)
    <!-- docs-test: asyncio -->           top-level await runs under asyncio
    <!-- docs-test: run -->               run although it looks unrunnable (below)

Options combine with spaces (`run timeout=60`); `skip:` must come last, as
its reason takes the rest of the comment. A shell block without a marker that
does something the test cannot do (systemd, pip install, sudo, the test
suite, a foreground `prkdb dev`/`prkdb serve`, multi-host addresses, a deployed
node's paths, benchmarks) fails, asking for a decision: a skip with its
reason, or a command that runs. A marker followed by no code block, or with
an unknown option, fails too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SHELL_TAGS = frozenset({"bash", "sh", "shell"})
CONSOLE_TAGS = frozenset({"console"})
PYTHON_TAGS = frozenset({"python"})
DEFAULT_TIMEOUT = 30.0

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
_MARKER = re.compile(r"^[ \t]*<!--[ \t]*docs-test:(?P<body>.*?)-->[ \t]*$")
_LOOKS_LIKE_COMMAND = re.compile(r"^[ \t]*(\$ |(prkctl|prkdb|python3?|pip3?)[ \t]+[-\w])")

# (pattern, why an unmarked shell block containing it cannot run here)
_UNRUNNABLE: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), why) for p, why in (
        (r"\bpip3? install\b", "it installs packages"),
        (r"\b(systemctl|journalctl)\b", "it needs systemd"),
        (r"\b(sudo|useradd)\b", "it needs root"),
        (r"\bpytest\b", "it runs the test suite"),
        (r"\bprkdb (dev|serve)\b(?![^\n]*&[ \t]*$)", "`prkdb dev`/`serve` runs until stopped"),
        (r"\b10\.\d+\.\d+\.\d+", "it uses the addresses of a multi-host deployment"),
        (r"(^|[\s=])/(var/lib|etc|backups?)/", "it uses a deployed node's paths"),
        (r"scripts/bench_|\bprkctl bench\b", "benchmarks take minutes"),
    )
)


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced block the docs test reports on (runs, skips or fails)."""

    path: str  # relative to the repo, e.g. "docs/client.md"
    line: int  # 1-based line of the opening fence; the code starts on line + 1
    kind: str  # "shell" | "python" | "text" (text blocks only appear with a problem)
    code: str  # the body, without the fence's indentation; console: commands only
    skip: str | None = None
    problem: str | None = None  # set: the block fails with this message, unrun
    timeout: float = DEFAULT_TIMEOUT
    loop: str = "trio"  # event loop for a top-level await: "trio" | "asyncio"

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True, slots=True)
class Marker:
    line: int
    run: bool = False
    skip: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    loop: str = "trio"
    problem: str | None = None


def parse_marker(body: str, line: int) -> Marker:
    """The options of one `<!-- docs-test: ... -->` comment (`body` is after the colon)."""
    body = body.strip()
    opts: dict[str, object] = {}
    while body:
        if body.startswith("skip:"):
            reason = body[len("skip:"):].strip()
            if not reason:
                return Marker(line, problem="`skip:` needs a reason")
            opts["skip"] = reason
            break
        word, _, body = body.partition(" ")
        body = body.strip()
        if word == "run":
            opts["run"] = True
        elif word == "asyncio":
            opts["loop"] = "asyncio"
        elif word.startswith("timeout="):
            try:
                opts["timeout"] = float(word[len("timeout="):])
            except ValueError:
                return Marker(line, problem=f"bad timeout {word!r}")
        else:
            return Marker(line, problem=(
                f"unknown docs-test option {word!r} (known: skip: REASON, timeout=N, "
                "asyncio, run)"))
    return Marker(line, **opts)  # type: ignore[arg-type]  # opts keys are fields


def unrunnable_reason(code: str) -> str | None:
    """Why an unmarked shell block cannot run against the dev cluster, if it cannot."""
    for raw in code.splitlines():
        cmd = re.sub(r"(^|\s)#.*$", "", raw)  # comments may mention anything
        for pattern, why in _UNRUNNABLE:
            m = pattern.search(cmd)
            if m:
                return f"{why} ({m.group(0).strip()!r})"
    return None


def _console_commands(lines: list[str]) -> str:
    """Keep `$ cmd` lines (as `cmd`), blank out the output, so line numbers hold."""
    return "\n".join(ln[2:] if ln.startswith("$ ") else "" for ln in lines)


def _classify(path: str, line: int, tag: str, body: list[str],
              marker: Marker | None) -> Block | None:
    code = "\n".join(body)
    if marker is not None and marker.problem:
        return Block(path, line, "text", code, problem=f"{path}:{marker.line}: {marker.problem}")
    if tag in SHELL_TAGS or tag in CONSOLE_TAGS:
        kind = "shell"
        if tag in CONSOLE_TAGS:
            code = _console_commands(body)
    elif tag in PYTHON_TAGS:
        kind = "python"
    elif tag == "":
        if any(_LOOKS_LIKE_COMMAND.match(ln) for ln in body):
            return Block(path, line, "text", code, problem=(
                f"{path}:{line}: an untagged block that looks like commands: tag it "
                "```bash or ```console (or ```text if it is output)"))
        if marker is not None:
            return Block(path, line, "text", code, problem=(
                f"{path}:{marker.line}: a docs-test marker on an untagged block, "
                "which is never run"))
        return None
    else:
        return None  # toml, text, json, ...: never run
    if marker is None:
        marker = Marker(line=line)
    elif marker.skip:
        return Block(path, line, kind, code, skip=marker.skip)
    if kind == "shell" and not marker.run:
        why = unrunnable_reason(code)
        if why:
            return Block(path, line, kind, code, problem=(
                f"{path}:{line}: the docs test cannot run this block: {why}. Mark it "
                "`<!-- docs-test: skip: REASON -->` on the line before the fence, "
                "make it runnable, or force it with `<!-- docs-test: run -->`"))
    return Block(path, line, kind, code, timeout=marker.timeout, loop=marker.loop)


def parse(text: str, path: str) -> list[Block]:
    """Every block of one markdown file that the docs test reports on, in file order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    marker: Marker | None = None
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        mk = _MARKER.match(lines[i])
        if mk:
            if marker is not None:
                blocks.append(Block(path, marker.line, "text", "", problem=(
                    f"{path}:{marker.line}: docs-test marker not followed by a code block")))
            marker = parse_marker(mk.group("body"), i + 1)
        elif m:
            indent, fence = m.group("indent"), m.group("fence")
            tag = (m.group("info").split() or [""])[0].lower()
            j = i + 1
            while j < len(lines) and not re.match(
                    rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[j]):
                j += 1
            body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip()
                    for ln in lines[i + 1:j]]
            block = _classify(path, i + 1, tag, body, marker)
            if block is not None:
                blocks.append(block)
            marker = None
            i = j
        elif lines[i].strip() and marker is not None:
            blocks.append(Block(path, marker.line, "text", "", problem=(
                f"{path}:{marker.line}: docs-test marker not followed by a code block")))
            marker = None
        i += 1
    if marker is not None:
        blocks.append(Block(path, marker.line, "text", "", problem=(
            f"{path}:{marker.line}: docs-test marker not followed by a code block")))
    return blocks


def collect(repo: Path, files: Iterable[Path]) -> list[Block]:
    """Blocks of `files` (absolute, under `repo`), in the order given."""
    out: list[Block] = []
    for f in files:
        out.extend(parse(f.read_text(encoding="utf-8"), f.relative_to(repo).as_posix()))
    return out
