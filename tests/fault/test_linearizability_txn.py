"""The checker's transaction model, on hand-written histories that must pass or must fail.

A group of two keys (positions 0 and 1) shares one register; the "transfer"
txn below moves the pair from (a0, b0) to (a1, b1) only if key 0 still holds
a0, and reads both keys back in either branch.
"""

from __future__ import annotations

import random

import pytest

from prkdb.testing.linearizability import INF, History, Op, TxnSpec, check_ops

G = b"{g}"


def txn(i: int, start: float, end: float | None, spec: TxnSpec, result: object = None,
        status: str = "ok") -> Op:
    return Op(i, i, G, "txn", start, None, None, INF if end is None else end,
              "info" if end is None and status == "ok" else status,  # type: ignore[arg-type]
              result, txn=spec)


def move(a_from: bytes | None, a_to: bytes, b_to: bytes) -> TxnSpec:
    """If key 0 is `a_from`: put both; either way read both."""
    reads = (("get", 0, None), ("get", 1, None))
    return TxnSpec(2, ((0, a_from),), (("put", 0, a_to), ("put", 1, b_to), *reads), reads)


READ = TxnSpec(2, (), (("get", 0, None), ("get", 1, None)))


PASS = {
    "sequential moves": [
        txn(0, 0, 1, move(None, b"a1", b"b1"), (True, (b"a1", b"b1"))),
        txn(1, 2, 3, move(b"a1", b"a2", b"b2"), (True, (b"a2", b"b2"))),
        txn(2, 4, 5, READ, (True, (b"a2", b"b2"))),
    ],
    "a failed compare reads the current pair": [
        txn(0, 0, 1, move(None, b"a1", b"b1"), (True, (b"a1", b"b1"))),
        txn(1, 2, 3, move(None, b"x", b"y"), (False, (b"a1", b"b1"))),
    ],
    "concurrent moves: one wins, the other sees the winner": [
        txn(0, 0, 10, move(None, b"a1", b"b1"), (True, (b"a1", b"b1"))),
        txn(1, 0, 10, move(None, b"a2", b"b2"), (False, (b"a1", b"b1"))),
    ],
    "an info move may have happened": [
        txn(0, 0, None, move(None, b"a1", b"b1")),
        txn(1, 5, 6, READ, (True, (b"a1", b"b1"))),
    ],
    "an info move may not have happened": [
        txn(0, 0, None, move(None, b"a1", b"b1")),
        txn(1, 5, 6, READ, (True, (None, None))),
    ],
}

FAIL = {
    "torn: one key of the pair written": [
        txn(0, 0, 1, move(None, b"a1", b"b1"), (True, (b"a1", b"b1"))),
        txn(1, 2, 3, READ, (True, (b"a1", None))),
    ],
    "both moves from the same state succeeded (a lost update)": [
        txn(0, 0, 10, move(None, b"a1", b"b1"), (True, (b"a1", b"b1"))),
        txn(1, 0, 10, move(None, b"a2", b"b2"), (True, (b"a2", b"b2"))),
    ],
    "the failure branch ran although the compare held": [
        txn(0, 0, 1, move(None, b"a1", b"b1"), (False, (None, None))),
    ],
    "a stale read after a completed move": [
        txn(0, 0, 1, move(None, b"a1", b"b1"), (True, (b"a1", b"b1"))),
        txn(1, 2, 3, READ, (True, (None, None))),
    ],
    "an info move seen, then unseen": [
        txn(0, 0, None, move(None, b"a1", b"b1")),
        txn(1, 5, 6, READ, (True, (b"a1", b"b1"))),
        txn(2, 7, 8, READ, (True, (None, None))),
    ],
    "a read returning more values than the branch has gets": [
        txn(0, 0, 1, READ, (True, (None, None, None))),
    ],
}


@pytest.mark.parametrize("name", sorted(PASS))
def test_linearizable_txn_histories_pass(name: str) -> None:
    res = check_ops(PASS[name])
    assert res.verdict == "ok", res.report()


@pytest.mark.parametrize("name", sorted(FAIL))
def test_txn_anomalies_are_caught(name: str) -> None:
    res = check_ops(FAIL[name])
    assert res.verdict == "fail", name
    assert "txn" in res.report()


def test_random_sequential_txn_histories_pass_and_a_flipped_read_fails() -> None:
    rng = random.Random(7)
    for _ in range(50):
        pair: list[bytes | None] = [None, None]
        ops, t = [], 0.0
        for i in range(12):
            if rng.random() < 0.3:
                spec, succeeded = READ, True
            else:
                guess = pair[0] if rng.random() < 0.7 else b"nope"
                spec = move(guess, b"a%d" % i, b"b%d" % i)
                succeeded = guess == pair[0]
                if succeeded:
                    pair = [b"a%d" % i, b"b%d" % i]
            ops.append(txn(i, t, t + 1, spec, (succeeded, tuple(pair))))
            t += 2
        assert check_ops(ops).verdict == "ok"
        last = ops[-1]
        flipped = (last.result[0], (b"zz", last.result[1][1]))
        ops[-1] = txn(last.id, last.invoke, last.complete, last.txn, flipped)  # type: ignore[arg-type]
        assert check_ops(ops).verdict == "fail"


def test_recorder_needs_a_spec_exactly_for_txns() -> None:
    h = History()
    with pytest.raises(ValueError, match="TxnSpec"):
        h.invoke(0, G, "txn")
    with pytest.raises(ValueError, match="TxnSpec"):
        h.invoke(0, G, "put", value=b"v", txn=READ)
    o = h.invoke(0, G, "txn", txn=READ)
    h.ok(o, (True, (None, None)))
    assert h.check().ok
