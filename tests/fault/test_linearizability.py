"""The checker itself, on hand-written histories that must pass or must fail."""

from __future__ import annotations

import random

import pytest

from prkdb.testing.linearizability import ANY, INF, History, Op, check_history, check_ops

K = b"k"


def op(
    i: int,
    kind: str,
    start: float,
    end: float | None,
    *,
    value: bytes | None = None,
    expected: bytes | None = None,
    result: object = None,
    status: str = "ok",
    key: bytes = K,
    process: int | None = None,
) -> Op:
    """An op over [start, end]; end None = info (no completion)."""
    return Op(
        i,
        i if process is None else process,
        key,
        kind,  # type: ignore[arg-type]
        start,
        value,
        expected,
        INF if end is None else end,
        "info" if end is None and status == "ok" else status,  # type: ignore[arg-type]
        result,
    )


def w(i, s, e, v, **kw):
    return op(i, "put", s, e, value=v, **kw)


def r(i, s, e, v, **kw):
    return op(i, "get", s, e, result=v, **kw)


def cas(i, s, e, exp, new, ok, **kw):
    return op(i, "cas", s, e, expected=exp, value=new, result=ok, **kw)


PASS = {
    "empty read": [r(0, 0, 1, None)],
    "sequential": [w(0, 0, 1, b"a"), r(1, 2, 3, b"a"), w(2, 4, 5, b"b"), r(3, 6, 7, b"b")],
    "concurrent read sees old": [w(0, 0, 10, b"a"), r(1, 1, 2, None)],
    "concurrent read sees new": [w(0, 0, 10, b"a"), r(1, 1, 2, b"a")],
    "concurrent reads new then old is not allowed but old then new is": [
        w(0, 0, 10, b"a"), r(1, 1, 2, None), r(2, 3, 4, b"a"),
    ],
    "overlapping writes either order": [
        w(0, 0, 5, b"a"), w(1, 1, 6, b"b"), r(2, 7, 8, b"a"),
    ],
    "info write may apply late": [w(0, 0, None, b"a"), r(1, 1, 2, None), r(2, 10, 11, b"a")],
    "info write may never apply": [w(0, 0, None, b"a"), r(1, 10, 11, None)],
    "failed write never happened": [
        w(0, 0, 1, b"a"), w(1, 2, 3, b"b", status="fail"), r(2, 4, 5, b"a"),
    ],
    "delete": [w(0, 0, 1, b"a"), op(1, "delete", 2, 3), r(2, 4, 5, None)],
    "cas success": [w(0, 0, 1, b"a"), cas(1, 2, 3, b"a", b"b", True), r(2, 4, 5, b"b")],
    "cas compare failure": [w(0, 0, 1, b"a"), cas(1, 2, 3, b"x", b"b", False), r(2, 4, 5, b"a")],
    "cas on absent": [cas(0, 0, 1, None, b"a", True), cas(1, 2, 3, None, b"b", False)],
    "info cas either way": [
        w(0, 0, 1, b"a"), cas(1, 2, None, b"a", b"b", None), r(2, 5, 6, b"a"), r(3, 7, 8, b"b"),
    ],
    "concurrent cas race, one wins": [
        w(0, 0, 1, b"a"),
        cas(1, 2, 6, b"a", b"b", True),
        cas(2, 2, 6, b"a", b"c", False),
        r(3, 7, 8, b"b"),
    ],
}

FAIL = {
    "stale read": [w(0, 0, 1, b"a"), w(1, 2, 3, b"b"), r(2, 4, 5, b"a")],
    "lost write": [w(0, 0, 1, b"a"), r(1, 2, 3, None)],
    "value never written": [w(0, 0, 1, b"a"), r(1, 2, 3, b"zzz")],
    "reads go backwards": [
        w(0, 0, 10, b"a"), r(1, 1, 2, b"a"), r(2, 3, 4, None),
    ],
    "failed write was seen": [w(0, 0, 1, b"a", status="fail"), r(1, 2, 3, b"a")],
    "cas succeeded on wrong value": [
        w(0, 0, 1, b"a"), cas(1, 2, 3, b"x", b"b", True),
    ],
    "cas reported compare failure but value matched": [
        w(0, 0, 1, b"a"), cas(1, 2, 3, b"a", b"b", False),
    ],
    "both racing cas succeeded": [
        w(0, 0, 1, b"a"),
        cas(1, 2, 6, b"a", b"b", True),
        cas(2, 2, 6, b"a", b"c", True),
    ],
    "cas effect lost": [
        w(0, 0, 1, b"a"), cas(1, 2, 3, b"a", b"b", True), r(2, 4, 5, b"a"),
    ],
    "delete lost": [w(0, 0, 1, b"a"), op(1, "delete", 2, 3), r(2, 4, 5, b"a")],
}


