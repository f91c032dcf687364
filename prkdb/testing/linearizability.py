"""A history recorder and a linearizability checker for a key-value register.

Theory of operation
-------------------
A *history* is what clients saw: each operation was invoked at some time and
then either completed with a result (``ok``), definitely did not happen
(``fail``), or ended without a definite answer (``info``: a write that timed
out or raised OutcomeUnknown; it may take effect at any time after its
invocation, or never). Times are ``time.monotonic()`` seconds taken by the
client, so an op's real interval lies inside ``[invoke, complete]``.

A history is *linearizable* if every ``ok`` op (and any subset of the
``info`` ops) can be put in one sequential order that (a) respects real time:
if A completed before B was invoked, A comes first, and (b) is a legal run of
the model: here one register per key, ``put``/``delete`` write a value
(None = absent), ``get`` reads it, ``cas(expected, new)`` writes ``new`` iff
the value equals ``expected`` and reports whether it did.

Transactions (``txn``) act on a *group* of keys that share a partition (a
hash tag): the op's key names the group, and the register's value is then
the tuple of the group's values (`TxnSpec`: compares on values, then one of
two lists of put / delete / get). An ``ok`` txn's result is ``(succeeded,
values read)``; the model checks both that the branch taken was the one the
compares allow and that every read saw the group's value at that point, so
a txn applied half-way, twice, or out of order is caught like a lost write.

Keys are independent registers, and linearizability is compositional
(Herlihy & Wing), so each key's sub-history is checked on its own.

The search is the Wing & Gong algorithm with Lowe's memoization, as in
Knossos and Porcupine: depth-first, each step linearizes one *minimal* op (one
invoked no later than the earliest completion among the ops not yet
linearized), and a configuration ``(set of linearized ops, register value)``
already explored is never explored again. Ops that reached ``info`` have no
completion: they never constrain others and need not be linearized at all.
An ``info`` cas branches (it may have found the expected value or not).

On failure the checker shrinks the anomaly to a small window: the shortest
prefix of the key's history (cut at an op's completion) that is already not
linearizable, then the latest start from which the window, with an *unknown*
initial value, is still not linearizable. Both cuts are sound: a prefix of a
linearizable history is linearizable (pending ops become info), and dropping
ops that all precede every kept op in real time only hides a value the
unknown initial state already allows. `CheckResult.report` prints it.

Budget: the search is exponential in the worst case (many concurrent
``info`` ops). ``max_configs`` caps the explored configurations per key; a
key that hits it is reported as ``unknown`` (not a pass).

This module is for tests and scripts; it has no dependency on trio or the
SDK, so it can check any recorded history.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "ANY",
    "CheckResult",
    "History",
    "KeyResult",
    "Op",
    "TxnSpec",
    "check_history",
    "check_ops",
]

Kind = Literal["put", "delete", "get", "cas", "txn"]
Status = Literal["ok", "fail", "info"]

INF: Final = float("inf")


class _Any:
    """The register value is unknown (the start of a shrunk window)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()

TxnStep = tuple[Literal["put", "delete", "get"], int, bytes | None]


@dataclass(frozen=True, slots=True)
class TxnSpec:
    """A transaction on a group of `width` keys, named by their position 0..width-1.

    ``compares``: ``(i, value)`` pairs that must all hold (value None = the
    key is absent); then ``success`` runs, else ``failure``. Steps are
    ``("put", i, value)``, ``("delete", i, None)`` and ``("get", i, None)``;
    an ok txn's result is ``(succeeded, (value read by each get, in order))``.
    """

    width: int
    compares: tuple[tuple[int, bytes | None], ...]
    success: tuple[TxnStep, ...]
    failure: tuple[TxnStep, ...] = ()

    @property
    def writes(self) -> bool:
        return any(kind != "get" for kind, _, _ in (*self.success, *self.failure))


