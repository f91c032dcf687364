#!/usr/bin/env python3
"""WAL micro-benchmarks (not a test): prints figures in one run.

(a) raw disk: 128-byte pwrite + os.fdatasync in a loop on a preallocated
    file -- the physical floor of one durable write.
(b) group commit: 64 closed-loop writers of 100-byte entries (8 partitions),
    simulated the way the daemon runs: one "event loop" thread appends every
    pending entry (one append_entries per partition per pass) and hands the
    flush to a syncer thread, continuing with the next batch meanwhile.
(c) one writer: append one entry + sync, p50 vs (a)'s p50.
(d) recovery: open() of a WAL holding 1,000,000 100-byte entries (in
    batches of 64, as group commit writes them), time and peak RSS (measured
    in a child process so the writing phase does not count).

Usage: python scripts/bench_wal.py [--quick] [--dir DIR]
       python scripts/bench_wal.py --baseline DIR [--rounds N] [--quick]

--baseline DIR: an A/B against another checkout of the repository (made
with `git worktree add DIR <rev>`): (b), (c) and (d) run alternately in
child processes that import `prkdb` from DIR and from this tree, N rounds
each, and the medians are printed as ratios this/baseline (same machine,
same minutes: the fair comparison on a shared, noisy machine).
"""

from __future__ import annotations

import argparse
import os
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TREE = Path(__file__).resolve().parents[1]
if "--tree" in sys.argv:  # an A/B child: import prkdb from that checkout
    TREE = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()
sys.path.insert(0, str(TREE))

from prkdb.raft.types import Entry  # noqa: E402 (after the sys.path line)
from prkdb.storage import WriteAheadLog  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_raw(base: Path, n: int) -> tuple[float, float, float]:
    path = base / "raw.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.posix_fallocate(fd, 0, 128 * n + 4096)
    os.fsync(fd)
    buf = b"r" * 128
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        os.pwrite(fd, buf, i * 128)
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    os.close(fd)
    path.unlink()
    return n / total, pct(lat, 0.5), pct(lat, 0.99)


def bench_group_commit(base: Path, seconds: float, writers: int = 64, parts: int = 8) -> tuple:
    d = base / "gc"
    wal = WriteAheadLog.open(d)
    next_index = dict.fromkeys(range(parts), 1)
    payload = b"v" * 100
    idle = list(range(writers))  # writers whose previous entry is durable
    to_sync: queue.Queue = queue.Queue()
    synced: queue.Queue = queue.Queue()
    batches: list[int] = []

    def syncer() -> None:
        while True:
            batch = to_sync.get()
            if batch is None:
                return
            # Group commit: take every batch queued meanwhile, one fdatasync.
            more = [batch]
            while not to_sync.empty():
                b = to_sync.get()
                if b is None:
                    to_sync.put(None)
                    break
                more.append(b)
            wal.sync()
            synced.put([w for b in more for w in b])

    th = threading.Thread(target=syncer)
    th.start()
    acked = 0
    in_flight = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        if idle and time.perf_counter() < deadline:
            by_part: dict[int, list[Entry]] = {}
            for w in idle:
                p = w % parts
                ents = by_part.setdefault(p, [])
                ents.append(Entry(1, next_index[p] + len(ents), data=payload))
            for p, ents in by_part.items():
                wal.append_entries(p, ents)
                next_index[p] += len(ents)
            batches.append(len(idle))
            to_sync.put(idle)
            in_flight += len(idle)
            idle = []
        elif in_flight == 0:
            break
        done = synced.get()  # the event loop would await this
        acked += len(done)
        in_flight -= len(done)
        idle.extend(done)
    elapsed = time.perf_counter() - t0
    to_sync.put(None)
    th.join()
    wal.close()
    shutil.rmtree(d)
    return acked / elapsed, statistics.mean(batches)


