"""Client workloads that record every call into a `History`, and a random nemesis.

Recording rules (what the checker may assume):

* reads: ``ok`` with the value read; any error is ``fail`` (a read has no effect);
* writes (put/delete/cas/txn): ``ok`` with the result; `InvalidRequest` (a
  caller mistake, refused before anything happened) is ``fail``; every other
  error — OutcomeUnknown, Timeout, Unavailable, a lost connection — is
  ``info``: open-ended, the write may still take effect. (The SDK promises
  that `Timeout` means "surely not applied"; we do not rely on that promise.)
* txns act on a *group*: two keys ``{g<i>}:a`` and ``{g<i>}:b`` that share a
  partition through their hash tag; the op's key is the tag (``{g<i>}``),
  and the checker treats the pair as one register (`TxnSpec`). An ok txn's
  result is ``(succeeded, (values its gets read))``.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

from prkdb.client import InvalidRequest, PrkDbClient, ReadConsistency
from prkdb.client.txn import Compare, Delete, Get, Put, TxnOpLike, absent
from prkdb.errors import PrkdbError
from prkdb.testing.linearizability import History, TxnSpec, TxnStep
from tests.fault.netns import CLUSTER_ID, FaultUnavailable, NetnsCluster


@dataclass
class Stats:
    ops: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        return f"ops {dict(self.ops)} errors {dict(self.errors)}"


def connect(seeds: list[str], timeout: float = 2.0, attempt: float = 0.5, **kw: Any):
    """The workload's client; `kw`: more `PrkDbClient.connect` arguments (tls, credentials)."""
    return PrkDbClient.connect(seeds, cluster_id=CLUSTER_ID, timeout=timeout,
                               attempt_timeout=attempt, **kw)


async def rec_put(client: PrkDbClient, h: History, proc: int, key: bytes, value: bytes | None,
                  stats: Stats, timeout: float) -> bool:
    kind = "put" if value is not None else "delete"
    op = h.invoke(proc, key, kind, value=value)
    try:
        if value is None:
            await client.delete(key, timeout=timeout)
        else:
            await client.put(key, value, timeout=timeout)
    except InvalidRequest as e:
        h.fail(op, repr(e))
        raise
    except (PrkdbError, OSError) as e:
        h.info(op, repr(e))
        stats.errors[f"{kind}:{type(e).__name__}"] += 1
        return False
    h.ok(op)
    stats.ops[f"{kind}:ok"] += 1
    return True


async def rec_cas(client: PrkDbClient, h: History, proc: int, key: bytes,
                  expected: bytes | None, new: bytes, stats: Stats, timeout: float) -> bool | None:
    op = h.invoke(proc, key, "cas", value=new, expected=expected)
    try:
        r = await client.cas(key, expected_value=expected, new_value=new, timeout=timeout)
    except InvalidRequest as e:
        h.fail(op, repr(e))
        raise
    except (PrkdbError, OSError) as e:
        h.info(op, repr(e))
        stats.errors[f"cas:{type(e).__name__}"] += 1
        return None
    h.ok(op, r.succeeded)
    stats.ops[f"cas:{'ok' if r.succeeded else 'compare-failed'}"] += 1
    return r.succeeded


async def rec_get(client: PrkDbClient, h: History, proc: int, key: bytes,
                  consistency: ReadConsistency, stats: Stats,
                  timeout: float) -> tuple[bool, bytes | None]:
    op = h.invoke(proc, key, "get")
    name = consistency.name.lower()
    try:
        v = await client.get_with_consistency(key, consistency, timeout=timeout)
    except (PrkdbError, OSError) as e:
        h.fail(op, repr(e))
        stats.errors[f"get-{name}:{type(e).__name__}"] += 1
        return False, None
    h.ok(op, v)
    stats.ops[f"get-{name}:ok"] += 1
    return True, v