@dataclass(slots=True)
class Op:
    """One client operation on one key.

    ``value``: what put/cas writes (None for delete / cas-to-delete).
    ``expected``: what cas compares against (None = must be absent).
    ``result``: get -> the value read; cas -> True/False (succeeded); txn ->
    ``(succeeded, values read)``; else None.
    ``complete`` is ``INF`` while pending and for ``info`` ops.
    ``txn``: what a txn does (its ``key`` names the group; see `TxnSpec`).
    """

    id: int
    process: int
    key: bytes
    kind: Kind
    invoke: float
    value: bytes | None = None
    expected: bytes | None = None
    complete: float = INF
    status: Status | None = None  # None = still pending
    result: Any = None
    error: str = ""
    node: int | None = None  # which node answered, when the caller knows
    txn: TxnSpec | None = None

    @property
    def is_write(self) -> bool:
        return self.kind != "get"

    def describe(self, t0: float = 0.0) -> str:
        end = "   ...  " if self.complete == INF else f"{self.complete - t0:8.4f}"
        match self.kind:
            case "put":
                what = f"put {self.value!r}"
            case "delete":
                what = "delete"
            case "get":
                what = f"get -> {self.result!r}" if self.status == "ok" else "get"
            case "txn":
                what = f"txn {self.txn}"
                if self.status == "ok":
                    what += f" -> {self.result!r}"
            case _:
                what = f"cas {self.expected!r} -> {self.value!r}"
                if self.status == "ok":
                    what += " ok" if self.result else " FAILED-COMPARE"
        status = self.status or "pending"
        err = f"  ({self.error[:80]})" if self.error and status != "ok" else ""
        return (
            f"[{self.invoke - t0:8.4f} .. {end}] p{self.process:<3} #{self.id:<5} "
            f"{status:<4} {what}{err}"
        )


