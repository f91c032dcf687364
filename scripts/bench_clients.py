#!/usr/bin/env python3
"""Client CPU per operation of the three PrkDB clients, against etcd's JSON gateway (issue 14).

What it measures
----------------
How much CPU the *client side* spends per request: the user + system time
(getrusage, all threads) of the load-generator processes over a measured
window, divided by the requests they completed in it. On a small machine the
client shares the cores with the servers, so this cost, not the cluster,
often sets the throughput.

Clients (each a "cell" with each workload; --clients picks them):

  SyncClient       64 threads in --procs (4) processes, one SyncClient per
                   thread (blocking sockets on the calling thread)
  AsyncClient      64 asyncio tasks in --procs processes, the tasks of a
                   process sharing one AsyncClient
  PrkDbClient      the same with trio tasks and one PrkDbClient per process
  etcd http.client the baseline: 64 threads in --procs processes, one plain
                   Python keep-alive HTTP/1.1 JSON client per thread (the
                   standard library's http.client + json + base64) doing
                   serializable (etcd's stale) range reads over etcd's v3 JSON
                   gateway, spread over the 3 nodes
  etcd raw HTTP    the same, with HTTP/1.1 written and parsed by hand on a
                   blocking socket (the blocking twin of etcd_load.EtcdHttp):
                   a leaner baseline, so the goal is read against both

Workloads: `put` (16-byte keys, 100-byte values) and `get-stale`
(ReadConsistency.STALE; etcd: serializable range) over 1,000 preloaded keys.
The baselines run stale reads only, the goal's subject.

The script starts a 3-node PrkDB (fsync on, default config) and a 3-node
etcd (Debian's etcd-server, installed with apt-get if absent; see
scripts/bench_compare.py, whose cluster helpers it reuses), both on
127.0.0.1. Each cell: fresh load processes connect, then --warmup seconds
unmeasured, then --seconds measured. Every load process snapshots its op
count and its own CPU at both ends of the window; the driver reads the
servers' CPU (/proc/PID/stat) at the same instants. Cells run in --rounds
rounds, each round in a rotated order, so that machine noise falls on all
clients alike; the table shows medians [min–max] over rounds, and each ratio
is taken within a round (cells minutes apart never meet in one ratio).

Goals (issue 14, "Proof"):
  SyncClient client CPU per stale read  <= 0.5 x an etcd HTTP/JSON client's
  AsyncClient client CPU per op         <= 1.2 x PrkDbClient's (reads and puts)

Timings are for reading, never pass/fail: the exit status is 0 whether or
not a goal is met. With --no-etcd (or when etcd cannot be installed) there
is no baseline and its ratio reads n/a.

    python scripts/bench_clients.py                        # 3 rounds x 5 s per cell
    python scripts/bench_clients.py --rounds 5 --json
    python scripts/bench_clients.py --no-etcd --seconds 0.3 --rounds 1 --warmup 0.2

Servers and load processes run the code of the checkout the script is in. To
keep others' uncommitted edits out of a run, run it from an exported commit:
    git archive HEAD | tar -x -C /tmp/pinned && python /tmp/pinned/scripts/bench_clients.py
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import resource
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Everything below runs in the load processes too, so it imports no front end
# at module level: a SyncClient process never loads trio or asyncio's client.

KEY = b"bench-%010d"  # = prkdb.bench.key_of (not imported: prkdb.bench imports trio)
VALUE = b"x" * 100  # = bench_compare.VALUE, what the preload writes
READ_KEYS = 1000  # = bench_compare.READ_KEYS, the keys preloaded and read

# kind -> (label in the table, blocking?)
CLIENTS: dict[str, tuple[str, bool]] = {
    "sync": ("SyncClient", True),
    "aio": ("AsyncClient", False),
    "trio": ("PrkDbClient", False),
    "etcd": ("etcd http.client", True),
    "etcd-raw": ("etcd raw HTTP", True),
}
ETCD_KINDS = ("etcd", "etcd-raw")
WORKLOADS = ("put", "get-stale")


class EtcdJsonError(Exception):
    """A non-200 answer or an error body from etcd's gateway."""


