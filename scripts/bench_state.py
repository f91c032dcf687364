#!/usr/bin/env python3
"""Benchmark the KV state machine: memory per key and apply throughput.

Not a test (speed lives in scripts/, see STYLE §11). It answers two sizing
questions for prkdb/state/kv.py:

* memory: how many bytes one key costs in a partition's state, measured two
  ways after applying N PutCommand commands (16-byte keys, 100-byte values, as
  decoded from the log, so nothing is shared with the caller):
  ``tracemalloc`` (exact Python allocations still alive) and the RSS delta
  (what the OS sees, incl. allocator slack). Printed next to the raw payload
  (16 + 100 = 116 bytes) as a ratio.
* throughput: PutCommand commands per second through ``apply`` (decode, limit
  checks, dict and ordered-index update, result object), from pre-encoded
  entry data: keys in ascending order (the index's best case: every insert
  lands in its last sublist), keys in hash order (16 random-looking bytes,
  inserts land anywhere), and ascending with a session envelope; plus
  snapshot/restore time and, where the machine has ``scan``, a 1,000-key scan;
  where it has transactions and leases (issue 16), puts attached to a lease
  and one-compare transactions (create-if-absent, etcd's lock idiom).

Usage: python scripts/bench_state.py [--keys N]   (default 1,000,000)

Before/after in one run: ``--baseline DIR`` measures DIR's prkdb (a checkout,
e.g. ``git worktree add --detach /tmp/state-base <commit>``) against this
checkout's, each measurement in a fresh subprocess (so neither side's heap
or RSS leaks into the other's), alternating sides for ``--rounds`` rounds;
it prints per-side medians and the ratio after/before.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent.parent
# Which checkout's prkdb to measure: this one, or --root's (set by --baseline).
if "--root" in sys.argv:
    _HERE = Path(sys.argv[sys.argv.index("--root") + 1]).resolve()
# Run from a checkout without installing: make the repo root importable.
sys.path.insert(0, str(_HERE))

import prkdb.state  # noqa: E402
from prkdb.state import KVStateMachine, PutCommand, encode_command  # noqa: E402

KEY_SIZE = 16
VALUE_SIZE = 100


def _key(i: int) -> bytes:
    return b"%016d" % i


def _value(i: int) -> bytes:
    # Distinct per key, 100 bytes.
    return (b"%010d" % i) * (VALUE_SIZE // 10)


def _hashed_key(i: int) -> bytes:
    # 16 bytes in no particular order: inserts land anywhere in the index.
    return hashlib.blake2b(b"%d" % i, digest_size=KEY_SIZE).digest()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fill(machine: KVStateMachine, n: int) -> None:
    for i in range(n):
        machine.apply(i + 1, encode_command(PutCommand(_key(i), _value(i))))


def bench_memory_tracemalloc(n: int) -> float:
    """Bytes per key still allocated after filling, by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    machine = KVStateMachine()
    _fill(machine, n)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(machine) == n
    del machine
    gc.collect()
    return used / n


def bench_memory_rss(n: int) -> float:
    """Bytes per key by RSS growth (includes allocator slack; noisier)."""
    gc.collect()
    base = _rss_bytes()
    machine = KVStateMachine()
    _fill(machine, n)
    gc.collect()
    used = _rss_bytes() - base
    assert len(machine) == n
    del machine
    gc.collect()
    return used / n


def bench_apply(
    n: int, *, session: bool, hashed: bool = False
) -> tuple[float, float, float, int]:
    """Return (apply ops/s, snapshot s, restore s, snapshot bytes) for n Puts."""
    key = _hashed_key if hashed else _key
    if session:
        entries = [
            encode_command(PutCommand(key(i), _value(i)), b"bench-client", i + 1) for i in range(n)
        ]
    else:
        entries = [encode_command(PutCommand(key(i), _value(i))) for i in range(n)]
    machine = KVStateMachine()
    apply = machine.apply
    gc.collect()
    start = time.perf_counter()
    for index, data in enumerate(entries, 1):
        apply(index, data)
    elapsed = time.perf_counter() - start
    del entries
    t0 = time.perf_counter()
    snap = machine.snapshot()
    t1 = time.perf_counter()
    KVStateMachine().restore(snap)
    t2 = time.perf_counter()
    return n / elapsed, t1 - t0, t2 - t1, len(snap)


def bench_new_commands(n: int) -> tuple[float, float]:
    """(leased put ops/s, txn ops/s) for n new keys; (0, 0) before issue 16."""
    st: Any = prkdb.state
    if not hasattr(st, "TxnCommand"):
        return 0.0, 0.0
    leased = [encode_command(st.LeaseGrantCommand(10_000))] + [
        encode_command(PutCommand(_key(i), _value(i), 1 << 16)) for i in range(n)
    ]
    absent = st.Compare(b"", st.CompareTarget.VERSION, st.CompareOp.EQUAL, 0)
    txns = [
        encode_command(st.TxnCommand(
            (st.Compare(_key(i), absent.target, absent.op, 0),),
            (PutCommand(_key(i), _value(i)),),
            (st.GetOp(_key(i)),),
        ))
        for i in range(n)
    ]
    rates = []
    for entries in (leased, txns):
        machine = KVStateMachine()
        apply = machine.apply
        gc.collect()
        start = time.perf_counter()
        for index, data in enumerate(entries, 1):
            apply(index, data)
        rates.append(len(entries) / (time.perf_counter() - start))
    return rates[0], rates[1]