class History:
    """Records invoke / ok / fail / info events; thread-safe, usable from trio.

    ``op = h.invoke(process, key, "put", value=b"v")`` then exactly one of
    ``h.ok(op, result)``, ``h.fail(op, error)`` or ``h.info(op, error)``.
    Ops never completed count as ``info``.
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.ops: list[Op] = []
        self.t0 = clock()

    def invoke(
        self,
        process: int,
        key: bytes,
        kind: Kind,
        *,
        value: bytes | None = None,
        expected: bytes | None = None,
        node: int | None = None,
        txn: TxnSpec | None = None,
    ) -> Op:
        if (kind == "txn") != (txn is not None):
            raise ValueError("a txn op needs a TxnSpec, and only a txn op takes one")
        with self._lock:
            op = Op(next(self._ids), process, key, kind, self._clock(), value, expected, node=node,
                    txn=txn)
            self.ops.append(op)
        return op

    def ok(self, op: Op, result: Any = None) -> None:
        self._finish(op, "ok", result, "")

    def fail(self, op: Op, error: object = "") -> None:
        """The op surely did not take effect (reads: any error)."""
        self._finish(op, "fail", None, str(error))

    def info(self, op: Op, error: object = "") -> None:
        """The op may or may not take effect, at any time from now on."""
        self._finish(op, "info", None, str(error))

    def _finish(self, op: Op, status: Status, result: Any, error: str) -> None:
        if op.status is not None:
            raise ValueError(f"op #{op.id} already completed as {op.status}")
        now = self._clock()
        op.status, op.result, op.error = status, result, error
        if status == "ok":
            op.complete = now

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            k = f"{op.kind}:{op.status or 'pending'}"
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))

    def check(self, **kw: Any) -> CheckResult:
        return check_history(self.ops, t0=self.t0, **kw)


# --- the model ---------------------------------------------------------------------


def _next_states(state: Any, op: Op) -> tuple[Any, ...]:
    """Register values after linearizing `op` from `state` (empty: illegal here)."""
    match op.kind:
        case "put" | "delete":
            return (op.value,)
        case "get":
            if state is ANY or state == op.result:
                return (op.result,)
            return ()
        case "cas":
            if op.status != "ok":  # outcome unknown: either branch
                if state is ANY:
                    return (op.value, ANY)
                return (op.value,) if state == op.expected else (state,)
            if op.result:
                return (op.value,) if state is ANY or state == op.expected else ()
            if state is ANY:
                return (ANY,)  # an approximation: "anything but expected"
            return (state,) if state != op.expected else ()
        case "txn":
            assert op.txn is not None
            return _txn_states(state, op, op.txn)
    raise ValueError(f"unknown op kind {op.kind!r}")


def _components(state: Any, width: int) -> tuple[Any, ...]:
    if state is None:
        return (None,) * width
    if state is ANY:
        return (ANY,) * width
    assert isinstance(state, tuple) and len(state) == width, f"not a group of {width}: {state!r}"
    return state


def _branches(values: tuple[Any, ...], spec: TxnSpec) -> list[tuple[bool, tuple[Any, ...]]]:
    """Which branch the compares allow from `values`, with the unknowns that choice pins."""
    known_false = any(values[i] is not ANY and values[i] != want for i, want in spec.compares)
    unknown = [(i, want) for i, want in spec.compares if values[i] is ANY]
    out: list[tuple[bool, tuple[Any, ...]]] = []
    if not known_false:
        pinned = list(values)
        for i, want in unknown:
            pinned[i] = want  # success means each unknown held its expected value
        out.append((True, tuple(pinned)))
    if known_false or unknown:
        out.append((False, values))  # an approximation: "some compare failed"
    return out


def _txn_states(state: Any, op: Op, spec: TxnSpec) -> tuple[Any, ...]:
    values = _components(state, spec.width)
    ok = op.status == "ok"
    out = []
    for succeeded, start in _branches(values, spec):
        if ok and succeeded != op.result[0]:
            continue
        reads = iter(op.result[1]) if ok else iter(())
        after = list(start)
        legal = True
        for kind, i, value in spec.success if succeeded else spec.failure:
            if kind == "put":
                after[i] = value
            elif kind == "delete":
                after[i] = None
            elif ok:
                got = next(reads, ANY)
                if got is ANY or (after[i] is not ANY and after[i] != got):
                    legal = False  # read the wrong value (or fewer reads than gets)
                    break
                after[i] = got
        if legal and ok and next(reads, ANY) is not ANY:
            legal = False  # more values read than the branch has gets
        if legal:
            out.append(tuple(after))
    return tuple(out)


# --- the search ----------------------------------------------------------------------


class _Budget(Exception):
    pass


@dataclass(slots=True)
class _Outcome:
    ok: bool
    configs: int
    # Deepest partial linearization seen (for reports): op ids in order, final state.
    best: list[int] = field(default_factory=list)
    best_state: Any = None


def _prepare(ops: Iterable[Op]) -> list[Op]:
    """The ops that matter, sorted by invocation; pending ops become info."""
    kept: list[Op] = []
    observed: set[bytes | None] = set()
    has_failed_cas = False
    for op in ops:
        status = op.status or "info"
        if status == "fail":
            continue
        if op.kind == "get" and status != "ok":
            continue  # a read without an answer has no effect
        if op.kind == "txn" and status != "ok" and op.txn is not None and not op.txn.writes:
            continue  # a read-only txn without an answer has no effect either
        kept.append(op)
        if op.kind == "get" and status == "ok":
            observed.add(op.result)
        if op.kind == "cas":
            observed.add(op.expected)
            if status == "ok" and not op.result:
                has_failed_cas = True
    if not has_failed_cas:
        # An info write of a value nobody ever observed can be linearized
        # last (it has no completion), where it constrains nothing: drop it.
        kept = [
            op
            for op in kept
            if not (
                op.kind in ("put", "delete")
                and (op.status or "info") != "ok"
                and op.value not in observed
            )
        ]
    kept.sort(key=lambda o: (o.invoke, o.id))
    return kept


def _search(ops: list[Op], initial: Any, max_configs: int) -> _Outcome:
    """Wing–Gong/Lowe DFS over `ops` (sorted by invoke)."""
    n = len(ops)
    must = 0  # bitset of the ops that must be linearized (ok ops)
    for i, op in enumerate(ops):
        if op.status == "ok":
            must |= 1 << i
    seen: set[tuple[int, Any]] = set()
    best: list[int] = []
    best_state: Any = initial
    configs = 0

    info_idx = [i for i in range(n) if not must >> i & 1]
    info_mask = sum(1 << i for i in info_idx)

    def candidates(done: int) -> Iterator[int]:
        # Every ok op not yet linearized is at or after `first` (ops are
        # sorted by invoke, and complete >= invoke): scan from there while
        # an op could still precede the earliest pending completion.
        covered = done | info_mask
        first = (~covered & (covered + 1)).bit_length() - 1
        horizon = INF
        window = []
        for i in range(first, n):
            op = ops[i]
            if op.invoke > horizon:
                break
            if not done >> i & 1:
                if op.complete < horizon:
                    horizon = op.complete
                if must >> i & 1:
                    window.append(i)
        # Info ops need not be linearized and never bound the horizon.
        for i in info_idx:
            if ops[i].invoke > horizon:
                break
            if not done >> i & 1:
                window.append(i)
        window.sort()
        return iter(window)

    # Explicit stack (no recursion limit): (done, state, path, iterator of moves).
    def moves(done: int, state: Any) -> Iterator[tuple[int, Any]]:
        for i in candidates(done):
            for nxt in _next_states(state, ops[i]):
                yield i, nxt

    stack: list[tuple[int, Any, Iterator[tuple[int, Any]]]] = [
        (0, initial, moves(0, initial))
    ]
    path: list[int] = []
    seen.add((0, _key(initial)))
    while stack:
        done, state, it = stack[-1]
        if done & must == must:
            return _Outcome(True, configs, list(path), state)
        step = next(it, None)
        if step is None:
            stack.pop()
            if path:
                path.pop()
            continue
        i, nxt = step
        ndone = done | 1 << i
        key = (ndone, _key(nxt))
        if key in seen:
            continue
        seen.add(key)
        configs += 1
        if configs > max_configs:
            raise _Budget
        path.append(i)
        if len(path) > len(best):
            best, best_state = list(path), nxt
        stack.append((ndone, nxt, moves(ndone, nxt)))
    return _Outcome(False, configs, [ops[i].id for i in best], best_state)


def _key(state: Any) -> Any:
    return ("ANY",) if state is ANY else state


# --- results ---------------------------------------------------------------------------


@dataclass(slots=True)
class KeyResult:
    key: bytes
    verdict: Literal["ok", "fail", "unknown"]
    ops: int
    configs: int
    window: list[Op] = field(default_factory=list)
    window_initial: Any = None
    linearized: list[Op] = field(default_factory=list)  # deepest partial order found
    state_after: Any = None

    def report(self, t0: float = 0.0) -> str:
        if self.verdict == "ok":
            return f"key {self.key!r}: linearizable ({self.ops} ops)"
        if self.verdict == "unknown":
            return (
                f"key {self.key!r}: UNKNOWN, search budget spent after {self.configs} "
                f"configurations ({self.ops} ops)"
            )
        lines = [
            f"key {self.key!r}: NOT linearizable ({self.ops} ops). Smallest failing window "
            f"({len(self.window)} ops, initial value "
            f"{'unknown' if self.window_initial is ANY else repr(self.window_initial)}):"
        ]
        lines += ["    " + op.describe(t0) for op in self.window]
        tail = self.linearized[-8:]
        lines.append(
            f"  longest legal order found in the window ends ({len(self.linearized)} ops, "
            f"value then {self.state_after!r}):"
        )
        lines += ["    " + op.describe(t0) for op in tail]
        return "\n".join(lines)


@dataclass(slots=True)
class CheckResult:
    keys: dict[bytes, KeyResult]
    t0: float = 0.0

    @property
    def ok(self) -> bool:
        return all(k.verdict == "ok" for k in self.keys.values())

    @property
    def failures(self) -> list[KeyResult]:
        return [k for k in self.keys.values() if k.verdict != "ok"]

    @property
    def configs(self) -> int:
        return sum(k.configs for k in self.keys.values())

    def report(self) -> str:
        if self.ok:
            n = sum(k.ops for k in self.keys.values())
            return f"linearizable: {len(self.keys)} keys, {n} ops, {self.configs} configurations"
        return "\n".join(k.report(self.t0) for k in self.failures)


def check_ops(
    ops: Iterable[Op], *, initial: Any = None, max_configs: int = 500_000, shrink: bool = True
) -> KeyResult:
    """Check one key's ops (all must share the key)."""
    prepared = _prepare(ops)
    key = prepared[0].key if prepared else b""
    try:
        out = _search(prepared, initial, max_configs)
    except _Budget:
        return KeyResult(key, "unknown", len(prepared), max_configs)
    if out.ok:
        return KeyResult(key, "ok", len(prepared), out.configs)
    window, w_initial = (prepared, initial)
    if shrink:
        window, w_initial = _shrink(prepared, initial, max_configs)
    try:
        w_out = _search(window, w_initial, max_configs)
    except _Budget:
        w_out = out
    by_id = {op.id: op for op in window}
    return KeyResult(
        key,
        "fail",
        len(prepared),
        out.configs,
        window=window,
        window_initial=w_initial,
        linearized=[by_id[i] for i in w_out.best] if not w_out.ok else [],
        state_after=w_out.best_state,
    )