class EtcdJson:
    """The baseline: a plain Python etcd v3 JSON client on one keep-alive HTTP/1.1 connection.

    What a Python programmer writes without dependencies: http.client (which
    reconnects by itself after `close`, and sets TCP_NODELAY), json, base64.
    One request at a time, so one per thread.
    """

    def __init__(self, endpoint: str) -> None:
        host, _, port = endpoint.rpartition(":")
        self.endpoint = endpoint
        self.address = (host, int(port))
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)

    def exchange(self, path: str, payload: bytes) -> tuple[int, bytes]:
        """POST `payload` (JSON), return (HTTP status, body)."""
        self.conn.request("POST", path, payload, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def post(self, path: str, body: dict) -> dict:
        status, data = self.exchange(path, json.dumps(body).encode())
        if status != 200:
            raise EtcdJsonError(f"{path}: HTTP {status}: {data[:200]!r}")
        answer = json.loads(data)
        if "error" in answer:
            raise EtcdJsonError(f"{path}: {answer['error']}")
        return answer

    def get_serializable(self, key: bytes) -> bytes | None:
        answer = self.post("/v3/kv/range",
                           {"key": base64.b64encode(key).decode(), "serializable": True})
        kvs = answer.get("kvs")
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def close(self) -> None:
        self.conn.close()


class EtcdRaw(EtcdJson):
    """The lean baseline: the same JSON calls with HTTP/1.1 written and parsed by hand.

    The blocking twin of scripts/etcd_load.py's `EtcdHttp` (which runs on
    trio): one `sendall` per request, the answer's head split with bytes
    methods, Content-Length or chunked bodies. About the least a Python
    HTTP/JSON client can spend per call without C extensions.
    """

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self.sock: socket.socket | None = None
        self.buf = bytearray()

    def exchange(self, path: str, payload: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=10)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf.clear()
        self.sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (path.encode(), self.endpoint.encode(), len(payload), payload))
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = bytes(self.buf[:end]).split(b"\r\n")
        del self.buf[: end + 4]
        status = int(head[0].split(b" ", 2)[1])
        length, chunked = 0, False
        for line in head[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if not chunked:
            while len(self.buf) < length:
                self._fill()
            body = bytes(self.buf[:length])
            del self.buf[:length]
            return status, body
        chunks = bytearray()
        while True:
            while (eol := self.buf.find(b"\r\n")) < 0:
                self._fill()
            size = int(bytes(self.buf[:eol]).split(b";")[0], 16)
            del self.buf[: eol + 2]
            while len(self.buf) < size + 2:
                self._fill()
            chunks += self.buf[:size]
            del self.buf[: size + 2]
            if size == 0:
                return status, bytes(chunks)

    def _fill(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError(f"{self.endpoint} closed the connection")
        self.buf += data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# --- the load processes ------------------------------------------------------------------
#
# Protocol with the driver (stdin/stdout): print "@@ready" once every client is
# connected; read the start time t0 (time.monotonic(), one clock for all
# processes on Linux); run from t0; snapshot at t0 + warmup and at
# t0 + warmup + seconds; print "@@result {json}".


def snapshot(counts: list[int]) -> tuple[float, int, float, float]:
    """(monotonic s, ops completed, user CPU s, system CPU s) of this process, now."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.monotonic(), sum(counts), ru.ru_utime, ru.ru_stime


def report(a: tuple, b: tuple, errors: int, first_error: str | None) -> None:
    print("@@result " + json.dumps({
        "seconds": b[0] - a[0], "ops": b[1] - a[1], "user_s": b[2] - a[2],
        "sys_s": b[3] - a[3], "errors": errors, "first_error": first_error,
    }), flush=True)


def wait_start() -> float:
    print("@@ready", flush=True)
    return float(sys.stdin.readline())


def thread_worker(spec: dict) -> None:
    """SyncClient or the etcd baseline: one client per thread, `clients` threads."""
    kind, workload = spec["kind"], spec["workload"]
    n, offset, total = spec["clients"], spec["offset"], spec["total"]
    ops: list[Callable[[bytes], Any]] = []
    closers: list[Callable[[], None]] = []
    if kind == "sync":
        from prkdb.client.sync import SyncClient
        from prkdb.errors import PrkdbError
        from prkdb.wire.messages import ReadConsistency

        errors_caught: tuple[type[BaseException], ...] = (PrkdbError,)
        for _ in range(n):
            c = SyncClient(spec["seeds"], timeout=10)
            closers.append(c.close)
            if workload == "put":
                ops.append(lambda k, c=c: c.put(k, VALUE))
            else:
                ops.append(lambda k, c=c: c.get_with_consistency(k, ReadConsistency.STALE))
        # one request each, so every thread's connection exists before the window
        for op in ops:
            op(KEY % 0)
    else:
        errors_caught = (OSError, http.client.HTTPException, ValueError, EtcdJsonError)
        endpoints = spec["endpoints"]
        cls = EtcdJson if kind == "etcd" else EtcdRaw
        for g in range(offset, offset + n):
            e = cls(endpoints[g % len(endpoints)])
            e.get_serializable(KEY % 0)  # connect now
            closers.append(e.close)

            def get(k: bytes, e: EtcdJson = e) -> bytes | None:
                try:
                    return e.get_serializable(k)
                except BaseException:
                    e.close()  # never reuse a connection in an unknown state
                    raise

            ops.append(get)
    counts = [0] * n
    errors = [0] * n
    first: list[str] = []
    running = [True]

    def loop(j: int) -> None:
        op, i, keys = ops[j], offset + j, spec["keys"]
        while running[0]:
            key = KEY % (i % keys)
            i += total
            try:
                op(key)
            except errors_caught as e:
                errors[j] += 1
                if not first:
                    first.append(repr(e)[:300])
                time.sleep(0.001)
                continue
            counts[j] += 1

    t0 = wait_start()
    ws = t0 + spec["warmup"]
    we = ws + spec["seconds"]
    time.sleep(max(0.0, t0 - time.monotonic()))
    threads = [threading.Thread(target=loop, args=(j,), daemon=True) for j in range(n)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, ws - time.monotonic()))
    a = snapshot(counts)
    time.sleep(max(0.0, we - time.monotonic()))
    b = snapshot(counts)
    running[0] = False
    for t in threads:
        t.join(15)
    for close in closers:
        close()
    report(a, b, sum(errors), first[0] if first else None)


def aio_worker(spec: dict) -> None:
    """AsyncClient: `clients` asyncio tasks sharing one client."""
    import asyncio

    from prkdb.client.aio import AsyncClient
    from prkdb.errors import PrkdbError
    from prkdb.wire.messages import ReadConsistency

    async def main() -> None:
        client = await AsyncClient.connect(spec["seeds"], timeout=10)
        op = (lambda k: client.put(k, VALUE)) if spec["workload"] == "put" else (
            lambda k: client.get_with_consistency(k, ReadConsistency.STALE))
        n, offset, total, keys = spec["clients"], spec["offset"], spec["total"], spec["keys"]
        await asyncio.gather(*(op(KEY % 0) for _ in range(n)))  # connections up
        counts, errors, first = [0] * n, [0] * n, []

        async def loop(j: int) -> None:
            i = offset + j
            while True:
                key = KEY % (i % keys)
                i += total
                try:
                    await op(key)
                except PrkdbError as e:
                    errors[j] += 1
                    if not first:
                        first.append(repr(e)[:300])
                    await asyncio.sleep(0.001)
                    continue
                counts[j] += 1

        t0 = wait_start()  # blocks the loop, but nothing is in flight yet
        ws = t0 + spec["warmup"]
        we = ws + spec["seconds"]
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        tasks = [asyncio.create_task(loop(j)) for j in range(n)]
        await asyncio.sleep(max(0.0, ws - time.monotonic()))
        a = snapshot(counts)
        await asyncio.sleep(max(0.0, we - time.monotonic()))
        b = snapshot(counts)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()
        report(a, b, sum(errors), first[0] if first else None)

    asyncio.run(main())


def trio_worker(spec: dict) -> None:
    """PrkDbClient: `clients` trio tasks sharing one client."""
    import trio

    from prkdb.client.client import PrkDbClient
    from prkdb.errors import PrkdbError
    from prkdb.wire.messages import ReadConsistency

    async def main() -> None:
        client = await PrkDbClient.connect(spec["seeds"], timeout=10)
        op = (lambda k: client.put(k, VALUE)) if spec["workload"] == "put" else (
            lambda k: client.get_with_consistency(k, ReadConsistency.STALE))
        n, offset, total, keys = spec["clients"], spec["offset"], spec["total"], spec["keys"]
        async with trio.open_nursery() as nursery:  # connections up
            for _ in range(n):
                nursery.start_soon(op, KEY % 0)
        counts, errors, first = [0] * n, [0] * n, []

        async def loop(j: int) -> None:
            i = offset + j
            while True:
                key = KEY % (i % keys)
                i += total
                try:
                    await op(key)
                except PrkdbError as e:
                    errors[j] += 1
                    if not first:
                        first.append(repr(e)[:300])
                    await trio.sleep(0.001)
                    continue
                counts[j] += 1

        t0 = wait_start()  # blocks the loop, but nothing is in flight yet
        ws = t0 + spec["warmup"]
        we = ws + spec["seconds"]
        await trio.sleep(max(0.0, t0 - time.monotonic()))
        async with trio.open_nursery() as nursery:
            for j in range(n):
                nursery.start_soon(loop, j)
            await trio.sleep(max(0.0, ws - time.monotonic()))
            a = snapshot(counts)
            await trio.sleep(max(0.0, we - time.monotonic()))
            b = snapshot(counts)
            nursery.cancel_scope.cancel()
        await client.aclose()
        report(a, b, sum(errors), first[0] if first else None)

    trio.run(main)


def worker_main(spec: dict) -> None:
    if CLIENTS[spec["kind"]][1]:
        thread_worker(spec)
    elif spec["kind"] == "aio":
        aio_worker(spec)
    else:
        trio_worker(spec)


# --- the driver -----------------------------------------------------------------------------


def run_cell(kind: str, workload: str, target: dict, server_pids: list[int],
             args: argparse.Namespace, root: Path) -> dict:
    """One measured window of one client kind on one workload; sums over the load processes."""
    import subprocess

    from bench_compare import kill_group, proc_cpu_s, spawn

    nprocs = max(1, min(args.procs, args.concurrency))
    per = [args.concurrency // nprocs + (i < args.concurrency % nprocs) for i in range(nprocs)]
    workers, logs, offset = [], [], 0
    for i, n in enumerate(per):
        spec = {"kind": kind, "workload": workload, "clients": n, "offset": offset,
                "total": args.concurrency, "keys": READ_KEYS, "warmup": args.warmup,
                "seconds": args.seconds, **target}
        offset += n
        logs.append(root / f"load-{kind}-{workload}-{i}.log")
        workers.append(spawn([sys.executable, __file__, "--worker", json.dumps(spec)], logs[-1],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))

    def fail(what: str) -> RuntimeError:
        for w in workers:
            kill_group(w)
            w.wait()
        tails = "".join(p.read_text(errors="replace")[-1500:] for p in logs if p.exists())
        return RuntimeError(f"{CLIENTS[kind][0]} {workload}: a load process {what}:\n{tails}")

    for w in workers:
        while not (line := w.stdout.readline()).startswith("@@ready"):
            if not line:
                raise fail("died before it was ready")
    t0 = time.monotonic() + 0.05
    for w in workers:
        w.stdin.write(f"{t0!r}\n")
        w.stdin.flush()
    ws = t0 + args.warmup
    time.sleep(max(0.0, ws - time.monotonic()))
    srv0 = sum(proc_cpu_s(p) for p in server_pids)
    time.sleep(max(0.0, ws + args.seconds - time.monotonic()))
    srv1 = sum(proc_cpu_s(p) for p in server_pids)
    results = []
    for w in workers:
        try:
            out, _ = w.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise fail("hung") from None
        line = next((ln for ln in out.splitlines() if ln.startswith("@@result ")), None)
        if line is None:
            raise fail(f"exited {w.returncode} without a result")
        results.append(json.loads(line.removeprefix("@@result ")))
    ops = sum(r["ops"] for r in results)
    cpu = sum(r["user_s"] + r["sys_s"] for r in results)
    sys_s = sum(r["sys_s"] for r in results)
    per_op = (lambda s: s * 1e6 / ops) if ops else (lambda s: float("nan"))
    return {
        "client": CLIENTS[kind][0], "kind": kind, "workload": workload,
        "ops": ops, "ops_per_s": sum(r["ops"] / r["seconds"] for r in results),
        "client_us": per_op(cpu), "client_sys_us": per_op(sys_s),
        "server_us": per_op(srv1 - srv0),
        "client_cores": cpu / args.seconds, "busiest_proc_pct": max(
            100 * (r["user_s"] + r["sys_s"]) / r["seconds"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
    }


def cells_of(args: argparse.Namespace, with_etcd: bool) -> list[tuple[str, str]]:
    cells = [(k, w) for k in args.clients if k not in ETCD_KINDS for w in WORKLOADS]
    if with_etcd:  # the baselines: stale reads only
        cells += [(k, "get-stale") for k in args.clients if k in ETCD_KINDS]
    return cells


# Ratios of client CPU per op, each taken within one round: (name, numerator, denominator,
# goal, check)
RATIOS = (
    ("SyncClient / etcd http.client, stale reads", ("sync", "get-stale"),
     ("etcd", "get-stale"), "≤ 0.5×", lambda r: r <= 0.5),
    ("SyncClient / etcd raw HTTP, stale reads", ("sync", "get-stale"),
     ("etcd-raw", "get-stale"), "≤ 0.5×", lambda r: r <= 0.5),
    ("AsyncClient / PrkDbClient, stale reads", ("aio", "get-stale"), ("trio", "get-stale"),
     "≤ 1.2×", lambda r: r <= 1.2),
    ("AsyncClient / PrkDbClient, puts", ("aio", "put"), ("trio", "put"),
     "≤ 1.2×", lambda r: r <= 1.2),
    ("SyncClient / PrkDbClient, stale reads", ("sync", "get-stale"), ("trio", "get-stale"),
     "", None),
    ("SyncClient / PrkDbClient, puts", ("sync", "put"), ("trio", "put"), "", None),
)


def spread(values: list[float]) -> tuple[float, float, float] | None:
    v = [x for x in values if x == x]  # drop nan
    return (statistics.median(v), min(v), max(v)) if v else None


def fmt(stat: tuple[float, float, float] | None, digits: int = 0, suffix: str = "") -> str:
    if stat is None:
        return "n/a"
    m, lo, hi = stat
    f = f"{{:,.{digits}f}}{suffix}"
    return f.format(m) if lo == hi else f"{f.format(m)} [{f.format(lo)}–{f.format(hi)}]"


def summarize(data: dict) -> dict:
    """Medians per cell and per-round ratios with their goals."""
    by_cell: dict[tuple[str, str], list[dict]] = {}
    for r in data["runs"]:
        by_cell.setdefault((r["kind"], r["workload"]), []).append(r)
    cells = []
    for (kind, workload), rs in by_cell.items():
        cells.append({"client": CLIENTS[kind][0], "kind": kind, "workload": workload,
                      **{f: spread([r[f] for r in rs]) for f in (
                          "ops_per_s", "client_us", "client_sys_us", "server_us",
                          "client_cores")},
                      "errors": sum(r["errors"] for r in rs),
                      "first_error": next((r["first_error"] for r in rs if r["first_error"]),
                                          None)})
    ratios = []
    for name, num, den, goal, check in RATIOS:
        per_round = []
        for rnd in range(data["rounds"]):
            a = next((r for r in by_cell.get(num, []) if r["round"] == rnd), None)
            b = next((r for r in by_cell.get(den, []) if r["round"] == rnd), None)
            if a and b and b["client_us"] > 0:
                per_round.append(a["client_us"] / b["client_us"])
        stat = spread(per_round)
        why = ""
        if stat is None:
            why = ("no baseline, etcd not run" if den[0] in ETCD_KINDS
                   and not data["etcd_version"] else "not measured")
        ratios.append({"ratio": name, "per_round": per_round, "median": stat and stat[0],
                       "goal": goal, "met": (check(stat[0]) if stat and check else None),
                       "why_none": why, "stat": stat})
    return {"cells": cells, "ratios": ratios}


def build_table(data: dict, summary: dict) -> str:
    lines = [
        f"client CPU per op: {data['concurrency']} threads/tasks in {data['procs']} processes, "
        f"{data['rounds']} round(s) x {data['seconds']:g} s per cell (+{data['warmup']:g} s "
        f"warm-up); medians [min–max] over rounds",
        "",
        "| client | workload | ops/s | client µs/op | of which sys | server µs/op "
        "| client cores | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["cells"]:
        lines.append(
            f"| {c['client']} | {c['workload']} | {fmt(c['ops_per_s'])} | "
            f"{fmt(c['client_us'])} | {fmt(c['client_sys_us'])} | {fmt(c['server_us'])} | "
            f"{fmt(c['client_cores'], 2)} | {c['errors']} |")
    lines += ["", "| ratio of client CPU per op (within a round) | value | goal | met |",
              "|---|---|---|---|"]
    for r in summary["ratios"]:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        value = fmt(r["stat"], 2, "×") if r["stat"] else f"n/a: {r['why_none']}"
        lines.append(f"| {r['ratio']} | {value} | {r['goal']} | {met} |")
    srv = "PrkDB 3 nodes" + (f", etcd {data['etcd_version']} 3 nodes" if data["etcd_version"]
                             else "")
    lines += ["", f"servers: {srv}; client cores = load processes' CPU / window; "
              "server µs/op = CPU of that system's 3 nodes / ops."]
    for c in summary["cells"]:
        if c["first_error"]:
            lines.append(f"first error, {c['client']} {c['workload']}: {c['first_error']}")
    if data["note"]:
        lines.append(f"NOTE: {data['note']}")
    return "\n".join(lines)


def run(args: argparse.Namespace, root: Path) -> None:
    import os

    import trio
    from bench_compare import (
        EtcdCluster,
        PrkCluster,
        check_ports_free,
        ensure_etcd,
        etcd_version,
        log,
        preload_all,
    )

    note = ""
    etcd_bin = None
    if not set(ETCD_KINDS) & set(args.clients):
        note = "no baseline: the etcd client was not selected (--clients)"
    elif args.no_etcd:
        note = "no baseline: --no-etcd, so the SyncClient / etcd ratio is not measured"
    else:
        etcd_bin, why = ensure_etcd()
        if not etcd_bin:
            note = f"no baseline: etcd unavailable ({why})"
            log(note)
    data: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                    "python": sys.version.split()[0]},
        "seconds": args.seconds, "warmup": args.warmup, "rounds": args.rounds,
        "procs": args.procs, "concurrency": args.concurrency, "note": note,
        "etcd_version": etcd_version(etcd_bin) if etcd_bin else None, "runs": [],
    }
    ports = [args.port + i for i in (0, 1, 2, 100, 101, 102)]
    if etcd_bin:
        ports += [args.etcd_port + i for i in (0, 1, 2, 100, 101, 102)]
    check_ports_free(ports)
    prk = PrkCluster(root, args.port)
    clusters: dict[str, Any] = {"prkdb": prk}
    if etcd_bin:
        clusters["etcd"] = EtcdCluster(root, args.etcd_port, etcd_bin)
    for c in clusters.values():
        c.start()
    for name, c in clusters.items():
        trio.run(c.ready)
        trio.run(preload_all, name, c, READ_KEYS)
        log(f"{name}: 3 nodes up, {READ_KEYS} keys preloaded")

    cells = cells_of(args, etcd_bin is not None)
    for rnd in range(args.rounds):
        k = rnd % len(cells)
        for kind, workload in cells[k:] + cells[:k]:
            system = "etcd" if kind in ETCD_KINDS else "prkdb"
            cluster = clusters[system]
            target = ({"endpoints": cluster.endpoints} if system == "etcd"
                      else {"seeds": cluster.seeds})
            r = run_cell(kind, workload, target, cluster.pids(), args, root)
            cluster.check_alive()
            r["round"] = rnd
            data["runs"].append(r)
            log(f"round {rnd + 1} {r['client']:<15} {workload:<9} {r['ops_per_s']:>8,.0f} ops/s"
                f"  client {r['client_us']:6.1f} µs/op (sys {r['client_sys_us']:5.1f})"
                f"  server {r['server_us']:6.1f} µs/op  busiest load proc "
                f"{r['busiest_proc_pct']:3.0f}%  errors {r['errors']}")
    summary = summarize(data)
    print(build_table(data, summary))
    if args.json:
        print(json.dumps({**data, "summary": summary}, indent=2, default=str))


def main() -> None:
    class Formatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
        pass

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    ap.add_argument("--warmup", type=float, default=1.0,
                    help="unmeasured seconds per cell, after the clients connected")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds over all cells, each in a rotated order")
    ap.add_argument("--procs", type=int, default=4, help="load processes per cell")
    ap.add_argument("--concurrency", type=int, default=64,
                    help="threads (blocking clients) or tasks (async clients) per cell")
    ap.add_argument("--clients", default=",".join(CLIENTS),
                    help="comma-separated subset of: sync (SyncClient), aio (AsyncClient), "
                         "trio (PrkDbClient), etcd and etcd-raw (the HTTP/JSON baselines: "
                         "http.client, and HTTP/1.1 by hand)")
    ap.add_argument("--no-etcd", action="store_true",
                    help="do not start etcd (no baseline ratio); for machines without it")
    ap.add_argument("--port", type=int, default=18700,
                    help="PrkDB client port of node 1 (nodes on PORT..PORT+2, peers on PORT+100..)")
    ap.add_argument("--etcd-port", type=int, default=22479,
                    help="etcd client port of node 1 (peers on PORT+100..)")
    ap.add_argument("--json", action="store_true", help="also print every run as JSON")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    args.clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if bad := [c for c in args.clients if c not in CLIENTS]:
        ap.error(f"unknown client(s) {', '.join(bad)}; choose from {', '.join(CLIENTS)}")
    if args.seconds <= 0 or args.warmup < 0 or args.rounds < 1 or args.procs < 1 \
            or args.concurrency < 1:
        ap.error("--seconds must be > 0, --warmup >= 0, --rounds/--procs/--concurrency >= 1")

    import shutil
    import signal
    import tempfile

    sys.path.insert(0, str(REPO / "scripts"))
    from bench_compare import cleanup

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="bench-clients-"))
    try:
        run(args, root)
    finally:
        cleanup()  # every process bench_compare.spawn started: servers and load processes
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
