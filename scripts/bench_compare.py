#!/usr/bin/env python3
"""PrkDB vs etcd on this machine, in one run, interleaved (issue 7; method in docs/benchmarks.md).

Starts a 3-node etcd (Debian's etcd-server, installed with apt-get if absent;
default durability and timeouts) and a 3-node PrkDB (fsync on, default
config), both on 127.0.0.1, and drives both with the same closed-loop Python
load generator (16-byte keys, 100-byte values, 1 s warm-up, then --duration
seconds measured, systems alternated per workload, --reps repetitions):

  W1            one client, sequential puts
  W64           64 clients doing puts (split over --procs load-generator processes)
  R64-lin       64 clients, linearizable gets over 1,000 preloaded keys
  R64-follower  PrkDB FOLLOWER reads; etcd: linearizable gets sent to the follower
                endpoints (etcd has no follower-read mode)
  R64-stale     PrkDB STALE reads; etcd serializable gets, spread over all nodes
  FAILOVER      a W1 writer; kill -9 of the leader (PrkDB: of the writer's partition);
                seconds until the first acknowledged write issued after the kill
  SCAN-1k       8 clients, each scanning a 1,000-key prefix (100-byte values) over and
                over, linearizable (PrkDB: `scan(prefix=...)` merging 8 partitions; etcd:
                one range request, keys and values base64-decoded as a client would)
  LEASE-KA      8 clients renewing 10,000 leases (TTL 300 s) round-robin; reported in
                renewals/s (PrkDB: `keep_alive_many` of 100 ids, one request per
                partition; etcd: its gateway's keepalive, one lease per request)
  W64-watch     W64 while 100 watchers, each on a 10-key prefix of the written keys
                (together: every key), run in a separate process; reported: events/s
                delivered and the W64 throughput against plain W64 of the same rep
                (PrkDB: `client.watch(prefix)` on one client; etcd: 100 gateway watch
                streams, one HTTP connection each)
  W64-stalled   (PrkDB only) W64 while 24 watchers that never read (raw sockets, a Watch
                of every key on each partition of each node) hold their streams open:
                the throughput against plain W64 of the same rep, and the servers' RSS
                growth (a slow watcher must be cut off, not slow writes or grow memory);
                measured after a longer warm-up (+STALLED_S + 2 s), once the servers
                have ended the stalled watches (until then they cost what live ones do)
  RSS           VmRSS per server process after loading --rss-keys keys (batched)
  TLS           (--no-tls skips it) W1, W64 and R64-lin against a second
                3-node PrkDB with [tls] on both listeners (mutual TLS between peers,
                certificates from prkdb.security.certs) and [auth] on (the clients log
                in as root: every request is checked), alternated with the plain
                cluster in the same reps: throughput, latency and server CPU with TLS
                and auth against plain; with etcd, also a second 3-node etcd with TLS
                on both listeners (peers mutual; no auth), whose TLS cost is the
                yardstick: PrkDB's ratio over etcd's (the issue's goal: >= 1.0x for
                throughput, <= 1.0x for server CPU). Both clients speak TLS through
                prkdb.security.stream.TlsStream

plus server CPU microseconds per operation (/proc/PID/stat over each measured
window), the load generator's own CPU, and the physical floor (one fdatasync
+ two loopback round trips) measured in the same run. etcd is driven through
its v3 JSON gateway (HTTP/1.1 keep-alive, one connection per client), PrkDB
through its SDK. Progress goes to stderr; the table (and --json) to stdout.

    python scripts/bench_compare.py            # 3 reps x 10 s, 1,000,000 keys for RSS
    python scripts/bench_compare.py --quick    # ~1-2 minute smoke run
    python scripts/bench_compare.py --workloads SCAN-1k,LEASE-KA --failover-reps 0 --rss-keys 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_cluster import fsync_floor, loopback_rtt, wait_ready  # noqa: E402
from etcd_load import EtcdError, EtcdHttp  # noqa: E402

from prkdb.bench import key_of, percentile, preload  # noqa: E402
from prkdb.client import PrkDbClient, ReadConsistency  # noqa: E402
from prkdb.client.security import Credentials, TlsOptions  # noqa: E402
from prkdb.errors import AuthFailed, PrkdbError  # noqa: E402
from prkdb.partitioning import partition_for  # noqa: E402
from prkdb.security.certs import CertAuthority  # noqa: E402
from prkdb.server.main import dev_configs  # noqa: E402
from prkdb.server.watch import STALLED_S  # noqa: E402
from prkdb.state.kv import prefix_end  # noqa: E402

CLUSTER_ID = "prkdb-dev"
VALUE = b"x" * 100
READ_KEYS = 1000
PARTITIONS = 8  # what `prkdb dev` and scripts/bench_cluster.py use
# (label, workload, clients)
WORKLOADS = (
    ("W1", "put", 1),
    ("W64", "put", 64),
    ("R64-lin", "get-linearizable", 64),
    ("R64-follower", "get-follower", 64),
    ("R64-stale", "get-stale", 64),
    ("SCAN-1k", "scan", 8),
    ("LEASE-KA", "keepalive", 8),
    ("W64-watch", "put-watched", 64),
    ("W64-stalled", "put-stalled", 64),
)
STALLED_PER_NODE = 8
# Extra warm-up of W64-stalled: the server ends a watch whose client acknowledged
# nothing for STALLED_S (prkdb/server/watch.py); the window starts after that.
STALLED_WARMUP = STALLED_S + 2.0
WATCHERS = 100
SCAN_PREFIX = b"scan/"
SCAN_KEYS = 1000
LEASES = 10_000
LEASE_TTL_S = 300
KA_BATCH = 100  # lease ids per PrkDB keep_alive_many call
LEVELS = {
    "get-linearizable": ReadConsistency.LINEARIZABLE,
    "get-follower": ReadConsistency.FOLLOWER,
    "get-stale": ReadConsistency.STALE,
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
ETCD_ATTEMPT_TIMEOUT = 0.1  # seconds, the etcd FAILOVER writer's per-attempt timeout
TLS_WORKLOADS = ("W1", "W64", "R64-lin")  # what the "prkdb-tls" and "etcd-tls" systems run
TLS_SYSTEMS = ("prkdb-tls", "etcd-tls")
TLS_PORT_OFFSET = 300  # its client ports: --port + 300.. (peers + 100 more)


def tls_options(spec: dict) -> TlsOptions | None:
    """The SDK's TLS settings a target names ("ca_file"), or None for plaintext."""
    return TlsOptions(spec["ca_file"]) if spec.get("ca_file") else None