@pytest.mark.parametrize("name", sorted(PASS))
def test_linearizable_histories_pass(name: str) -> None:
    res = check_ops(PASS[name])
    assert res.verdict == "ok", res.report()


@pytest.mark.parametrize("name", sorted(FAIL))
def test_anomalies_are_caught(name: str) -> None:
    res = check_ops(FAIL[name])
    assert res.verdict == "fail", name
    assert "NOT linearizable" in res.report()


def test_keys_are_independent() -> None:
    ops = [w(0, 0, 1, b"a", key=b"x"), r(1, 2, 3, None, key=b"y"), r(2, 2, 3, b"a", key=b"x")]
    assert check_history(ops).ok
    bad = [*ops, r(3, 4, 5, None, key=b"x")]
    res = check_history(bad)
    assert not res.ok
    assert [k.key for k in res.failures] == [b"x"]


def test_report_shows_a_small_window() -> None:
    """A stale read buried after 200 good ops: the window is just the ops around it."""
    ops = []
    t = 0.0
    for i in range(200):
        ops.append(w(2 * i, t, t + 1, b"v%d" % i, process=0))
        ops.append(r(2 * i + 1, t + 2, t + 3, b"v%d" % i, process=1))
        t += 4
    ops.append(r(1000, t, t + 1, b"v150", process=1))  # stale: v199 is current
    ops += [w(1001 + i, t + 2 + 4 * i, t + 3 + 4 * i, b"x%d" % i, process=0) for i in range(50)]
    res = check_ops(ops)
    assert res.verdict == "fail"
    assert len(res.window) <= 4, res.report()
    assert res.window[-1].id == 1000
    assert res.window_initial is ANY
    text = res.report()
    assert "b'v150'" in text and "#1000" in text


def test_many_concurrent_info_writes_stay_tractable() -> None:
    """Timeouts pile up during a partition; unobserved info writes must not explode."""
    ops = [w(i, 0.1 * i, None, b"lost-%d" % i) for i in range(60)]
    ops += [w(100, 0, 1, b"a"), r(101, 20, 21, b"a")]
    res = check_ops(ops, max_configs=10_000)
    assert res.verdict == "ok", res.report()


def test_budget_reports_unknown_not_pass() -> None:
    # Observed info writes (each read once) cannot be pruned; a tiny budget runs out.
    ops = [w(i, 0, None, b"v%d" % i) for i in range(14)]
    ops += [r(100 + i, 1 + i, 1.5 + i, b"v%d" % (13 - i)) for i in range(14)]
    res = check_ops(ops, max_configs=50)
    assert res.verdict == "unknown"
    assert not check_history(ops, max_configs=50).ok


def test_random_sequential_histories_pass() -> None:
    """A history produced by a real sequential register, with jittered overlaps."""
    rng = random.Random(7)
    for _ in range(20):
        state: bytes | None = None
        ops: list[Op] = []
        t = 0.0
        for i in range(150):
            lin = t + rng.random()  # the linearization point inside [start, end]
            start, end = lin - rng.random() * 3, lin + rng.random() * 3
            kind = rng.choice(["put", "get", "cas", "delete"])
            if kind == "put":
                state = b"%d" % i
                ops.append(w(i, start, end, state))
            elif kind == "delete":
                state = None
                ops.append(op(i, "delete", start, end))
            elif kind == "get":
                ops.append(r(i, start, end, state))
            else:
                exp = rng.choice([state, b"nope", None])
                ok = exp == state
                if ok:
                    state = b"c%d" % i
                ops.append(cas(i, start, end, exp, b"c%d" % i, ok))
            t += 1.0
        res = check_ops(ops)
        assert res.verdict == "ok", res.report()


def test_history_recorder() -> None:
    clock = iter(range(100)).__next__
    h = History(clock=lambda: float(clock()))
    a = h.invoke(1, K, "put", value=b"a")
    b = h.invoke(2, K, "get")
    h.ok(a)
    h.ok(b, b"a")
    c = h.invoke(1, K, "put", value=b"b")
    h.info(c, "OutcomeUnknown")
    d = h.invoke(2, K, "get")
    h.fail(d, "Timeout")
    assert (a.invoke, a.complete) == (1.0, 3.0)
    assert c.status == "info" and c.complete == INF
    with pytest.raises(ValueError, match="already completed"):
        h.ok(a)
    assert h.counts() == {"get:fail": 1, "get:ok": 1, "put:info": 1, "put:ok": 1}
    assert h.check().ok
