"""Every shell and Python block of README.md and docs/*.md, run against `prkdb dev`.

One test per block, named `file:line` of its opening fence; what runs, what is
skipped and the `<!-- docs-test: ... -->` marker are described in
tests/docs/blocks.py. The cluster is the one the docs describe: `prkdb dev
--nodes 3`, started once for this module in a temp dir (which is also every
block's cwd, so `prkdb-data/` is where the docs say) on the documented ports,
127.0.0.1:8080-8082 with peers on 8180-8182. Those ports must be free: the
fixture checks them first and fails naming the ones in use. Before each block
the test waits until every node answers and every partition has a leader (a
block may have killed a node). The cluster is stopped by PID at teardown, its
nodes too, even when a block failed.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prkdb.wire.messages import Status
from tests.docs.blocks import Block, collect
from tests.integration.cluster import WireConn

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCKS = collect(REPO, DOC_FILES)

CLIENT_PORTS = (8080, 8081, 8082)
PEER_PORTS = (8180, 8181, 8182)
DEV_CLUSTER_ID = "prkdb-dev"  # what `prkdb dev` names its cluster
READY_TIMEOUT = 30.0

# Runs one python block: compiled with the markdown file as its file name and the
# block's own line numbers, so a traceback shows the doc's line; a top-level
# await makes it a coroutine, run under trio (or asyncio).
PY_RUNNER = """\
import ast, inspect, sys
filename, source, loop = sys.argv[1:4]
code = compile(source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
g = {"__name__": "__main__", "__file__": filename}
if code.co_flags & inspect.CO_COROUTINE:
    async def main():
        await eval(code, g)
    if loop == "asyncio":
        import asyncio
        asyncio.run(main())
    else:
        import trio
        trio.run(main)
else:
    exec(code, g)
"""

# A failing command under `set -e` names its doc line (the script is padded so that
# bash's line numbers are the markdown file's).
SH_PRELUDE = ("set -eo pipefail; trap 'rc=$?; echo \"docs-test: line $LINENO: "
              "\\`$BASH_COMMAND\\` exited $rc\" >&2' ERR")


def busy_ports() -> list[int]:
    """Documented ports something already listens on (bound as the nodes bind)."""
    busy = []
    for port in CLIENT_PORTS + PEER_PORTS:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def descendants(root: int) -> set[int]:
    """PIDs below `root` (Linux /proc); empty where /proc is missing."""
    parent: dict[int, int] = {}
    for d in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # stat is "pid (comm) state ppid ...": comm may hold spaces, so split after ')'
            parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.update(kids)
        todo.extend(kids)
    return out


def runs_in(pid: int, cwd: Path) -> bool:
    """Whether `pid` is still one of ours: its cwd is our temp dir (PIDs get reused)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == cwd.resolve()
    except OSError:
        return False


def sigterm_when_parent_dies() -> Callable[[], None] | None:
    """A preexec_fn: Linux SIGTERMs `prkdb dev` (which stops its nodes) if pytest dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"({e})"


class DevCluster:
    """`prkdb dev --nodes 3` as a subprocess, in `cwd`; every PID seen is remembered."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env
        self.out = cwd.parent / f"{cwd.name}-prkdb-dev.out"
        self.pids: set[int] = set()
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prkdb", "dev", "--nodes", "3"], cwd=cwd, env=env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=sigterm_when_parent_dies())

    def diagnostics(self) -> str:
        logs = sorted((self.cwd / "prkdb-data").glob("node*.log"))
        parts = [f"--- prkdb dev output ({self.out}) ---", tail(self.out)]
        for log in logs:
            parts += [f"--- {log} ---", tail(log, 15)]
        return "\n".join(parts)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every node answers and all agree on a leader for every partition.

        Asked over the wire (tests/integration/cluster.py's WireConn), not with prkctl
        or the SDK, so that a broken CLI fails the blocks that use it, not this wait.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"`prkdb dev` exited with code {self.proc.returncode}\n"
                            + self.diagnostics(), pytrace=False)
            self.pids |= descendants(self.proc.pid)
            try:
                views = []
                for port in CLIENT_PORTS:
                    conn = WireConn(port, cluster_id=DEV_CLUSTER_ID, timeout=2.0)
                    try:
                        views.append(conn.call(Status(1)))
                    finally:
                        conn.close()
                # every node names the same leader (0: none) for the partition
                seen = [{v.partitions[p].leader for v in views}
                        for p in range(len(views[0].partitions))]
                leaderless = [p for p, leaders in enumerate(seen) if len(leaders) != 1
                              or 0 in leaders]
                if not leaderless:
                    return
                last = f"partitions without an agreed leader: {leaderless}"
            except (OSError, ConnectionError) as e:
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                pytest.fail(f"the dev cluster is not ready after {timeout:.0f}s: {last}\n"
                            + self.diagnostics(), pytrace=False)
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (a clean stop), then SIGKILL whatever process of ours is left."""
        if self.proc.poll() is None:
            self.pids |= descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        for pidfile in (self.cwd / "prkdb-data").glob("node*.pid"):
            with contextlib.suppress(OSError, ValueError):
                self.pids.add(int(pidfile.read_text().strip()))
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in sorted(self.pids):
            if runs_in(pid, self.cwd):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def block_env(bindir: Path) -> dict[str, str]:
    """The reader's shell: prkctl/prkdb/python are this interpreter on this tree.

    PRKDB_* settings of the caller are dropped, so the docs' defaults are what runs.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRKDB_")}
    for name, module in (("prkctl", "prkctl"), ("prkdb", "prkdb"), ("python", None),
                         ("python3", None)):
        shim = bindir / name
        target = f'"{sys.executable}" -m {module}' if module else f'"{sys.executable}"'
        shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        shim.chmod(0o755)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def dev_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    busy = busy_ports()
    if busy:
        pytest.fail(
            f"ports {busy} on 127.0.0.1 are in use: the docs test runs `prkdb dev --nodes 3` "
            "on the ports the docs use (clients 8080-8082, peers 8180-8182); stop what "
            "listens there (`ss -ltnp`), e.g. a `prkdb dev` left running", pytrace=False)
    env = block_env(tmp_path_factory.mktemp("docs-bin"))
    cluster = DevCluster(tmp_path_factory.mktemp("docs-cwd"), env)
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


def command(block: Block, md: Path) -> list[str]:
    """argv for one block; the code is padded so that its line numbers are the doc's."""
    padded = "\n" * block.line + block.code + "\n"
    if block.kind == "python":
        return [sys.executable, "-c", PY_RUNNER, str(md), padded, block.loop]
    return ["bash", "-c", SH_PRELUDE + padded, block.path]


def numbered(block: Block) -> str:
    return "\n".join(f"{block.line + 1 + i:5} | {ln}" for i, ln in
                     enumerate(block.code.splitlines()))


def last_lines(text: str, n: int = 40) -> str:
    lines = text.rstrip().splitlines()
    return "\n".join((["..."] if len(lines) > n else []) + lines[-n:]) or "(empty)"


def run_block(block: Block, cluster: DevCluster) -> None:
    if block.kind == "python":  # a syntax error names the doc line without a subprocess
        try:
            compile("\n" * block.line + block.code, block.path, "exec",
                    flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        except SyntaxError as e:
            pytest.fail(f"{block.path}:{e.lineno}: python block does not compile: {e.msg}",
                        pytrace=False)
    started = time.monotonic()
    proc = subprocess.Popen(command(block, REPO / block.path), cwd=cluster.cwd,
                            env=cluster.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=block.timeout)
        verdict = f"exited with code {proc.returncode}"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)  # the block's own session: it and its children
        out, err = proc.communicate()
        verdict = (f"did not finish within {block.timeout:g}s (killed; "
                   "`<!-- docs-test: timeout=N -->` gives it longer)")
    if proc.returncode == 0:
        return
    # the headline: the failing command (shell) and the last thing it said on stderr
    lines = [ln for ln in err.splitlines() if ln.strip()]
    where = [ln.removeprefix("docs-test: ") for ln in lines if ln.startswith("docs-test: ")]
    said = [ln for ln in lines if not ln.startswith("docs-test: ")]
    why = " -> ".join(where[-1:] + said[-1:])
    pytest.fail(
        f"{block.id}: {block.kind} block {verdict} after {time.monotonic() - started:.1f}s"
        f"{': ' + why if why else ''}\n(cwd {cluster.cwd})\n--- block ---\n{numbered(block)}\n"
        f"--- stdout ---\n{last_lines(out)}\n--- stderr ---\n{last_lines(err)}", pytrace=False)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block(block: Block, request: pytest.FixtureRequest) -> None:
    if block.problem:
        pytest.fail(block.problem, pytrace=False)
    if block.skip:
        pytest.skip(f"{block.id}: {block.skip}")
    cluster: DevCluster = request.getfixturevalue("dev_cluster")  # only if a block runs
    cluster.wait_ready()
    run_block(block, cluster)