async def mixed_worker(client: PrkDbClient, h: History, proc: int, keys: list[bytes],
                       stop: trio.Event, stats: Stats, rng: random.Random,
                       timeout: float = 2.0) -> None:
    """Puts, deletes, CAS, LINEARIZABLE and FOLLOWER reads on `keys` until `stop`."""
    last_seen: dict[bytes, bytes | None] = {}
    n = 0
    while not stop.is_set():
        key = rng.choice(keys)
        n += 1
        value = b"p%d-%d" % (proc, n)  # unique: a stale or lost write is visible
        roll = rng.random()
        if roll < 0.35:
            await rec_put(client, h, proc, key, value, stats, timeout)
        elif roll < 0.40:
            await rec_put(client, h, proc, key, None, stats, timeout)
        elif roll < 0.55:
            await rec_cas(client, h, proc, key, last_seen.get(key), value, stats, timeout)
        else:
            level = ReadConsistency.LINEARIZABLE if roll < 0.8 else ReadConsistency.FOLLOWER
            ok, v = await rec_get(client, h, proc, key, level, stats, timeout)
            if ok:
                last_seen[key] = v
        await trio.sleep(rng.uniform(0, 0.01))


def txn_group(i: int) -> tuple[bytes, bytes, bytes]:
    """Group i: (its name in the history, key a, key b); one hash tag, so one partition."""
    tag = b"{g%d}" % i
    return tag, tag + b":a", tag + b":b"


_READ_PAIR: tuple[TxnStep, ...] = (("get", 0, None), ("get", 1, None))


async def rec_txn(client: PrkDbClient, h: History, proc: int, group: int, spec: TxnSpec,
                  stats: Stats, timeout: float) -> tuple[bool, tuple[bytes | None, ...]] | None:
    """Run `spec` on group `group` as one txn and record it; (succeeded, reads) or None (info).

    Position 0 of the spec is key a, 1 is key b; a compare ``(i, None)`` is
    "absent" (a VALUE compare on an absent key is always false), ``(i, v)``
    is ``value == v``.
    """
    tag, *keys = txn_group(group)
    compares = [absent(keys[i]) if v is None else Compare.value(keys[i]) == v
                for i, v in spec.compares]

    def ops(steps: tuple[TxnStep, ...]) -> list[TxnOpLike]:
        out: list[TxnOpLike] = []
        for kind, i, value in steps:
            if kind == "put":
                assert value is not None
                out.append(Put(keys[i], value))
            elif kind == "delete":
                out.append(Delete(keys[i]))
            else:
                out.append(Get(keys[i]))
        return out

    what = "txn-read" if not spec.writes else "txn"
    op = h.invoke(proc, tag, "txn", txn=spec)
    try:
        r = await client.txn(compares, ops(spec.success), ops(spec.failure), timeout=timeout)
    except InvalidRequest as e:
        h.fail(op, repr(e))
        raise
    except (PrkdbError, OSError) as e:
        h.info(op, repr(e))
        stats.errors[f"{what}:{type(e).__name__}"] += 1
        return None
    steps = spec.success if r.succeeded else spec.failure
    reads = tuple(res.value for (kind, _, _), res in zip(steps, r.results, strict=True)
                  if kind == "get")
    h.ok(op, (r.succeeded, reads))
    stats.ops[f"{what}:{'ok' if r.succeeded else 'compare-failed'}"] += 1
    return r.succeeded, reads


async def txn_worker(client: PrkDbClient, h: History, proc: int, groups: int,
                     stop: trio.Event, stats: Stats, rng: random.Random,
                     timeout: float = 2.0) -> None:
    """Two-key txns on `groups` groups (see the module doc) until `stop`.

    Mostly a "move": if key a still holds the value this worker last saw
    (absent at first), put a and b to new unique values, else leave them;
    either branch reads both back. Sometimes the move deletes both instead,
    sometimes the compare uses a value never written (so the failure branch
    runs for sure), and sometimes the txn only reads. The checker then sees
    whether each branch taken was the one the compare allowed and whether a
    pair was ever seen torn (a and b from different txns).
    """
    last_a: dict[int, bytes | None] = {}
    n = 0
    while not stop.is_set():
        g = rng.randrange(groups)
        n += 1
        roll = rng.random()
        if roll < 0.15:
            spec = TxnSpec(2, (), _READ_PAIR)
        else:
            expected = last_a.get(g) if roll < 0.9 else b"never-written"
            if roll < 0.8:
                writes: tuple[TxnStep, ...] = (("put", 0, b"a%d-%d" % (proc, n)),
                                               ("put", 1, b"b%d-%d" % (proc, n)))
            else:
                writes = (("delete", 0, None), ("delete", 1, None))
            spec = TxnSpec(2, ((0, expected),), (*writes, *_READ_PAIR), _READ_PAIR)
        out = await rec_txn(client, h, proc, g, spec, stats, timeout)
        if out is not None:
            last_a[g] = out[1][0]
        await trio.sleep(rng.uniform(0, 0.01))