def _fails(ops: list[Op], initial: Any, max_configs: int) -> bool:
    try:
        return not _search(ops, initial, max_configs).ok
    except _Budget:
        return False  # inconclusive: do not shrink past it


def _prefix(ops: list[Op], cut: float) -> list[Op]:
    """The history as it looked at time `cut`: later completions become pending (info)."""
    out = []
    for op in ops:
        if op.invoke > cut:
            continue
        if op.complete > cut and op.status == "ok":
            if op.kind == "get" or (op.txn is not None and not op.txn.writes):
                continue
            op = Op(op.id, op.process, op.key, op.kind, op.invoke, op.value, op.expected,
                    INF, "info", None, "pending at the cut", op.node, op.txn)
        out.append(op)
    return out


def _suffix(ops: list[Op], start: float) -> list[Op]:
    """Ops not finished before `start`, closed so every dropped op precedes every kept one."""
    cut = start
    while True:
        kept = [op for op in ops if op.complete >= cut]
        if not kept:
            return kept
        # Info ops are optional and unbounded: one linearized before a dropped
        # op is simply left out of the window's order, so only ok ops pull back.
        first = min((op.invoke for op in kept if op.complete != INF), default=cut)
        if first >= cut:
            return kept
        cut = first


def _shrink(ops: list[Op], initial: Any, max_configs: int) -> tuple[list[Op], Any]:
    ends = sorted({op.complete for op in ops if op.complete != INF})
    # Shortest failing prefix (binary search over completion times; monotone).
    lo, hi = 0, len(ends) - 1
    if hi < 0 or not _fails(_prefix(ops, ends[hi]), initial, max_configs):
        window = ops
    else:
        while lo < hi:
            mid = (lo + hi) // 2
            if _fails(_prefix(ops, ends[mid]), initial, max_configs):
                hi = mid
            else:
                lo = mid + 1
        window = _prefix(ops, ends[lo])
    # Latest start (unknown initial value) that still fails.
    starts = sorted({op.invoke for op in window})
    best, best_initial = window, initial
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = _suffix(window, starts[mid])
        if candidate and _fails(candidate, ANY, max_configs):
            lo = mid
        else:
            hi = mid - 1
    if lo > 0:
        candidate = _suffix(window, starts[lo])
        if candidate and _fails(candidate, ANY, max_configs):
            best, best_initial = candidate, ANY
    return best, best_initial


def check_history(
    ops: Iterable[Op], *, initial: Any = None, max_configs: int = 500_000, t0: float = 0.0
) -> CheckResult:
    """Check every key of a history independently (registers start absent)."""
    by_key: dict[bytes, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    results = {
        k: check_ops(v, initial=initial, max_configs=max_configs) for k, v in sorted(by_key.items())
    }
    return CheckResult(results, t0)
