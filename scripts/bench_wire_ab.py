#!/usr/bin/env python3
"""Same-run A/B of the wire hot-path encoders: this checkout against another one.

Not a test (speed lives in scripts/, STYLE §11). Loads ``prkdb`` twice in one
process, first from ``--base`` (e.g. a ``git worktree add /tmp/wire-base
HEAD`` checkout), then from this checkout, and times every hot-path encoder of
both in interleaved rounds (A B, then B A, ...), so drift of a busy shared
machine lands on both sides alike. Each sample is the CPU time
(``time.process_time_ns``) of ``--ops`` calls; the figure per side is the
minimum over ``--rounds`` samples, the least noisy estimate of the code's
cost. Prints ns per call for both and the ratio new/old.

Encoders timed: the client's request encoders (``encode_get_request``,
``encode_put_request``, ``encode_delete_request``), the reply encoders
(``encode_get_ok``, ``encode_write_ok``), and ``encode_message`` of each of
those messages (the server's reply path), plus a RaftBatch heartbeat as a
control.

Usage: python scripts/bench_wire_ab.py --base /tmp/wire-base [--ops N] [--rounds R]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent.parent

KEY = b"k" * 16
VALUE = b"v" * 100
CLIENT_ID = 0x1234_5678_9ABC_DEF0  # SDK session ids are random 64-bit ints
SEQ = 1_000_000
RID = 4242

# A case: the name and, per implementation, a zero-argument call to time.
Call = Callable[[], object]


def _load(root: Path) -> tuple[ModuleType, ModuleType]:
    """Import ``prkdb.wire.messages`` and ``prkdb.raft.types`` from `root`, then forget them.

    The returned modules keep their own copies of every prkdb module they
    use, so two checkouts' code can live in one process.
    """
    for name in [n for n in sys.modules if n == "prkdb" or n.startswith("prkdb.")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        messages = importlib.import_module("prkdb.wire.messages")
        raft_types = importlib.import_module("prkdb.raft.types")
    finally:
        sys.path.remove(str(root))
    assert messages.__file__ is not None and Path(messages.__file__).is_relative_to(root)
    for name in [n for n in sys.modules if n == "prkdb" or n.startswith("prkdb.")]:
        del sys.modules[name]
    return messages, raft_types


def _cases(m: ModuleType, rt: ModuleType) -> dict[str, Call]:
    """The hot-path calls of one implementation (`m`: its messages, `rt`: its raft types)."""
    get = m.Get(RID, KEY, m.ReadConsistency.LINEARIZABLE, 3)
    put = m.Put(RID, KEY, VALUE, CLIENT_ID, SEQ)
    delete = m.Delete(RID, KEY, CLIENT_ID, SEQ)
    get_ok = m.GetOk(RID, VALUE, 7, 123_456, 123_460)
    get_absent = m.GetOk(RID, None, 0, 0, 123_460)
    write_ok = m.WriteOk(RID, True, 123_461, 8, 7)
    beat = rt.Message(rt.MsgType.HEARTBEAT, to=2, from_=1, term=5, commit=99)
    batch = m.RaftBatch(1, ((3, beat),))
    enc = m.encode_message
    return {
        "encode_get_request": lambda: m.encode_get_request(RID, KEY, 0, 3),
        "encode_put_request": lambda: m.encode_put_request(RID, KEY, VALUE, CLIENT_ID, SEQ),
        "encode_delete_request": lambda: m.encode_delete_request(RID, KEY, CLIENT_ID, SEQ),
        "encode_get_ok": lambda: m.encode_get_ok(RID, VALUE, 7, 123_456, 123_460),
        "encode_write_ok": lambda: m.encode_write_ok(RID, True, 123_461, 8, 7),
        "encode_message(Get)": lambda: enc(get),
        "encode_message(Put)": lambda: enc(put),
        "encode_message(Delete)": lambda: enc(delete),
        "encode_message(GetOk)": lambda: enc(get_ok),
        "encode_message(GetOk absent)": lambda: enc(get_absent),
        "encode_message(WriteOk)": lambda: enc(write_ok),
        "encode_message(RaftBatch HB) [control]": lambda: enc(batch),
    }


def _sample(call: Call, ops: int) -> float:
    """CPU ns per call over `ops` calls."""
    loop = range(ops)
    t0 = time.process_time_ns()
    for _ in loop:
        call()
    return (time.process_time_ns() - t0) / ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the old checkout")
    parser.add_argument("--ops", type=int, default=20_000, help="calls per sample")
    parser.add_argument("--rounds", type=int, default=30, help="samples per side")
    args = parser.parse_args()

    old_cases = _cases(*_load(args.base.resolve()))
    new_cases = _cases(*_load(HERE))
    for name, call in new_cases.items():  # same bytes, or the A/B means nothing
        assert call() == old_cases[name](), name

    best: dict[tuple[str, str], float] = {}
    gc.collect()
    gc.disable()  # collections would land on random samples; min-of-N wants clean ones
    try:
        for name in new_cases:
            sides = [("old", old_cases[name]), ("new", new_cases[name])]
            for _, call in sides:
                _sample(call, 1000)  # warm up
            for r in range(args.rounds):
                for side, call in sides if r % 2 == 0 else sides[::-1]:
                    ns = _sample(call, args.ops)
                    best[side, name] = min(best.get((side, name), float("inf")), ns)
    finally:
        gc.enable()

    print(f"{'encoder':42} {'old ns':>8} {'new ns':>8} {'new/old':>8}")
    for name in new_cases:
        o, n = best["old", name], best["new", name]
        print(f"{name:42} {o:8.0f} {n:8.0f} {n / o:8.3f}")


if __name__ == "__main__":
    main()