async def rec_read_groups(client: PrkDbClient, h: History, proc: int, groups: int,
                          stats: Stats, timeout: float
                          ) -> dict[bytes, bytes | None]:
    """A read-only txn of every group (retried until it answers); key -> value."""
    out: dict[bytes, bytes | None] = {}
    for g in range(groups):
        _, a, b = txn_group(g)
        for _ in range(10):
            got = await rec_txn(client, h, proc, g, TxnSpec(2, (), _READ_PAIR), stats, timeout)
            if got is not None:
                out[a], out[b] = got[1]
                break
        else:
            raise AssertionError(f"final read of group {g} failed: {stats.summary()}")
    return out


@dataclass
class NemesisLog:
    faults: Counter = field(default_factory=Counter)
    unavailable: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


def current_leaders(c: NetnsCluster) -> set[int]:
    leaders: set[int] = set()
    for v in c.views().values():
        for p in v.partitions:
            if p.leader == v.node_id:
                leaders.add(v.node_id)
    return leaders


FAULTS = ["partition", "isolate-leader", "bridge", "kill", "pause", "split-all", "pause-majority",
          "wipe"]


async def random_nemesis(c: NetnsCluster, stop: trio.Event, rng: random.Random,
                         log: NemesisLog, t0: float) -> None:
    """Inject one fault at a time (hold 0.5-2.5 s, then heal 0.5-1.5 s) until `stop`.

    Never more than a minority is killed at once (so acknowledged data always
    survives on a majority); "split-all" and "pause-majority" stop progress
    for a while, which turns in-flight writes into info ops. "wipe" kills one
    node and loses its disk; it comes back with `--rebuild` (at most one
    rebuild at a time: a node still rebuilding is never wiped again, nor
    another one).
    """
    minority = (c.n - 1) // 2
    try:
        c.netem(1, "delay 30ms 10ms loss 2%")
    except FaultUnavailable as e:
        log.unavailable.append(str(e))
    else:
        log.faults["netem"] += 1
    while not stop.is_set():
        kind = rng.choice(FAULTS)
        nodes = list(c.ids)
        rng.shuffle(nodes)
        down: list[int] = []
        if kind == "partition":
            k = rng.randint(1, minority)
            await trio.to_thread.run_sync(c.partition, nodes[:k])
        elif kind == "isolate-leader":
            leaders = await trio.to_thread.run_sync(current_leaders, c)
            target = rng.choice(sorted(leaders)) if leaders else nodes[0]
            await trio.to_thread.run_sync(c.isolate, target)
        elif kind == "bridge":
            half = (c.n - 1) // 2
            await trio.to_thread.run_sync(
                c.bridge_partition, nodes[:half], nodes[half + 1:], nodes[half]
            )
        elif kind == "kill":
            down = nodes[: rng.randint(1, minority)]
            for i in down:
                c.kill(i)
        elif kind == "wipe":
            if c.rebuilding():
                await trio.sleep(0.1)
                continue  # one lost disk at a time
            down = nodes[:1]
            c.wipe(down[0])
        elif kind == "split-all":  # no majority anywhere: writes must stall, not succeed
            singles = [[i] for i in nodes]
            await trio.to_thread.run_sync(lambda: c.partition(*singles))  # noqa: B023
        elif kind == "pause-majority":
            for i in nodes[: minority + 1]:
                c.pause(i)
        else:
            down = nodes[: rng.randint(1, minority)]
            for i in down:
                c.pause(i)
        log.faults[kind] += 1
        log.events.append(f"{time.monotonic() - t0:6.2f}s {c.faults[-1]}")
        await trio.sleep(rng.uniform(0.5, 2.5))
        await trio.to_thread.run_sync(c.heal)
        if kind == "kill":
            for i in down:
                c.start(i)
        elif kind == "wipe":
            c.start(down[0], ["--rebuild"])
        log.events.append(f"{time.monotonic() - t0:6.2f}s heal")
        await trio.sleep(rng.uniform(0.5, 1.5))
