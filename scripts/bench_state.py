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
  checks, dict update, result object), from pre-encoded entry data, with and
  without a session envelope; plus snapshot/restore time.

Usage: python scripts/bench_state.py [--keys N]   (default 1,000,000)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
from pathlib import Path

# Run from a checkout without installing: make the repo root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prkdb.state import KVStateMachine, PutCommand, encode_command

KEY_SIZE = 16
VALUE_SIZE = 100


def _key(i: int) -> bytes:
    return b"%016d" % i


def _value(i: int) -> bytes:
    # Distinct per key, 100 bytes.
    return (b"%010d" % i) * (VALUE_SIZE // 10)


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


def bench_apply(n: int, *, session: bool) -> tuple[float, float, float, int]:
    """Return (apply ops/s, snapshot s, restore s, snapshot bytes) for n Puts."""
    if session:
        entries = [
            encode_command(PutCommand(_key(i), _value(i)), b"bench-client", i + 1) for i in range(n)
        ]
    else:
        entries = [encode_command(PutCommand(_key(i), _value(i))) for i in range(n)]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys to insert")
    args = parser.parse_args()
    n: int = args.keys
    raw = KEY_SIZE + VALUE_SIZE
    print(f"keys: {n:,} ({KEY_SIZE}-byte keys, {VALUE_SIZE}-byte values; raw payload {raw} B)")

    per_key = bench_memory_rss(n)
    print(f"memory (RSS delta):   {per_key:7.1f} bytes/key  = {per_key / raw:.2f}x raw")
    per_key = bench_memory_tracemalloc(n)
    print(f"memory (tracemalloc): {per_key:7.1f} bytes/key  = {per_key / raw:.2f}x raw")

    for session in (False, True):
        ops, snap_s, restore_s, snap_len = bench_apply(n, session=session)
        label = "put+session" if session else "put        "
        print(f"apply {label}: {ops:10,.0f} ops/s")
    print(
        f"snapshot: {snap_len / 1e6:.1f} MB in {snap_s:.2f} s; restore {restore_s:.2f} s"
    )


if __name__ == "__main__":
    main()