def credentials(spec: dict) -> Credentials | None:
    """root's credentials if a target names its password file ("password_file")."""
    if not spec.get("password_file"):
        return None
    return Credentials("root", Path(spec["password_file"]).read_text().splitlines()[0])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- /proc ------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of one process, seconds (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- processes ---------------------------------------------------------------------------

STARTED: list[subprocess.Popen] = []  # everything we started, for cleanup


def spawn(cmd: list[str], log_path: Path, **kw: Any) -> subprocess.Popen:
    """Start a child in its own process group (so Ctrl-C reaches only us, and we kill groups)."""
    with open(log_path, "ab") as out:
        p = subprocess.Popen(cmd, stdout=kw.pop("stdout", out), stderr=kw.pop("stderr", out),
                             start_new_session=True, **kw)
    STARTED.append(p)
    return p


def kill_group(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)


def cleanup() -> None:
    live = [p for p in STARTED if p.poll() is None]
    for p in live:
        kill_group(p, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for p in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
    for p in STARTED:
        kill_group(p)  # the group too: nothing a child forked may outlive us
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)
    STARTED.clear()


class Cluster:
    """Three local server processes, each restartable by node id (1..3)."""

    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cmds: dict[int, list[str]] = {}
        self.procs: dict[int, subprocess.Popen] = {}

    def start_node(self, node: int) -> None:
        self.procs[node] = spawn(self.cmds[node], self.root / f"{self.name}-node{node}.log",
                                 cwd=REPO)

    def start(self) -> None:
        for node in self.cmds:
            self.start_node(node)

    def kill(self, node: int) -> None:
        p = self.procs[node]
        kill_group(p)
        p.wait()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.poll() is None]

    def check_alive(self) -> None:
        for node, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.root / f"{self.name}-node{node}.log").read_text(errors="replace")
                raise RuntimeError(f"{self.name} node {node} exited ({p.returncode}):\n"
                                   f"{tail[-2000:]}")


class PrkCluster(Cluster):
    name = "prkdb"

    def __init__(self, root: Path, port: int, *, tls: bool = False) -> None:
        super().__init__(root)
        if tls:
            self.name = "prkdb-tls"
        paths = dev_configs(3, port, root / self.name, PARTITIONS)
        self.tls: TlsOptions | None = None
        self.password_file = ""  # with auth: root's password (the clients log in as root)
        self.credentials: Credentials | None = None
        if tls:  # TLS on both listeners; peers mutual (prkdb/security/tls.py); auth on
            certs = root / self.name / "certs"
            ca = CertAuthority("bench CA")
            ca_file = ca.write(certs)
            password_file = certs / "root.password"
            password_file.write_text("bench-root-password\n")
            for i, path in enumerate(paths, 1):
                c = ca.issue_node(i).write(certs, f"node{i}")
                with path.open("a") as f:
                    f.write(f'\n[tls]\ncert_file = "{c.cert_file}"\nkey_file = "{c.key_file}"\n'
                            f'ca_file = "{ca_file}"\n'
                            f'\n[auth]\nenabled = true\nroot_password_file = "{password_file}"\n')
            self.tls = TlsOptions(str(ca_file))
            self.password_file = str(password_file)
            self.credentials = credentials({"password_file": self.password_file})
        for i, path in enumerate(paths, 1):
            self.cmds[i] = [sys.executable, "-m", "prkdb", "serve", "--config", str(path),
                            "--log-level", "warning"]
        self.seeds = [f"127.0.0.1:{port + i}" for i in range(3)]

    async def ready(self) -> None:
        if self.tls is None:
            await wait_ready(self.seeds)
        # (with auth: the connect's login waits until the root user exists)
        for _ in range(100):
            try:
                async with PrkDbClient.connect(self.seeds, cluster_id=CLUSTER_ID, timeout=30,
                                               tls=self.tls, credentials=self.credentials) as c:
                    for node in self.cmds:  # every node answers (a restarted one too)
                        await c.status(node)
                    return
            except AuthFailed:  # root is created by partition 0's first leader
                await trio.sleep(0.2)
        raise RuntimeError(f"{self.name}: the root user was not created")


class EtcdCluster(Cluster):
    name = "etcd"

    def __init__(self, root: Path, port: int, binary: str, *, tls: bool = False) -> None:
        super().__init__(root)
        self.ca_file = ""  # with TLS: the CA the clients trust
        scheme = "https" if tls else "http"
        if tls:
            self.name = "etcd-tls"
        self.endpoints = [f"127.0.0.1:{port + i}" for i in range(3)]
        peers = [f"{scheme}://127.0.0.1:{port + 100 + i}" for i in range(3)]
        initial = ",".join(f"e{i + 1}={peers[i]}" for i in range(3))
        certs = root / self.name / "certs"
        ca = CertAuthority("bench etcd CA") if tls else None
        if ca is not None:
            self.ca_file = str(ca.write(certs))
        for i in range(3):
            client = f"{scheme}://{self.endpoints[i]}"
            self.cmds[i + 1] = [
                binary, "--name", f"e{i + 1}",
                "--data-dir", str(root / f"{self.name}{i + 1}"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"bench-compare-{self.name}",
                "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
            ]
            if ca is not None:  # TLS on both listeners, peers mutual (as PrkDB's [tls])
                c = ca.issue_node(i + 1).write(certs, f"e{i + 1}")
                self.cmds[i + 1] += [
                    # No --trusted-ca-file: etcd would then require client certificates.
                    "--cert-file", str(c.cert_file), "--key-file", str(c.key_file),
                    "--peer-cert-file", str(c.cert_file), "--peer-key-file", str(c.key_file),
                    "--peer-trusted-ca-file", self.ca_file, "--peer-client-cert-auth",
                ]

    async def statuses(self) -> dict[int, dict]:
        out = {}
        for node in self.cmds:
            conn = EtcdHttp(self.endpoints[node - 1], self.ca_file)
            try:
                with trio.fail_after(2):
                    out[node] = await conn.status()
            except (EtcdError, trio.TooSlowError):
                pass
            finally:
                conn.close()
        return out

    async def leader(self) -> int:
        """Node id (1..3) of the current leader, as its own status says."""
        for st in (await self.statuses()).items():
            node, s = st
            if s.get("leader") and s["leader"] == s["header"]["member_id"]:
                return node
        raise RuntimeError("etcd has no leader")

    async def ready(self) -> None:
        deadline = trio.current_time() + 60
        while True:
            sts = await self.statuses()
            leaders = {s.get("leader", "0") for s in sts.values()}
            if len(sts) == 3 and len(leaders) == 1 and "0" not in leaders:
                return
            if trio.current_time() > deadline:
                self.check_alive()
                raise RuntimeError(f"etcd not ready after 60 s: {sts}")
            await trio.sleep(0.2)


def ensure_etcd() -> tuple[str | None, str]:
    """The etcd binary, installing Debian's etcd-server if needed; (None, why) if impossible."""
    path = shutil.which("etcd")
    if path:
        return path, ""
    if not shutil.which("apt-get"):
        return None, "etcd is not installed and there is no apt-get to install it"
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            return None, "etcd is not installed; installing it needs root (no sudo)"
        prefix = ["sudo", "-n"]
    log("etcd not found: apt-get install -y etcd-server ...")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "etcd-server"]):
        try:
            r = subprocess.run(prefix + cmd, capture_output=True, text=True, timeout=900,
                               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"{' '.join(cmd)} failed: {e}"
        if r.returncode != 0:
            return None, f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}"
    path = shutil.which("etcd")
    return (path, "") if path else (None, "etcd-server installed but no etcd binary on PATH")