def bench_scan(n: int, width: int = 1000, reps: int = 200) -> float:
    """Seconds per ``scan`` of ``width`` keys from the middle of n keys (0 if no scan)."""
    machine = KVStateMachine()
    if not hasattr(machine, "scan"):
        return 0.0
    _fill(machine, n)
    start = _key(n // 2)
    t0 = time.perf_counter()
    for _ in range(reps):
        got = machine.scan(start, None, limit=width)
    elapsed = time.perf_counter() - t0
    assert len(got) == min(width, n - n // 2)
    return elapsed / reps


# (name, unit, higher is better): what a --worker run reports, in JSON.
_METRICS = [
    ("rss_bytes_per_key", "B/key", False),
    ("tracemalloc_bytes_per_key", "B/key", False),
    ("put_seq_ops", "ops/s", True),
    ("put_hashed_ops", "ops/s", True),
    ("put_session_ops", "ops/s", True),
    ("snapshot_s", "s", False),
    ("restore_s", "s", False),
    ("scan1000_us", "us", False),
    ("put_leased_ops", "ops/s", True),
    ("txn_ops", "ops/s", True),
]


def _measure(n: int) -> dict[str, float]:
    out: dict[str, float] = {
        "rss_bytes_per_key": bench_memory_rss(n),
        "tracemalloc_bytes_per_key": bench_memory_tracemalloc(n),
    }
    ops, snap_s, restore_s, _ = bench_apply(n, session=False)
    out.update(put_seq_ops=ops, snapshot_s=snap_s, restore_s=restore_s)
    out["put_hashed_ops"] = bench_apply(n, session=False, hashed=True)[0]
    out["put_session_ops"] = bench_apply(n, session=True)[0]
    out["scan1000_us"] = bench_scan(min(n, 100_000)) * 1e6
    out["put_leased_ops"], out["txn_ops"] = bench_new_commands(min(n, 200_000))
    return out


def compare(baseline: Path, n: int, rounds: int) -> None:
    """Measure baseline and this checkout alternately in subprocesses; print medians."""
    sides = {"before": baseline.resolve(), "after": _HERE}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for r in range(rounds):
        # Alternate which side goes first, so drift favours neither.
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for side in order:
            root = str(sides[side])
            cmd = [sys.executable, __file__, "--worker", "--keys", str(n), "--root", root]
            proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
            runs[side].append(json.loads(proc.stdout))
            print(f"round {r + 1}/{rounds} {side}: done", file=sys.stderr)
    print(f"keys: {n:,}; {rounds} rounds, sides alternated; before = {sides['before']}")
    print(f"{'metric':34} {'before':>12} {'after':>12} {'after/before':>13}")
    for name, unit, _ in _METRICS:
        b = statistics.median(x[name] for x in runs["before"])
        a = statistics.median(x[name] for x in runs["after"])
        ratio = f"{a / b:.3f}" if b else "-"
        print(f"{name + ' (' + unit + ')':34} {b:12,.3f} {a:12,.3f} {ratio:>13}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys to insert")
    parser.add_argument("--baseline", type=Path, help="checkout to compare against")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (--baseline)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)  # read before imports
    args = parser.parse_args()
    n: int = args.keys
    if args.worker:
        print(json.dumps(_measure(n)))
        return
    if args.baseline is not None:
        compare(args.baseline, n, args.rounds)
        return
    raw = KEY_SIZE + VALUE_SIZE
    print(f"keys: {n:,} ({KEY_SIZE}-byte keys, {VALUE_SIZE}-byte values; raw payload {raw} B)")

    per_key = bench_memory_rss(n)
    print(f"memory (RSS delta):   {per_key:7.1f} bytes/key  = {per_key / raw:.2f}x raw")
    per_key = bench_memory_tracemalloc(n)
    print(f"memory (tracemalloc): {per_key:7.1f} bytes/key  = {per_key / raw:.2f}x raw")

    for session, hashed in ((False, False), (False, True), (True, False)):
        ops, snap_s, restore_s, snap_len = bench_apply(n, session=session, hashed=hashed)
        label = "put+session" if session else "put hashed " if hashed else "put        "
        print(f"apply {label}: {ops:10,.0f} ops/s")
    print(
        f"snapshot: {snap_len / 1e6:.1f} MB in {snap_s:.2f} s; restore {restore_s:.2f} s"
    )
    leased, txn = bench_new_commands(min(n, 200_000))
    if leased:
        print(f"apply put+lease  : {leased:10,.0f} ops/s")
        print(f"apply txn        : {txn:10,.0f} ops/s  (1 compare, put or get)")


if __name__ == "__main__":
    main()
