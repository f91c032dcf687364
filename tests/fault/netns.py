"""Real `prkdb` processes, each in its own network namespace, with a nemesis.

Topology (one cluster at a time per test)::

    root ns: bridge  pf<pid>c<k>b   10.231.<x>.254/24   <- the test process talks here
               |-- veth pf<pid>c<k>v<i> ==== eth0 in netns prkf<pid>c<k>n<i>  10.231.<x>.<i>

Address range: 10.231.0.0/16 is reserved for these tests; each cluster takes
one free /24 (``x`` picked under a file lock, skipping any 10.231.x.0/24 that
already has an address in the root namespace, so concurrent test runs on one
machine never collide). Nothing else is routed: traffic only ever goes to our
own test hosts.

Every node listens on 10.231.<x>.<i>:7000 (clients) and :7001 (peers).

Faults (each undoable, all undone by `heal`):

* partitions: inside each namespace, a policy rule ``from <peer> iif eth0
  blackhole`` drops the peer's packets on input, silently (no RST, no ICMP:
  TCP stalls as on a real network split). A cut between A and B installs it
  in both. The ``local`` routing rule is moved behind ours (pref 1000) at
  setup so the rule is consulted for local destinations too. The test
  process (root namespace) always reaches every node.
* kill -9 and restart with the same data directory; SIGSTOP / SIGCONT.
* netem delay/loss: needs the kernel's sch_netem; where it is missing
  (``Specified qdisc kind is unknown``) `netem` raises `FaultUnavailable`,
  it is never faked.

Teardown: `close` kills our processes (by PID), deletes our namespaces,
veths and bridge. `cleanup_prefix` removes anything named with this
process's prefix (registered with atexit) and leftovers of dead test runs.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prkdb.config import PeerConfig
from prkdb.server.clusterconf import write_cluster_configs
from prkdb.wire.messages import Status, StatusOk
from tests.integration.cluster import NodeProcesses
from tests.integration.cluster import WireConn as _WireConn

CLUSTER_ID = "prkdb-fault"
NET = "10.231"
CLIENT_PORT = 7000
PEER_PORT = 7001
PREFIX = f"prkf{os.getpid()}"  # namespaces
LINK_PREFIX = f"pf{os.getpid()}"  # interfaces (IFNAMSIZ: 15 characters)
LOCK = Path("/tmp/prkdb-fault-netns.lock")
REPO = Path(__file__).resolve().parents[2]
_clusters = itertools.count(1)


class FaultUnavailable(Exception):
    """The kernel cannot inject this fault here (reported, never faked)."""


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p


def netns_unavailable() -> str | None:
    """Why namespaced clusters cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"{PREFIX}probe"
    try:
        _ip("netns", "add", probe)
    except (RuntimeError, OSError) as e:
        return f"ip netns add failed: {e}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def cleanup_prefix() -> None:
    """Remove our namespaces/links, and those of test runs whose process is gone."""

    def dead_or_me(name: str, pat: str) -> bool:
        m = re.match(pat, name)
        if not m:
            return False
        pid = int(m.group(1))
        return pid == os.getpid() or not Path(f"/proc/{pid}").exists()

    out = _ip("netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if dead_or_me(name, r"prkf(\d+)"):
            _kill_ns_pids(name)
            _ip("netns", "del", name, check=False)
    out = _ip("-o", "link", "show", check=False).stdout
    for m in re.finditer(r"^\d+: (pf\d+c\d+[bv]\d*p?)[@:]", out, re.M):
        if dead_or_me(m.group(1), r"pf(\d+)c"):
            _ip("link", "del", m.group(1), check=False)


def _kill_ns_pids(ns: str) -> None:
    p = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for pid in p.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


atexit.register(cleanup_prefix)


class WireConn(_WireConn):
    """The shared test connection, speaking this harness's cluster id."""

    def __init__(self, port: int, *, host: str, timeout: float = 2.0) -> None:
        super().__init__(port, host=host, cluster_id=CLUSTER_ID, timeout=timeout)


class NetnsCluster(NodeProcesses):
    """N prkdb nodes, each in its own namespace; see the module docstring."""

    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        *,
        partitions: int = 4,
        tick_ms: int = 20,
        election_ticks: int = 10,
        snapshot_entries: int = 10_000,
        extra: str = "",
        data_dirs: dict[int, Path] | None = None,
    ) -> None:
        super().__init__()
        self.root = root
        self.n = nodes
        self.partitions = partitions
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        k = next(_clusters)
        self.ns = {i: f"{PREFIX}c{k}n{i}" for i in self.ids}
        self.veth = {i: f"{LINK_PREFIX}c{k}v{i}" for i in self.ids}
        self.bridge = f"{LINK_PREFIX}c{k}b"
        self.paused: set[int] = set()
        self.cuts: set[frozenset[int]] = set()
        self.data_dirs = {i: (data_dirs or {}).get(i, root / f"data{i}") for i in self.ids}
        self._extra = extra
        self._snapshot_entries = snapshot_entries
        self.subnet = ""
        self.faults: list[str] = []  # a log of injected faults, for reports
        # Wiped nodes whose rebuild is not known to be over: id -> (marker seen, restart time).
        self._rebuild_watch: dict[int, tuple[bool, float | None]] = {}
        self._setup_network()
        self._write_configs()

    # --- network -----------------------------------------------------------------

    def addr(self, i: int) -> str:
        return f"{self.subnet}.{i}"

    @property
    def seeds(self) -> list[str]:
        return [f"{self.addr(i)}:{CLIENT_PORT}" for i in self.ids]

    @property
    def election_timeout(self) -> float:
        """The longest randomized election timeout, seconds (2 * election_ticks ticks)."""
        return 2 * self.election_ticks * self.tick_ms / 1000

    def _setup_network(self) -> None:
        LOCK.touch(exist_ok=True)
        with open(LOCK) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                used = set(
                    re.findall(rf"inet {re.escape(NET)}\.(\d+)\.", _ip("-4", "-o", "addr").stdout)
                )
                start = os.getpid() % 250
                x = next(
                    (str(1 + (start + j) % 250) for j in range(250)
                     if str(1 + (start + j) % 250) not in used),
                    None,
                )
                if x is None:
                    raise RuntimeError(f"no free /24 in {NET}.0.0/16")
                self.subnet = f"{NET}.{x}"
                _ip("link", "add", self.bridge, "type", "bridge")
                _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        for i in self.ids:
            ns, veth, tmp = self.ns[i], self.veth[i], f"{self.veth[i]}p"
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", tmp)
            _ip("link", "set", tmp, "netns", ns)
            _ip("link", "set", tmp, "name", "eth0", ns=ns)
            _ip("addr", "add", f"{self.addr(i)}/24", "dev", "eth0", ns=ns)
            _ip("link", "set", "eth0", "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            # Our drop rules must be consulted before the local table.
            _ip("rule", "add", "pref", "1000", "lookup", "local", ns=ns)
            _ip("rule", "del", "pref", "0", ns=ns)

    def _write_configs(self) -> None:
        peers = [
            PeerConfig(i, f"{self.addr(i)}:{CLIENT_PORT}", f"{self.addr(i)}:{PEER_PORT}")
            for i in self.ids
        ]
        write_cluster_configs(
            self.root, peers, cluster_id=CLUSTER_ID, data_dirs=self.data_dirs,
            partitions=self.partitions,
            raft={"tick_ms": self.tick_ms, "election_ticks": self.election_ticks,
                  "snapshot_entries": self._snapshot_entries},
            extra=self._extra,
            insecure=True,  # private addresses only our namespaces use
        )

    # --- processes ----------------------------------------------------------------

    def _command(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns[i], *super()._command(i)]

    def _env(self) -> dict[str, str]:
        return dict(super()._env(), PYTHONPATH=str(REPO))

    def _cwd(self) -> Path | None:
        return REPO

    def start(self, i: int, extra_args: Sequence[str] = ()) -> None:
        super().start(i, extra_args)
        self.paused.discard(i)
        if i in self._rebuild_watch:
            self._rebuild_watch[i] = (self._rebuild_watch[i][0], time.monotonic())

    def wipe(self, i: int) -> None:
        """kill -9 node i and lose its disk: its data dir is moved aside (kept for forensics)."""
        self.kill(i)
        d = self.data_dirs[i]
        n = sum(1 for _ in d.parent.glob(d.name + ".lost*"))
        if d.exists():
            d.rename(d.with_name(f"{d.name}.lost{n}"))
        self._rebuild_watch[i] = (False, None)
        self.faults.append(f"wipe {i}")

    REBUILD_MARKER_GRACE = 20.0  # seconds after the restart a marker must have shown by

    def rebuilding(self) -> list[int]:
        """Nodes whose rebuild (after a wipe) has not completed yet.

        A wiped node counts from the wipe on, not only while its data dir
        holds the REBUILDING marker: the restarted process writes the marker
        only after it started (seconds on a loaded machine), and a nemesis
        that looked in between wiped a second node, which in a 3-node
        cluster loses a majority of disks (the cluster never recovers).
        It stops counting once the marker was seen and is gone again, or
        (a rebuild too fast to catch) `REBUILD_MARKER_GRACE` seconds after
        the restart without a marker.
        """
        out = []
        for i in self.ids:
            marker = (self.data_dirs[i] / "REBUILDING").exists()
            watch = self._rebuild_watch.get(i)
            if watch is not None:
                seen, started = watch
                if marker:
                    self._rebuild_watch[i] = (True, started)
                elif seen or (started is not None
                              and time.monotonic() - started > self.REBUILD_MARKER_GRACE):
                    del self._rebuild_watch[i]
                    watch = None
            if marker or watch is not None:
                out.append(i)
        return out

    def kill(self, i: int) -> None:
        """kill -9: no handoff, no flush."""
        super().kill(i)
        self.paused.discard(i)
        self.faults.append(f"kill {i}")

    def restart(self, i: int) -> None:
        if self.alive(i):
            self.kill(i)
        self.start(i)
        self.faults.append(f"restart {i}")

    def pause(self, i: int) -> None:
        if self.alive(i):
            self.procs[i].send_signal(signal.SIGSTOP)
            self.paused.add(i)
            self.faults.append(f"pause {i}")

    def resume(self, i: int) -> None:
        if i in self.paused and self.alive(i):
            self.procs[i].send_signal(signal.SIGCONT)
        self.paused.discard(i)

    def terminate(self, i: int, timeout: float = 20) -> int:
        if i in self.paused:
            self.resume(i)
        return super().terminate(i, timeout)

    # --- partitions -----------------------------------------------------------------

    def _rule(self, op: str, at: int, peer: int) -> None:
        _ip("rule", op, "pref", str(100 + peer), "from", self.addr(peer), "iif", "eth0",
            "blackhole", ns=self.ns[at], check=op == "add")

    def cut(self, a: int, b: int) -> None:
        """Drop all packets between a and b (both directions, silently)."""
        pair = frozenset((a, b))
        if a == b or pair in self.cuts:
            return
        self._rule("add", a, b)
        self._rule("add", b, a)
        self.cuts.add(pair)

    def partition(self, *groups: Iterable[int]) -> None:
        """Split into `groups` (nodes not listed form one more group); heals other cuts."""
        sides = [set(g) for g in groups]
        rest = set(self.ids) - set().union(*sides)
        if rest:
            sides.append(rest)
        side_of = {i: k for k, s in enumerate(sides) for i in s}
        self.heal_network()
        for a, b in itertools.combinations(self.ids, 2):
            if side_of[a] != side_of[b]:
                self.cut(a, b)
        self.faults.append(f"partition {[sorted(s) for s in sides]}")

    def isolate(self, i: int) -> None:
        self.partition([i])

    def bridge_partition(self, left: Sequence[int], right: Sequence[int], middle: int) -> None:
        """`left` and `right` cannot talk; `middle` talks to both."""
        self.heal_network()
        for a in left:
            for b in right:
                self.cut(a, b)
        self.faults.append(f"bridge {sorted(left)}-{middle}-{sorted(right)}")

    def heal_network(self) -> None:
        for pair in list(self.cuts):
            a, b = sorted(pair)
            self._rule("del", a, b)
            self._rule("del", b, a)
            self.cuts.discard(pair)

    def netem(self, i: int, spec: str) -> None:
        """`tc qdisc add dev eth0 root netem <spec>` in node i's namespace."""
        p = subprocess.run(
            ["ip", "netns", "exec", self.ns[i], "tc", "qdisc", "replace", "dev", "eth0",
             "root", "netem", *spec.split()],
            capture_output=True, text=True,
        )
        if p.returncode != 0:
            raise FaultUnavailable(f"netem {spec!r}: {p.stderr.strip() or 'tc failed'}")
        self.faults.append(f"netem {i} {spec}")

    def heal(self) -> None:
        """Undo every fault that leaves the processes running: network and pauses."""
        self.heal_network()
        for i in list(self.paused):
            self.resume(i)

    # --- status ------------------------------------------------------------------

    def wire(self, i: int, timeout: float = 1.0) -> Any:
        """A test connection to node i's client port that said hello (and may read keys)."""
        return WireConn(CLIENT_PORT, host=self.addr(i), timeout=timeout)

    def status(self, i: int, timeout: float = 1.0) -> StatusOk:
        conn = self.wire(i, timeout)
        try:
            return conn.call(Status(1))
        finally:
            conn.close()

    def views(self, nodes: Iterable[int] | None = None) -> dict[int, StatusOk]:
        out = {}
        for i in nodes if nodes is not None else self.ids:
            if self.alive(i) and i not in self.paused:
                with contextlib.suppress(OSError, ConnectionError):
                    out[i] = self.status(i)
        return out

    def leaders(self, nodes: Iterable[int] | None = None) -> dict[int, tuple[int, int]]:
        """partition -> (leader, term), agreed by every answering node of `nodes`."""
        nodes = list(nodes if nodes is not None else self.ids)
        views = self.views(nodes)
        if len(views) < len([i for i in nodes if self.alive(i) and i not in self.paused]):
            return {}
        agreed: dict[int, tuple[int, int]] = {}
        for p in range(self.partitions):
            seen = {(v.partitions[p].leader, v.partitions[p].term) for v in views.values()}
            if len(seen) == 1:
                leader, term = seen.pop()
                if leader in nodes:
                    agreed[p] = (leader, term)
        return agreed

    def wait_ready(self, nodes: Iterable[int] | None = None,
                   timeout: float = 30.0) -> dict[int, tuple[int, int]]:
        nodes = list(nodes if nodes is not None else self.ids)
        deadline = time.monotonic() + timeout
        leaders: dict[int, tuple[int, int]] = {}
        while time.monotonic() < deadline:
            for i in nodes:
                if i in self.procs and self.procs[i].poll() is not None:
                    raise AssertionError(f"node {i} exited:\n{self.log(i)[-3000:]}")
            leaders = self.leaders(nodes)
            if len(leaders) == self.partitions:
                return leaders
            time.sleep(0.05)
        raise AssertionError(f"cluster not ready after {timeout}s: leaders {leaders}")

    def rss_kib(self, i: int) -> int:
        for line in Path(f"/proc/{self.procs[i].pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    # --- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        for i, p in self.procs.items():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGKILL)
                    if i in self.paused:
                        p.send_signal(signal.SIGCONT)
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        for i in self.ids:
            _kill_ns_pids(self.ns[i])
            _ip("netns", "del", self.ns[i], check=False)
            _ip("link", "del", self.veth[i], check=False)
        _ip("link", "del", self.bridge, check=False)


def stale_read(c: NetnsCluster, i: int, key: bytes, timeout: float = 1.0) -> Any:
    """GetOk (or Error) for `key` read STALE from node i alone."""
    from prkdb.partitioning import partition_for
    from prkdb.wire.messages import Get, ReadConsistency

    conn = c.wire(i, timeout)
    try:
        return conn.call(Get(2, key, ReadConsistency.STALE, partition_for(key, c.partitions)))
    finally:
        conn.close()


def wait_replicas_agree(c: NetnsCluster, keys: Iterable[bytes],
                        timeout: float = 20.0) -> dict[bytes, bytes | None]:
    """Poll STALE reads on every node until all agree on every key; key -> value."""
    keys = list(keys)
    deadline = time.monotonic() + timeout
    last: dict[bytes, dict[int, Any]] = {}
    while True:
        last = {}
        try:
            for k in keys:
                last[k] = {i: getattr(stale_read(c, i, k), "value", "<error>") for i in c.ids}
        except OSError:
            last = {}
        if last and all(len(set(v.values())) == 1 for v in last.values()):
            return {k: v[1] for k, v in last.items()}
        if time.monotonic() > deadline:
            bad = {k: v for k, v in last.items() if len(set(v.values())) != 1}
            raise AssertionError(f"replicas disagree after {timeout}s: {bad}")
        time.sleep(0.2)