def etcd_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return out.split("\n")[0].replace("etcd Version: ", "").strip() or "?"


def check_ports_free(ports: list[int]) -> None:
    for port in ports:
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise SystemExit(f"port {port} is busy ({e}); use --port/--etcd-port") from e
        finally:
            s.close()


# --- the load generator (runs in worker processes) ---------------------------------------


async def worker_main(spec: dict) -> None:
    """One load-generator process: `clients` closed-loop tasks, timed by the parent.

    Protocol on stdin/stdout: print "@@ready" once connected, read the start
    time (time.monotonic(), shared by all processes on Linux), warm up, measure,
    print "@@result {json}".
    """
    system, workload = spec["system"], spec["workload"]
    clients, offset, total = spec["clients"], spec["offset"], spec["total"]
    keys = spec["keys"]
    ops = []
    prk: PrkDbClient | None = None
    conns: list[EtcdHttp] = []
    lease_ids = spec.get("lease_ids", [])
    per_op = 1  # items (scans, renewals, ...) one op does
    if system.startswith("prkdb"):
        prk = await PrkDbClient.connect(spec["seeds"], cluster_id=CLUSTER_ID, timeout=10,
                                        tls=tls_options(spec), credentials=credentials(spec))
        for j in range(clients):
            if workload in ("put", "put-watched", "put-stalled"):
                ops.append(lambda k, c=prk: c.put(k, VALUE))
            elif workload == "scan":
                ops.append(lambda k, c=prk: c.scan(SCAN_PREFIX))
            elif workload == "keepalive":
                per_op = KA_BATCH
                mine = lease_ids[offset + j::total]
                batches = [mine[i:i + KA_BATCH] for i in range(0, len(mine), KA_BATCH)]
                ops.append(lambda k, c=prk, b=batches: _renew(c, b, k))
            else:
                ops.append(lambda k, c=prk, lv=LEVELS[workload]: c.get_with_consistency(k, lv))
    else:
        endpoints = spec["endpoints"]
        for g in range(offset, offset + clients):
            conn = EtcdHttp(endpoints[g % len(endpoints)], spec.get("ca_file", ""))
            await conn.connect()
            conns.append(conn)
            if workload in ("put", "put-watched"):
                ops.append(lambda k, c=conn: c.put(k, VALUE))
            elif workload == "scan":
                ops.append(lambda k, c=conn: c.range(SCAN_PREFIX, prefix_end(SCAN_PREFIX)))
            elif workload == "keepalive":
                mine = lease_ids[g::total]
                ops.append(lambda k, c=conn, ids=mine: _renew_etcd(c, ids, k))
            else:
                ops.append(lambda k, c=conn, s=workload == "get-stale": c.get(k, serializable=s))
    print("@@ready", flush=True)
    t0 = float(await trio.to_thread.run_sync(sys.stdin.readline))
    ws = t0 + spec["warmup"]
    we = ws + spec["duration"]
    lat: list[float] = []
    errors = 0
    cpu: list[float] = []

    async def client_task(g: int, op: Any) -> None:
        nonlocal errors
        i = g
        while True:
            key = key_of(i % keys)
            i += total
            s = time.monotonic()
            try:
                await op(key)
            except (PrkdbError, EtcdError):
                e = time.monotonic()
                if ws <= e <= we:
                    errors += 1
                await trio.sleep(0.001)
                continue
            e = time.monotonic()
            if ws <= e <= we:
                lat.append(e - s)

    await trio.sleep(max(0.0, t0 - time.monotonic()))
    async with trio.open_nursery() as n:
        for j, op in enumerate(ops):
            n.start_soon(client_task, offset + j, op)
        await trio.sleep(max(0.0, ws - time.monotonic()))
        cpu.append(time.process_time())
        await trio.sleep(max(0.0, we - time.monotonic()))
        cpu.append(time.process_time())
        n.cancel_scope.cancel()
    for conn in conns:
        conn.close()
    if prk is not None:
        await prk.aclose()
    result = {"lat_us": [round(x * 1e6, 1) for x in lat], "errors": errors,
              "cpu_s": cpu[1] - cpu[0], "per_op": per_op}
    print("@@result " + json.dumps(result), flush=True)


def watch_prefixes() -> list[bytes]:
    """WATCHERS prefixes that split the READ_KEYS written keys into groups of 10."""
    assert READ_KEYS == 10 * WATCHERS and key_of(0) == b"bench-%010d" % 0
    return [b"bench-%09d" % w for w in range(WATCHERS)]


async def watcher_main(spec: dict) -> None:
    """The watchers of W64-watch in one process: count events delivered in the window.

    Same stdin/stdout protocol as `worker_main`.
    """
    counted = 0
    window = [float("inf"), float("-inf")]

    def on_events(n: int) -> None:
        nonlocal counted
        if window[0] <= time.monotonic() <= window[1]:
            counted += n

    async with trio.open_nursery() as nursery:
        if spec["system"] == "prkdb":
            client = await PrkDbClient.connect(spec["seeds"], cluster_id=CLUSTER_ID, timeout=10)

            async def watch(prefix: bytes) -> None:
                async with client.watch(prefix) as events:
                    async for _ in events:
                        on_events(1)

            for prefix in watch_prefixes():
                nursery.start_soon(watch, prefix)
        else:
            endpoints = spec["endpoints"]

            async def watch(prefix: bytes, endpoint: str) -> None:
                conn = EtcdHttp(endpoint)
                try:
                    await conn.watch_events(prefix, prefix_end(prefix), on_events)
                finally:
                    conn.close()

            for w, prefix in enumerate(watch_prefixes()):
                nursery.start_soon(watch, prefix, endpoints[w % len(endpoints)])
        await trio.sleep(1.0)  # every stream open
        print("@@ready", flush=True)
        t0 = float(await trio.to_thread.run_sync(sys.stdin.readline))
        window[0] = t0 + spec["warmup"]
        window[1] = window[0] + spec["duration"]
        await trio.sleep(max(0.0, window[0] - time.monotonic()))
        cpu0 = time.process_time()
        await trio.sleep(max(0.0, window[1] - time.monotonic()))
        cpu = time.process_time() - cpu0
        nursery.cancel_scope.cancel()
    print("@@result " + json.dumps({"events": counted, "cpu_s": cpu}), flush=True)