def bench_single(base: Path, n: int) -> tuple[float, float, float]:
    """p50/p99 of append+sync, and p50 of a raw pwrite+fdatasync interleaved
    with it (same moment, same disk: the fair baseline on a shared machine)."""
    d = base / "single"
    wal = WriteAheadLog.open(d)
    fd = os.open(base / "raw2.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.posix_fallocate(fd, 0, 128 * n + 4096)
    lat, raw = [], []
    payload = b"s" * 100
    for i in range(1, n + 1):
        t = time.perf_counter()
        wal.append_entries(0, [Entry(1, i, data=payload)])
        wal.sync()
        t2 = time.perf_counter()
        os.pwrite(fd, b"r" * 128, i * 128)
        os.fdatasync(fd)
        raw.append(time.perf_counter() - t2)
        lat.append(t2 - t)
    os.close(fd)
    wal.close()
    shutil.rmtree(d)
    return pct(lat, 0.5), pct(lat, 0.99), pct(raw, 0.5)


def write_recovery_wal(d: Path, n: int, batch: int = 64) -> None:
    wal = WriteAheadLog.open(d)
    payload = b"e" * 100
    for first in range(1, n + 1, batch):
        last = min(n, first + batch - 1)
        wal.append_entries(first % 8, [Entry(1, i, data=payload) for i in range(first, last + 1)])
    wal.close()


def recover_child(d: str) -> None:
    t = time.perf_counter()
    wal = WriteAheadLog.open(d)
    elapsed = time.perf_counter() - t
    n = sum(len(p.entries) for p in wal.recovered().values())
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{elapsed:.3f} {n} {rss_kib}")


def ab_child(kind: str, base: Path, quick: bool) -> None:
    """One measurement with the prkdb of --tree; prints one number."""
    if kind == "group":
        print(bench_group_commit(base, 1.0 if quick else 3.0)[0])
    elif kind == "single":
        print(bench_single(base, 500 if quick else 2000)[0])
    else:
        d = base / "recover"
        write_recovery_wal(d, 100_000 if quick else 1_000_000)
        t = time.perf_counter()
        WriteAheadLog.open(d).close()
        print(time.perf_counter() - t)


def ab_compare(baseline: Path, rounds: int, quick: bool, tmp: str | None) -> None:
    """Alternate child runs of both trees; print medians and ratios."""
    kinds = {"group": "(b) group commit, durable entries/s",
             "single": "(c) one writer append+sync p50, s",
             "recover": "(d) recovery open(), s"}
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for kind in kinds:
            order = [("baseline", baseline), ("this", TREE)]
            if r % 2:
                order.reverse()
            for name, tree in order:
                base = Path(tempfile.mkdtemp(prefix="bench_wal_ab_", dir=tmp))
                try:
                    args = [sys.executable, __file__, "--tree", str(tree), "--ab-child", kind,
                            "--dir", str(base)] + (["--quick"] if quick else [])
                    out = subprocess.run(args, check=True, capture_output=True, text=True)
                    results.setdefault((kind, name), []).append(float(out.stdout.split()[-1]))
                finally:
                    shutil.rmtree(base, ignore_errors=True)
    print(f"A/B: this tree {TREE} vs baseline {baseline}, {rounds} alternating rounds")
    for kind, label in kinds.items():
        this = statistics.median(results[(kind, "this")])
        base = statistics.median(results[(kind, "baseline")])
        print(f"  {label}: this {this:.6g}  baseline {base:.6g}  ratio this/baseline "
              f"{this / base:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run")
    ap.add_argument("--dir", help="directory for temp files (default: under /tmp)")
    ap.add_argument("--baseline", type=Path,
                    help="another checkout to compare with (A/B, see the module doc)")
    ap.add_argument("--rounds", type=int, default=5, help="A/B rounds (default 5)")
    ap.add_argument("--recover-child", help=argparse.SUPPRESS)
    ap.add_argument("--ab-child", help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.recover_child:
        recover_child(args.recover_child)
        return
    if args.ab_child:
        ab_child(args.ab_child, Path(args.dir), args.quick)
        return
    if args.baseline:
        ab_compare(args.baseline.resolve(), args.rounds, args.quick, args.dir)
        return
    base = Path(tempfile.mkdtemp(prefix="bench_wal_", dir=args.dir))
    try:
        n_raw = 500 if args.quick else 3000
        ops, p50, p99 = bench_raw(base, n_raw)
        print(
            f"(a) raw 128B pwrite+fdatasync: {ops:,.0f} ops/s  p50 {p50 * 1e3:.3f} ms  "
            f"p99 {p99 * 1e3:.3f} ms  (n={n_raw})"
        )
        eps, mean_batch = bench_group_commit(base, 1.0 if args.quick else 5.0)
        print(
            f"(b) group commit, 64 writers x 100B: {eps:,.0f} durable entries/s  "
            f"= {eps / ops:.1f}x (a)  (mean batch {mean_batch:.1f} entries; target >= 50x)"
        )
        s50, s99, r50 = bench_single(base, n_raw)
        print(
            f"(c) one writer append+sync: p50 {s50 * 1e3:.3f} ms = {s50 / p50:.2f}x (a) p50, "
            f"{s50 / r50:.2f}x an interleaved raw write ({r50 * 1e3:.3f} ms)  "
            f"p99 {s99 * 1e3:.3f} ms  (target <= 1.3x)"
        )
        n_rec = 100_000 if args.quick else 1_000_000
        d = base / "recover"
        t = time.perf_counter()
        write_recovery_wal(d, n_rec)
        wrote = time.perf_counter() - t
        out = subprocess.run(
            [sys.executable, __file__, "--recover-child", str(d)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        secs, got, rss = float(out[0]), int(out[1]), int(out[2])
        size = sum(p.stat().st_size for p in d.iterdir())
        print(
            f"(d) recovery of {got:,} x 100B entries ({size / 2**20:.0f} MiB of segments, "
            f"written in {wrote:.1f} s): {secs:.2f} s, peak RSS {rss / 1024:.0f} MiB "
            f"(target <= 5 s)"
        )
        assert got == n_rec, (got, n_rec)
        print("(e) state machine apply: see the state machine's own bench")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
