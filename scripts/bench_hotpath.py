#!/usr/bin/env python3
"""Microbenchmark of the per-operation CPU hot paths: wire codec and state machine.

Not a test (speed lives in scripts/, see STYLE §11). Each path is timed with
``time.process_time_ns`` (CPU time of this process, so a busy shared machine
inflates it less than wall time), as the minimum over ``--repeats`` runs of
``--ops`` operations, and printed as µs per operation. Minimum-of-N is the
least noisy estimate of what the code costs when nothing else interferes.

Paths (what a server does per client write / per replication round):

* client requests: a Put / Get frame through ``FrameDecoder`` + ``from_wire``;
  the WriteOk / GetOk reply through ``encode_message``.
* peers: a ``RaftBatch`` holding one APP with 1, 8 and 64 entries of ~130 bytes
  (the size of a session-tagged Put command of a 16-byte key and 100-byte
  value), encoded and decoded; an APP_RESP and a HEARTBEAT batch likewise.
  "2 peers" rows: a leader's round to two followers (same entries, separate
  tuples as the Raft core slices them), per peer through the generic
  ``encode_frame(to_wire(...))`` path, and through one ``RaftBatchEncoder``
  (entries encoded once); µs per round.
* state machine: ``encode_command`` (with session), ``decode_command``, and
  ``KVStateMachine.apply`` of session-tagged Puts (64 sessions, like 64
  pipelined SDK slots; keys cycle over 10,000 so updates dominate).

Usage: python scripts/bench_hotpath.py [--ops N] [--repeats R] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

# Run from a checkout without installing: make the repo root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prkdb.raft.types import Entry, Message, MsgType
from prkdb.state import KVStateMachine, PutCommand, decode_command, encode_command
from prkdb.wire.frames import FrameDecoder, encode_frame
from prkdb.wire.messages import (
    Get,
    GetOk,
    RaftBatch,
    RaftBatchEncoder,
    ReadConsistency,
    WriteOk,
    encode_message,
    from_wire,
    to_wire,
)
from prkdb.wire.messages import Put as PutRequest

KEY = b"k" * 16
VALUE = b"v" * 100
CLIENT_ID = 0x1234_5678_9ABC_DEF0  # SDK session ids are random 64-bit ints

# A benchmark body: runs `n` operations, returns nothing.
Body = Callable[[int], None]


def _timed(body: Body, ops: int, repeats: int) -> float:
    """Min over `repeats` of CPU ns per op for `body(ops)`."""
    body(min(ops, 200))  # warm caches
    best = float("inf")
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # collections would land on random runs; min-of-N wants the clean ones
    try:
        for _ in range(repeats):
            t0 = time.process_time_ns()
            body(ops)
            best = min(best, (time.process_time_ns() - t0) / ops)
    finally:
        if gc_was_enabled:
            gc.enable()
    return best / 1000.0


def _decode_frames(frame: bytes) -> Body:
    def body(n: int) -> None:
        dec = FrameDecoder()
        feed, nxt = dec.receive_data, dec.next_frame
        for _ in range(n):
            feed(frame)
            from_wire(nxt())

    return body


def _encode(msg: object) -> Body:
    def body(n: int) -> None:
        for _ in range(n):
            encode_message(msg)  # type: ignore[arg-type]

    return body


def _app_batch(n_entries: int) -> RaftBatch:
    data = encode_command(PutCommand(KEY, VALUE), CLIENT_ID, 1_000_000)
    entries = tuple(Entry(5, 101 + i, data=data) for i in range(n_entries))
    msg = Message(
        MsgType.APP, to=2, from_=1, term=5, log_term=5, index=100, entries=entries, commit=99
    )
    return RaftBatch(1, ((3, msg),))


def _two_peer_batches(n_entries: int) -> list[RaftBatch]:
    """One APP each to followers 2 and 3: equal entries in separate tuples, as the core slices."""
    app = _app_batch(n_entries).items[0][1]
    return [
        RaftBatch(1, ((3, replace(app, to=to, entries=tuple(app.entries))),)) for to in (2, 3)
    ]


def _encode_generic(batches: list[RaftBatch]) -> Body:
    def body(n: int) -> None:
        for _ in range(n):
            for b in batches:
                encode_frame(to_wire(b))

    return body


def _encode_shared(batches: list[RaftBatch]) -> Body:
    def body(n: int) -> None:
        for _ in range(n):
            enc = RaftBatchEncoder(1)  # one per flush, as the transport would
            for b in batches:
                enc.encode(b.items)

    return body


def _small_batch(kind: MsgType) -> RaftBatch:
    if kind is MsgType.APP_RESP:
        msg = Message(kind, to=1, from_=2, term=5, index=164, commit=99)
    else:
        msg = Message(kind, to=2, from_=1, term=5, commit=99)
    return RaftBatch(msg.from_, ((3, msg),))


def _encode_command_body(n: int) -> None:
    cmd = PutCommand(KEY, VALUE)
    for seq in range(1, n + 1):
        encode_command(cmd, CLIENT_ID, seq)


def _decode_command_body(data: bytes) -> Body:
    def body(n: int) -> None:
        for _ in range(n):
            decode_command(data)

    return body


def _apply_body(ops: int) -> Body:
    # Pre-encoded outside the timed body: the bench measures apply only.
    datas = [
        encode_command(PutCommand(b"%016d" % (i % 10_000), VALUE), CLIENT_ID + i % 64, 1 + i // 64)
        for i in range(ops)
    ]

    def body(n: int) -> None:
        sm = KVStateMachine()
        apply = sm.apply
        for i in range(n):
            apply(i + 1, datas[i])

    return body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", type=int, default=20_000, help="operations per timed run")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs; the minimum is shown")
    ap.add_argument("--only", default="", help="run only paths whose name contains this")
    args = ap.parse_args()

    put_frame = encode_message(PutRequest(7, KEY, VALUE, CLIENT_ID, 12345))
    get_frame = encode_message(Get(7, KEY, ReadConsistency.LINEARIZABLE, 3))
    cmd_data = encode_command(PutCommand(KEY, VALUE), CLIENT_ID, 12345)
    paths: list[tuple[str, Body]] = [
        ("client: decode Put frame", _decode_frames(put_frame)),
        ("client: decode Get frame", _decode_frames(get_frame)),
        ("client: encode WriteOk", _encode(WriteOk(7, True, 1234567, 3, 2))),
        ("client: encode GetOk", _encode(GetOk(7, VALUE, 3, 1234567, 1234570))),
    ]
    for n in (1, 8, 64):
        batch = _app_batch(n)
        paths.append((f"raft: encode APP x{n}", _encode(batch)))
        paths.append((f"raft: decode APP x{n}", _decode_frames(encode_message(batch))))
    for n in (8, 64):
        two = _two_peer_batches(n)
        paths.append((f"raft: encode APP x{n} 2 peers generic", _encode_generic(two)))
        paths.append((f"raft: encode APP x{n} 2 peers shared", _encode_shared(two)))
    for kind in (MsgType.APP_RESP, MsgType.HEARTBEAT):
        batch = _small_batch(kind)
        paths.append((f"raft: encode {kind.name}", _encode(batch)))
        paths.append((f"raft: decode {kind.name}", _decode_frames(encode_message(batch))))
    paths += [
        ("state: encode_command Put+session", _encode_command_body),
        ("state: decode_command Put+session", _decode_command_body(cmd_data)),
        ("state: apply Put+session", _apply_body(args.ops)),
    ]

    version = sys.version.split()[0]
    print(f"# µs CPU per op, min of {args.repeats} x {args.ops} ops (python {version})")
    for name, body in paths:
        if args.only and args.only not in name:
            continue
        us = _timed(body, args.ops, args.repeats)
        print(f"{name:<40} {us:8.2f}")


if __name__ == "__main__":
    main()