def open_stalled_watchers(seeds: list[str], partitions: int) -> list[socket.socket]:
    """STALLED_PER_NODE connections per node, each watching every key of every partition
    from "now" (the node's applied index: no backlog) and never reading a byte: the
    server must cut them off (WATCH_OVERFLOW) once they fall behind, not block."""
    from prkdb.client import SyncClient
    from prkdb.client.attempt import hello_frame
    from prkdb.wire.messages import Watch, encode_message

    socks = []
    with SyncClient(seeds, cluster_id=CLUSTER_ID) as client:
        client.refresh_topology()
        applied = {address: [p.applied for p in client.status(node).partitions]
                   for node, address in client.topology.nodes.items()}
    for address in seeds:
        host, port = address.rsplit(":", 1)
        for _ in range(STALLED_PER_NODE):
            sock = socket.create_connection((host, int(port)))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            frames = hello_frame(CLUSTER_ID) + b"".join(
                encode_message(Watch(p + 1, p, b"", None, applied[address][p], False))
                for p in range(partitions))
            sock.sendall(frames)
            socks.append(sock)
    return socks


async def _renew(client: PrkDbClient, batches: list[list[int]], key: bytes) -> None:
    """Renew the next batch of this client's leases (every id must still exist)."""
    batch = batches[int(key.rsplit(b"-", 1)[-1] or b"0") % len(batches)]
    left = await client.keep_alive_many(batch)
    if not all(left.values()):
        raise RuntimeError(f"a lease of {batch[:3]}... is gone: the benchmark's TTL is too short")


async def _renew_etcd(conn: EtcdHttp, ids: list[int], key: bytes) -> None:
    await conn.lease_keepalive(ids[int(key.rsplit(b"-", 1)[-1] or b"0") % len(ids)])


def run_load(system: str, cluster: Cluster, workload: str, clients: int, target: dict,
             args: argparse.Namespace, root: Path) -> dict:
    """One measured window of one workload against one system; the parent's view."""
    nprocs = 1 if clients == 1 else max(1, min(args.procs, clients))
    per = [clients // nprocs + (1 if i < clients % nprocs else 0) for i in range(nprocs)]
    workers = []
    offset = 0
    # W64-stalled measures writes once the server has cut the stalled watchers off:
    # until then (STALLED_S of unacknowledged bytes) they cost what live ones do.
    warmup = args.warmup + (STALLED_WARMUP if workload == "put-stalled" else 0.0)
    for i, n in enumerate(per):
        spec = {"system": system, "workload": workload, "clients": n, "offset": offset,
                "total": clients, "keys": READ_KEYS, "warmup": warmup,
                "duration": args.duration, **target}
        offset += n
        workers.append(spawn([sys.executable, __file__, "--worker", json.dumps(spec)],
                             root / f"worker-{system}-{i}.log", stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True))

    stalled: list[socket.socket] = []
    rss_before = None
    if workload.startswith("put") and clients > 1:  # W64's growth is the stalled run's baseline
        rss_before = sum(proc_rss_mb(p) for p in cluster.pids())
    if workload == "put-stalled":
        stalled = open_stalled_watchers(target["seeds"], PARTITIONS)
    if workload == "put-watched":
        spec = {"system": system, "warmup": args.warmup, "duration": args.duration,
                **({"endpoints": cluster.endpoints} if isinstance(cluster, EtcdCluster)
                   else target)}
        workers.append(spawn([sys.executable, __file__, "--watcher", json.dumps(spec)],
                             root / f"worker-{system}-{len(workers)}.log",
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))

    def fail(w: subprocess.Popen, what: str) -> RuntimeError:
        kill_group(w)
        w.wait()
        tail = "".join((root / f"worker-{system}-{j}.log").read_text(errors="replace")[-1500:]
                       for j in range(len(workers)))
        return RuntimeError(f"load generator {what} ({system} {workload}):\n{tail}")

    for w in workers:
        while not (line := w.stdout.readline()).startswith("@@ready"):
            if not line:
                raise fail(w, "died before it was ready")
    t0 = time.monotonic() + 0.05
    for w in workers:
        w.stdin.write(f"{t0!r}\n")
        w.stdin.flush()
    ws = t0 + warmup
    we = ws + args.duration
    pids = cluster.pids()
    time.sleep(max(0.0, ws - time.monotonic()))
    cpu0 = sum(proc_cpu_s(p) for p in pids)
    time.sleep(max(0.0, we - time.monotonic()))
    cpu1 = sum(proc_cpu_s(p) for p in pids)
    lat: list[float] = []
    errors = 0
    gen_cpu = []
    per_op = 1
    events = watcher_cpu = None
    for w in workers:
        try:
            out, _ = w.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise fail(w, "hung") from None
        res = next((ln for ln in out.splitlines() if ln.startswith("@@result ")), None)
        if res is None:
            raise fail(w, f"exited {w.returncode} without a result")
        r = json.loads(res.removeprefix("@@result "))
        if "events" in r:  # the watcher process
            events, watcher_cpu = r["events"], r["cpu_s"]
            continue
        lat += r["lat_us"]
        per_op = r["per_op"]
        errors += r["errors"]
        gen_cpu.append(r["cpu_s"])
    cluster.check_alive()
    rss_growth = None
    if rss_before is not None:
        rss_growth = sum(proc_rss_mb(p) for p in cluster.pids()) - rss_before
    for sock in stalled:
        sock.close()
    lat.sort()
    ops = len(lat)
    d = args.duration
    return {
        "ops": ops, "errors": errors, "ops_per_s": ops / d,
        "items_per_s": ops * per_op / d,
        "events_per_s": None if events is None else events / d,
        "rss_growth_mb": rss_growth,
        "watcher_cpu_us_per_event": (watcher_cpu * 1e6 / events) if events else None,
        "server_cpu_us_per_item": (cpu1 - cpu0) * 1e6 / (ops * per_op) if ops else None,
        "p50_ms": percentile(lat, 0.50) / 1e3, "p90_ms": percentile(lat, 0.90) / 1e3,
        "p99_ms": percentile(lat, 0.99) / 1e3, "max_ms": (lat[-1] / 1e3) if lat else None,
        "server_cpu_us_per_op": (cpu1 - cpu0) * 1e6 / ops if ops else None,
        "server_cpu_cores": (cpu1 - cpu0) / d,
        "loadgen_procs": nprocs,
        "loadgen_cpu_cores": sum(gen_cpu) / d,
        "loadgen_busiest_proc_pct": 100 * max(gen_cpu) / d,
    }


# --- preload, failover, RSS (in the parent) ----------------------------------------------


async def preload_all(system: str, cluster: Cluster, keys: int) -> None:
    if system.startswith("prkdb"):
        assert isinstance(cluster, PrkCluster)
        async with PrkDbClient.connect(cluster.seeds, cluster_id=CLUSTER_ID, timeout=30,
                                       tls=cluster.tls, credentials=cluster.credentials) as c:
            await preload(c, keys, len(VALUE))
    else:
        await bulk_load_etcd(cluster, keys, batch=1)


def scan_items() -> list[tuple[bytes, bytes]]:
    return [(SCAN_PREFIX + b"%06d" % i, VALUE) for i in range(SCAN_KEYS)]


async def preload_scan(system: str, cluster: Cluster) -> None:
    """The 1,000 keys SCAN-1k reads (batched: by partition for PrkDB, txns of 100 for etcd)."""
    items = scan_items()
    if system == "prkdb":
        async with PrkDbClient.connect(cluster.seeds, cluster_id=CLUSTER_ID, timeout=30) as c:
            by_part: dict[int, list[tuple[str, bytes, bytes]]] = {}
            for k, v in items:
                by_part.setdefault(c.topology.partition_of(k), []).append(("put", k, v))
            for ops in by_part.values():
                for i in range(0, len(ops), 100):
                    await c.batch(ops[i:i + 100])
            assert await c.count(SCAN_PREFIX) == SCAN_KEYS
    else:
        assert isinstance(cluster, EtcdCluster)
        conn = EtcdHttp(cluster.endpoints[await cluster.leader() - 1])
        try:
            for i in range(0, len(items), 100):
                await conn.put_many(items[i:i + 100])
            assert len(await conn.range(SCAN_PREFIX, prefix_end(SCAN_PREFIX))) == SCAN_KEYS
        finally:
            conn.close()


async def grant_leases(system: str, cluster: Cluster, count: int,
                       concurrency: int = 16) -> list[int]:
    """`count` leases of LEASE_TTL_S seconds (PrkDB: spread over the partitions)."""
    ids: list[int] = []
    todo = iter(range(count))
    if system == "prkdb":
        async with PrkDbClient.connect(cluster.seeds, cluster_id=CLUSTER_ID, timeout=30) as c:

            async def grant() -> None:
                for i in todo:
                    ids.append((await c.grant_lease(LEASE_TTL_S, key=b"lease-%d" % i)).id)

            async with trio.open_nursery() as n:
                for _ in range(concurrency):
                    n.start_soon(grant)
        return ids
    assert isinstance(cluster, EtcdCluster)
    endpoint = cluster.endpoints[await cluster.leader() - 1]

    async def grant_etcd() -> None:
        conn = EtcdHttp(endpoint)
        try:
            for _ in todo:
                ids.append(await conn.lease_grant(LEASE_TTL_S))
        finally:
            conn.close()

    async with trio.open_nursery() as n:
        for _ in range(concurrency):
            n.start_soon(grant_etcd)
    return ids


async def bulk_load_etcd(cluster: EtcdCluster, keys: int, batch: int = 100,
                         concurrency: int = 16) -> None:
    endpoint = cluster.endpoints[await cluster.leader() - 1]
    chunks = iter([[(key_of(i), VALUE) for i in range(s, min(keys, s + batch))]
                   for s in range(0, keys, batch)])

    async def worker() -> None:
        conn = EtcdHttp(endpoint, cluster.ca_file)
        try:
            for chunk in chunks:
                if len(chunk) == 1:
                    await conn.put(*chunk[0])
                else:
                    await conn.put_many(chunk)
        finally:
            conn.close()

    async with trio.open_nursery() as n:
        for _ in range(concurrency):
            n.start_soon(worker)


async def bulk_load_prkdb(cluster: PrkCluster, keys: int, batch: int = 100,
                          concurrency: int = 16) -> None:
    by_part: dict[int, list[bytes]] = {}
    for i in range(keys):
        k = key_of(i)
        by_part.setdefault(partition_for(k, PARTITIONS), []).append(k)
    chunks = iter([[("put", k, VALUE) for k in ks[s:s + batch]]
                   for ks in by_part.values() for s in range(0, len(ks), batch)])
    async with PrkDbClient.connect(cluster.seeds, cluster_id=CLUSTER_ID, timeout=60) as c:
        assert c.topology.partitions == PARTITIONS

        async def worker() -> None:
            for chunk in chunks:
                await c.batch(chunk)

        async with trio.open_nursery() as n:
            for _ in range(concurrency):
                n.start_soon(worker)


async def rss(system: str, cluster: Cluster, keys: int) -> dict:
    before = [proc_rss_mb(p) for p in cluster.pids()]
    t = time.monotonic()
    if system == "prkdb":
        await bulk_load_prkdb(cluster, keys)
    else:
        await bulk_load_etcd(cluster, keys)
    load_s = time.monotonic() - t
    await trio.sleep(2)
    after = [proc_rss_mb(p) for p in cluster.pids()]
    return {"keys": keys, "load_s": load_s, "rss_mb_before": before, "rss_mb_after": after}


async def prkdb_leader_of(cluster: PrkCluster, key: bytes) -> int:
    async with PrkDbClient.connect(cluster.seeds, cluster_id=CLUSTER_ID, timeout=10) as c:
        part = partition_for(key, PARTITIONS)
        for _ in range(50):
            st = await c.status()
            leader = next(p.leader for p in st.partitions if p.partition == part)
            if leader:
                own = await c.status(leader)  # ask the leader itself
                mine = next(p for p in own.partitions if p.partition == part)
                if mine.leader == leader and mine.role.name.lower() == "leader":
                    return leader
            await trio.sleep(0.1)
    raise RuntimeError(f"no stable PrkDB leader for partition {part}")


async def failover_once(system: str, cluster: Cluster, rep: int) -> dict:
    """W1 writer, kill -9 of the leader, seconds to the first ack of a write issued after it."""
    key = key_of(10_000 + rep)
    acks: list[tuple[float, float]] = []
    t_kill = float("inf")
    recovered = trio.Event()
    errors = 0
    trace: list[tuple[float, str, str]] = []  # etcd: (when, endpoint, why) of failed attempts
    prk: PrkDbClient | None = None
    if system == "prkdb":
        prk = await PrkDbClient.connect(cluster.seeds, cluster_id=CLUSTER_ID, timeout=30)

        async def put() -> None:
            await prk.put(key, VALUE)
    else:
        # An eager etcd client: stay on one endpoint; on any failure (refused, reset, an
        # error answer, or no answer within `attempt` seconds) move to the next one at
        # once; pause 5 ms only after every endpoint failed in a row. The short attempt
        # timeout matters: etcd 3.4 holds a put sent to a follower during the election
        # until its ~7 s request timeout instead of failing it, so with the PrkDB SDK's
        # 2 s attempt timeout etcd would measure ~2 s. 0.1 s favours etcd.
        conns = [EtcdHttp(ep) for ep in cluster.endpoints]
        cur = await cluster.leader() - 1
        failed_in_row = 0
        attempt = ETCD_ATTEMPT_TIMEOUT

        async def put() -> None:
            nonlocal cur, failed_in_row, errors
            while True:
                try:
                    with trio.fail_after(attempt):
                        await conns[cur].put(key, VALUE)
                    failed_in_row = 0
                    return
                except (EtcdError, trio.TooSlowError) as e:
                    errors += 1
                    trace.append((time.monotonic(), cluster.endpoints[cur],
                                  str(e)[-120:] or f"no answer within {attempt} s"))
                    conns[cur].close()
                    cur = (cur + 1) % len(conns)
                    failed_in_row += 1
                    if failed_in_row >= len(conns):
                        failed_in_row = 0
                        await trio.sleep(0.005)

    async def writer() -> None:
        nonlocal errors
        while True:
            s = time.monotonic()
            try:
                await put()
            except PrkdbError:
                errors += 1
                continue
            e = time.monotonic()
            acks.append((s, e))
            if s >= t_kill:
                recovered.set()

    result: dict[str, Any] = {}
    async with trio.open_nursery() as n:
        n.start_soon(writer)
        await trio.sleep(1.0)
        if system == "prkdb":
            victim = await prkdb_leader_of(cluster, key)
        else:
            victim = await cluster.leader()
        before = len(acks)
        t_kill = time.monotonic()
        cluster.kill(victim)
        with trio.move_on_after(30):
            await recovered.wait()
        n.cancel_scope.cancel()
    first = next(((s, e) for s, e in acks[before:] if s >= t_kill), None)
    last_before = max((e for _, e in acks if e < t_kill), default=None)
    result = {"victim": victim, "failover_s": (first[1] - t_kill) if first else None,
              "gap_s": (first[1] - last_before) if first and last_before else None,
              "errors": errors,
              "failed_attempts": [(round(t - t_kill, 4), ep, why)  # first and last few
                                  for t, ep, why in trace[:3] + trace[3:][-3:]]}
    if prk is not None:
        await prk.aclose()
    else:
        for c in conns:
            c.close()
    cluster.start_node(victim)
    await cluster.ready()
    await trio.sleep(1.0)  # let the restarted node catch up before the next rep
    return result


# --- the run -------------------------------------------------------------------------------


def med(values: list[float | None]) -> tuple[float, float, float] | None:
    v = [x for x in values if x is not None]
    if not v:
        return None
    return statistics.median(v), min(v), max(v)


def fmt(x: float, unit: str) -> str:
    if unit in ("ops/s", "µs/op", "MB"):
        return f"{x:,.0f}"
    if unit == "s":
        return f"{x:.3f}"
    return f"{x:.2f}" if x < 100 else f"{x:,.0f}"


def cell(stat: tuple[float, float, float] | None, unit: str) -> str:
    if stat is None:
        return "n/a"
    m, lo, hi = stat
    if lo == hi:
        return fmt(m, unit)
    return f"{fmt(m, unit)} [{fmt(lo, unit)}–{fmt(hi, unit)}]"


def build_table(data: dict, systems: list[str]) -> str:
    runs = data["runs"]
    rows = []

    def stat(system: str, label: str, field: str) -> tuple[float, float, float] | None:
        return med([r[field] for r in runs.get(system, {}).get(label, [])])

    def row(name: str, label: str, field: str, unit: str, target: str = "",
            check: Any = None, etcd_label: str | None = None) -> None:
        p = stat("prkdb", label, field)
        e = stat("etcd", etcd_label or label, field) if "etcd" in systems else None
        if p is None and e is None:
            return  # not run (--workloads)
        ratio = p[0] / e[0] if p and e and e[0] else None
        met = ""
        if check is not None and ratio is not None:
            met = "yes" if check(ratio) else "**no**"
        rows.append((f"{name} ({unit})", cell(p, unit), cell(e, unit),
                     f"{ratio:.2f}×" if ratio is not None else "n/a", target, met))

    row("W1 puts", "W1", "ops_per_s", "ops/s")
    row("W1 p50", "W1", "p50_ms", "ms", "≤ 0.8×", lambda r: r <= 0.8)
    row("W1 p99", "W1", "p99_ms", "ms")
    row("W64 puts", "W64", "ops_per_s", "ops/s", "≥ 2.0×", lambda r: r >= 2.0)
    row("W64 p50", "W64", "p50_ms", "ms")
    row("W64 p99", "W64", "p99_ms", "ms")
    row("R64 linearizable gets", "R64-lin", "ops_per_s", "ops/s", "≥ 2.0×", lambda r: r >= 2.0)
    row("R64 linearizable p50", "R64-lin", "p50_ms", "ms")
    row("R64 linearizable p99", "R64-lin", "p99_ms", "ms")
    row("R64 follower gets¹", "R64-follower", "ops_per_s", "ops/s")
    row("R64 follower p99¹", "R64-follower", "p99_ms", "ms")
    row("R64 stale gets²", "R64-stale", "ops_per_s", "ops/s", "≥ 4.0×", lambda r: r >= 4.0)
    row("R64 stale p99²", "R64-stale", "p99_ms", "ms")
    row("SCAN-1k prefix scans of 1,000 keys", "SCAN-1k", "ops_per_s", "scans/s", "≥ 1.0×",
        lambda r: r >= 1.0)
    row("SCAN-1k p50", "SCAN-1k", "p50_ms", "ms")
    row("LEASE-KA lease renewals", "LEASE-KA", "items_per_s", "renewals/s", "≥ 1.0×",
        lambda r: r >= 1.0)
    row("LEASE-KA server CPU per renewal", "LEASE-KA", "server_cpu_us_per_item", "µs")
    row("W64-watch puts with 100 watchers", "W64-watch", "ops_per_s", "ops/s")
    row("W64-watch events delivered", "W64-watch", "events_per_s", "events/s")
    row("W64-watch watcher process CPU per event", "W64-watch", "watcher_cpu_us_per_event",
        "µs")
    for label, what in (("W64-watch", "100 watchers"), ("W64-stalled", "stalled watchers")):
        for system in systems:  # the watchers' cost: against W64 of the same rep
            mine = runs.get(system, {})
            pairs = [(a["ops_per_s"], b["ops_per_s"])
                     for a, b in zip(mine.get(label, []), mine.get("W64", []))]
            cost = med([1 - a / b for a, b in pairs if b])
            if cost:
                rows.append((f"{system}: W64 throughput lost to {what}", f"{cost[0]:.1%}",
                             "", "", "≤ 10%" if system == "prkdb" else "",
                             ("yes" if cost[0] <= 0.10 else "**no**") if system == "prkdb"
                             else ""))
    row("W64 servers' RSS growth (3 nodes)", "W64", "rss_growth_mb", "MB")
    row("W64-stalled servers' RSS growth (3 nodes)", "W64-stalled", "rss_growth_mb", "MB")
    for label, _, _ in WORKLOADS:
        row(f"server CPU {label}", label, "server_cpu_us_per_op", "µs/op")
    # failover: absolute target for PrkDB, etcd for reference
    fo = {s: med([r["failover_s"] for r in data["failover"].get(s, [])]) for s in systems}
    p, e = fo.get("prkdb"), fo.get("etcd")
    if p or e:
        rows.append(("FAILOVER after kill -9 (s)", cell(p, "s"), cell(e, "s"),
                     f"{p[0] / e[0]:.2f}×" if p and e and e[0] else "n/a", "≤ 0.3 s",
                     ("yes" if p[0] <= 0.3 else "**no**") if p else ""))
    rss_keys = None
    for s in ("prkdb", "etcd"):
        if s not in data["rss"]:
            continue
        rss_keys = data["rss"][s]["keys"]
    if rss_keys is not None:
        vals = {s: data["rss"][s]["rss_mb_after"] for s in systems if s in data["rss"]}
        p = med(vals.get("prkdb", []))
        e = med(vals.get("etcd", [])) if "etcd" in vals else None
        rows.append((f"RSS per node after {rss_keys:,} keys (MB)³", cell(p, "MB"), cell(e, "MB"),
                     f"{p[0] / e[0]:.2f}×" if p and e else "n/a", "", ""))
    for label in TLS_WORKLOADS:  # TLS against plain, same reps (alternated)
        for name, field, unit in (("", "ops_per_s", "ops/s"), (" p50", "p50_ms", "ms"),
                                  (" p99", "p99_ms", "ms"),
                                  (" server CPU", "server_cpu_us_per_op", "µs/op")):
            t, p = stat("prkdb-tls", label, field), stat("prkdb", label, field)
            if t is None or p is None:
                continue
            ratio = t[0] / p[0] if p[0] else None
            et, ep = stat("etcd-tls", label, field), stat("etcd", label, field)
            eratio = et[0] / ep[0] if et and ep and ep[0] else None
            etcd_cell = (f"{cell(et, unit)} [{cell(ep, unit)}] = {eratio:.2f}×"
                         if et and ep and eratio is not None else "")
            if ratio is not None and eratio:
                # The issue's goal: PrkDB's cost of TLS no worse than etcd's.
                rel = ratio / eratio
                better = rel >= 1.0 if field == "ops_per_s" else rel <= 1.0
                target = ("≥ 1.0×" if field == "ops_per_s" else "≤ 1.0×") \
                    if field in ("ops_per_s", "server_cpu_us_per_op") else ""
                rows.append((f"TLS: {label}{name} ({unit}), TLS [plain] = ratio; PrkDB with "
                             "auth", f"{cell(t, unit)} [{cell(p, unit)}] = {ratio:.2f}×",
                             etcd_cell, f"{rel:.2f}×", target,
                             ("yes" if better else "**no**") if target else ""))
            else:
                rows.append((f"TLS+auth: {label}{name} ({unit}), TLS+auth [plain]",
                             f"{cell(t, unit)} [{cell(p, unit)}]", "",
                             f"{ratio:.2f}× of plain" if ratio is not None else "n/a", "", ""))
    idle = data.get("idle_cpu_cores", {})
    rows.append(("idle server CPU, 3 nodes, no load (% of a core)",
                 f"{100 * idle['prkdb']:.0f}" if "prkdb" in idle else "n/a",
                 f"{100 * idle['etcd']:.0f}" if "etcd" in idle else "n/a", "", "", ""))
    fl = data["floor"]
    w1 = stat("prkdb", "W1", "p50_ms")
    floor_ratio = w1[0] / fl["floor_ms"] if w1 else None
    if floor_ratio:
        rows.append(("W1 p50 / physical floor⁴", f"{floor_ratio:.2f}×", "", "", "≤ 3.0×",
                     "yes" if floor_ratio <= 3.0 else "**no**"))
    head = ("metric", "PrkDB", f"etcd {data.get('etcd_version', '')}".strip(), "PrkDB/etcd",
            "target", "met")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines.append(f"Medians over {data['reps']} reps [min–max]; each rep {data['warmup']:g} s "
                 f"warm-up + {data['duration']:g} s measured; FAILOVER over "
                 f"{data['failover_reps']} kills per system.")
    lines.append(f"⁴ physical floor: fdatasync {fl['fsync_ms']:.3f} ms + 2 × loopback RTT "
                 f"{fl['rtt_ms']:.3f} ms = {fl['floor_ms']:.3f} ms (measured in this run).")
    lines.append("¹ etcd has no follower read: its row is linearizable gets sent to the two "
                 "follower endpoints. ² etcd: serializable range, spread over all 3 nodes. "
                 "³ loaded in batches of 100 (PrkDB batch / etcd txn), 16 clients.")
    gen = []
    for s in systems:
        for label, _, _ in WORKLOADS:
            rs = runs.get(s, {}).get(label, [])
            if rs:
                gen.append(f"{s} {label} {max(r['loadgen_busiest_proc_pct'] for r in rs):.0f}%"
                           f"/{rs[0]['loadgen_procs']}p")
    lines.append("Load generator, busiest process (% of one core) / processes: " + ", ".join(gen))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, help="measured seconds per run (default 10)")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run")
    ap.add_argument("--reps", type=int, help="repetitions of every workload (default 3)")
    ap.add_argument("--failover-reps", type=int, help="kills per system (default 5)")
    ap.add_argument("--rss-keys", type=int, help="keys loaded before RSS (default 1,000,000)")
    ap.add_argument("--procs", type=int, default=2,
                    help="load-generator processes for the 64-client workloads")
    ap.add_argument("--port", type=int, default=18600,
                    help="PrkDB client port of node 1 (peers on PORT+100..)")
    ap.add_argument("--etcd-port", type=int, default=22379,
                    help="etcd client port of node 1 (peers on PORT+100..)")
    ap.add_argument("--prkdb-only", action="store_true", help="do not run etcd")
    ap.add_argument("--no-tls", action="store_true",
                    help="do not run the PrkDB-with-TLS cluster (the TLS rows)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 rep x 2 s, 2 kills, 20,000 keys for RSS")
    ap.add_argument("--workloads", help="comma-separated labels to run (default: all), e.g. "
                                        "SCAN-1k,LEASE-KA")
    ap.add_argument("--json", action="store_true", help="also print the raw numbers as JSON")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--watcher", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.watcher:
        trio.run(watcher_main, json.loads(args.watcher))
        return
    if args.worker:
        spec = json.loads(args.worker)
        if "lease_file" in spec:
            spec["lease_ids"] = json.loads(Path(spec["lease_file"]).read_text())
        trio.run(worker_main, spec)
        return
    q = args.quick
    args.duration = args.duration or (2.0 if q else 10.0)
    args.reps = args.reps or (1 if q else 3)
    if args.failover_reps is None:
        args.failover_reps = 2 if q else 5
    args.workloads = {w for w in (args.workloads or "").split(",") if w}
    unknown = args.workloads - {w[0] for w in WORKLOADS}
    if unknown:
        ap.error(f"unknown workload(s) {sorted(unknown)}; known: {[w[0] for w in WORKLOADS]}")
    args.rss_keys = args.rss_keys if args.rss_keys is not None else (20_000 if q else 1_000_000)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    try:
        run(args, root)
    finally:
        cleanup()
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: Path) -> None:
    systems = ["prkdb"]
    note = ""
    etcd_bin = None
    if not args.prkdb_only:
        etcd_bin, why = ensure_etcd()
        if etcd_bin:
            systems.append("etcd")
        else:
            note = f"etcd unavailable, running PrkDB alone: {why}"
            log(note)
    data: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                    "python": sys.version.split()[0]},
        "duration": args.duration, "warmup": args.warmup, "reps": args.reps,
        "failover_reps": args.failover_reps, "procs": args.procs, "systems": systems,
        "note": note, "runs": {}, "failover": {}, "rss": {},
    }
    if etcd_bin:
        data["etcd_version"] = etcd_version(etcd_bin)

    fs, rtt = fsync_floor(root), loopback_rtt()
    data["floor"] = {"fsync_ms": fs * 1e3, "rtt_ms": rtt * 1e3, "floor_ms": (fs + 2 * rtt) * 1e3}
    log(f"physical floor: fdatasync {fs * 1e3:.3f} ms + 2 x loopback RTT {rtt * 1e3:.3f} ms")

    ports = [args.port + i for i in (0, 1, 2, 100, 101, 102)]
    clusters: dict[str, Cluster] = {"prkdb": PrkCluster(root, args.port)}
    tls = not args.no_tls and (not args.workloads or bool(args.workloads & set(TLS_WORKLOADS)))
    if tls:
        tls_port = args.port + TLS_PORT_OFFSET
        ports += [tls_port + i for i in (0, 1, 2, 100, 101, 102)]
        clusters["prkdb-tls"] = PrkCluster(root, tls_port, tls=True)
        systems.insert(1, "prkdb-tls")
    if etcd_bin:
        ports += [args.etcd_port + i for i in (0, 1, 2, 100, 101, 102)]
        clusters["etcd"] = EtcdCluster(root, args.etcd_port, etcd_bin)
        if tls:  # etcd with TLS on both listeners, for the TLS cost of each system
            tls_port = args.etcd_port + TLS_PORT_OFFSET
            ports += [tls_port + i for i in (0, 1, 2, 100, 101, 102)]
            clusters["etcd-tls"] = EtcdCluster(root, tls_port, etcd_bin, tls=True)
            systems.append("etcd-tls")
    check_ports_free(ports)
    for s in systems:
        clusters[s].start()
    workloads = [w for w in WORKLOADS if not args.workloads or w[0] in args.workloads]
    wanted = {w[1] for w in workloads}
    lease_ids: dict[str, list[int]] = {}
    for s in systems:
        trio.run(clusters[s].ready)
        trio.run(preload_all, s, clusters[s], READ_KEYS)
        log(f"{s}: 3 nodes up, {READ_KEYS} keys preloaded")
        if s in TLS_SYSTEMS:
            continue  # runs TLS_WORKLOADS only
        if "scan" in wanted:
            trio.run(preload_scan, s, clusters[s])
            log(f"{s}: {SCAN_KEYS} keys under {SCAN_PREFIX!r} for SCAN-1k")
        if "keepalive" in wanted:
            t = time.monotonic()
            lease_ids[s] = trio.run(grant_leases, s, clusters[s], LEASES)
            log(f"{s}: {LEASES:,} leases granted in {time.monotonic() - t:.1f} s")
    for s in systems:  # background cost (heartbeats, timers) with no client load
        pids = clusters[s].pids()
        c0 = sum(proc_cpu_s(p) for p in pids)
        time.sleep(2.0)
        data.setdefault("idle_cpu_cores", {})[s] = (sum(proc_cpu_s(p) for p in pids) - c0) / 2

    def target(system: str, workload: str) -> dict:
        c = clusters[system]
        extra = {}
        if workload == "keepalive":  # too many for a command line: a file
            path = root / f"leases-{system}.json"
            path.write_text(json.dumps(lease_ids[system]))
            extra = {"lease_file": str(path)}
        if system.startswith("prkdb"):
            assert isinstance(c, PrkCluster)
            return {"seeds": c.seeds, **extra,
                    **({"ca_file": c.tls.ca_file} if c.tls is not None else {}),
                    **({"password_file": c.password_file} if c.password_file else {})}
        assert isinstance(c, EtcdCluster)
        leader = trio.run(c.leader)
        eps = c.endpoints
        if workload == "keepalive":
            return {"endpoints": [eps[leader - 1]], **extra}
        if workload in ("put", "put-watched", "get-linearizable", "scan"):
            return {"endpoints": [eps[leader - 1]],
                    **({"ca_file": c.ca_file} if c.ca_file else {})}
        if workload == "get-follower":
            return {"endpoints": [ep for i, ep in enumerate(eps, 1) if i != leader]}
        return {"endpoints": eps}

    for rep in range(args.reps):
        for wi, (label, workload, clients) in enumerate(workloads):
            order = systems if (rep + wi) % 2 == 0 else systems[::-1]
            for s in order:
                if workload == "put-stalled" and s != "prkdb":
                    continue  # raw PrkDB sockets
                if s in TLS_SYSTEMS and label not in TLS_WORKLOADS:
                    continue
                r = run_load(s, clusters[s], workload, clients, target(s, workload), args, root)
                data["runs"].setdefault(s, {}).setdefault(label, []).append(r)
                log(f"rep {rep + 1} {label:<13} {s:<6} {r['ops_per_s']:>9,.0f} ops/s  "
                    f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                    f"server {r['server_cpu_us_per_op'] or 0:,.0f} µs/op  "
                    f"loadgen {r['loadgen_busiest_proc_pct']:.0f}% x{r['loadgen_procs']}  "
                    f"errors {r['errors']}")
    untimed = [s for s in systems if s not in TLS_SYSTEMS]  # failover and RSS: no TLS rows
    for rep in range(args.failover_reps):
        for s in (untimed if rep % 2 == 0 else untimed[::-1]):
            r = trio.run(failover_once, s, clusters[s], rep)
            data["failover"].setdefault(s, []).append(r)
            fo = r["failover_s"]
            log(f"failover {rep + 1} {s:<6} killed node {r['victim']}: "
                f"{'TIMEOUT' if fo is None else f'{fo:.3f} s'}")
    if args.rss_keys > 0:
        for s in untimed:
            r = trio.run(rss, s, clusters[s], args.rss_keys)
            data["rss"][s] = r
            log(f"{s}: {r['keys']:,} keys in {r['load_s']:.1f} s; RSS MB per node "
                f"{', '.join(f'{x:.0f}' for x in r['rss_mb_after'])}")
    print(build_table(data, systems))
    if note:
        print(f"\nNOTE: {note}")
    if args.json:
        print(json.dumps(data, indent=2, default=str))


if __name__ == "__main__":
    main()
