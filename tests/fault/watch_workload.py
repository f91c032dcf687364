"""Watchers, recorded writers and the checker for the watch fault test (issue 17).

Writers put (unique values) and delete keys under a few prefixes and record
every call as a `Write`: ``ok`` with the partition revision the server gave
it (and ``prev_version``: a delete of an absent key changes nothing, so it
emits no event), or ``info`` (the outcome is unknown: it may have applied).
Watchers record every event they are handed (`WatcherLog`). After the faults
the test writes *end markers* (one key per watched prefix and partition);
the revision of the last acknowledged write of a watcher's range in a
partition is that watcher's *target* there. It then writes *kick markers*,
so that a watcher blocked on its next event always gets one more and sees
that it reached its targets.

`check_watchers` then requires, per watcher and partition, up to the target:

* events in strictly increasing revision order (writes here are single-key,
  one event per revision), none at or below the watch's start, every key in
  the range and in that partition;
* every acknowledged write of the range at its revision, with its value
  (a delete of an absent key: nothing at that revision);
* every event is a write some writer issued (no phantom), and no value twice;
* the same events as every other watcher had in the overlap of their ranges
  (the union of what all watchers received is the truth an info write's
  event is checked against: one watcher missing it is a gap);
* the state replayed from the watch's initial state (empty, or the scan of a
  list-then-watch) equals the final linearizable scan of the range, and each
  key's last event is its ``mod_revision``.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from prkdb.client import (
    AsyncClient,
    EventKind,
    PrkDbClient,
    SyncClient,
    WatchCursor,
    WatchEvent,
)
from prkdb.errors import PrkdbError
from prkdb.partitioning import hash_slice, partition_for
from tests.fault.netns import CLUSTER_ID, NetnsCluster
from tests.fault.workload import Stats


@dataclass(frozen=True, slots=True)
class Write:
    """One put (value) or delete (value None), as a writer saw it end."""

    key: bytes
    value: bytes | None
    partition: int
    status: str  # "ok" | "info"
    revision: int = 0  # ok only
    prev_version: int = 0  # ok only: 0 = the key was absent before


def covered(prefix: bytes, partitions: int) -> list[int]:
    """The partitions a watch of `prefix` has streams on (a hash-tagged prefix: one)."""
    if hash_slice(prefix) != prefix:
        return [partition_for(prefix, partitions)]
    return list(range(partitions))


def marker_keys(prefix: bytes, partitions: int, what: bytes) -> list[bytes]:
    """One key under `prefix` per partition it covers, named `what`."""
    out: dict[int, bytes] = {}
    want = covered(prefix, partitions)
    j = 0
    while len(out) < len(want):
        key = prefix + b"~%s-%d" % (what, j)
        out.setdefault(partition_for(key, partitions), key)
        j += 1
    return [out[p] for p in want]


async def write_one(client: PrkDbClient, writes: list[Write], key: bytes, value: bytes | None,
                    partitions: int, stats: Stats, timeout: float) -> Write:
    p = partition_for(key, partitions)
    kind = "put" if value is not None else "delete"
    try:
        if value is None:
            r = await client.delete(key, timeout=timeout)
        else:
            r = await client.put(key, value, timeout=timeout)
    except (PrkdbError, OSError) as e:
        w = Write(key, value, p, "info")
        stats.errors[f"{kind}:{type(e).__name__}"] += 1
    else:
        w = Write(key, value, p, "ok", r.revision, r.prev_version)
        stats.ops[f"{kind}:ok"] += 1
    writes.append(w)
    return w


async def writer(client: PrkDbClient, writes: list[Write], proc: int, keys: list[bytes],
                 partitions: int, stop: trio.Event, stats: Stats, rng: random.Random) -> None:
    """Puts (80%, unique values) and deletes on `keys` until `stop`."""
    n = 0
    while not stop.is_set():
        n += 1
        key = rng.choice(keys)
        value = b"w%d-%d" % (proc, n) if rng.random() < 0.8 else None
        await write_one(client, writes, key, value, partitions, stats, 1.0)
        await trio.sleep(rng.uniform(0, 0.01))


async def write_until_ok(client: PrkDbClient, writes: list[Write], key: bytes, tag: bytes,
                         partitions: int, stats: Stats) -> Write:
    for attempt in range(20):
        value = b"%s:%s-%d" % (tag, key, attempt)  # unique, as every value written
        w = await write_one(client, writes, key, value, partitions, stats, 3.0)
        if w.status == "ok":
            return w
    raise AssertionError(f"marker {key!r} never acknowledged: {stats.summary()}")


@dataclass
class WatcherLog:
    """What one watcher was asked to do and what it received."""

    name: str
    prefix: bytes
    front: str  # "trio" | "asyncio" | "sync"
    style: str  # "from-0" | "late-from-0" | "list-then-watch" | "resumer"
    partitions: list[int]
    start: dict[int, int] = field(default_factory=dict)  # partition -> events expected after
    initial: dict[bytes, bytes] = field(default_factory=dict)  # the state at `start`
    events: list[WatchEvent] = field(default_factory=list)
    max_rev: dict[int, int] = field(default_factory=dict)
    targets: dict[int, int] | None = None  # set by the test after the end markers
    opened: int = 0  # watch objects opened (resumes + 1)
    streams: int = 0  # partition streams those watches opened (reopens after faults too)
    error: str | None = None
    watch: Any = None  # the open watch (trio), for the attached-node nemesis

    def take(self, ev: WatchEvent) -> None:
        self.events.append(ev)
        if ev.revision > self.max_rev.get(ev.partition, 0):
            self.max_rev[ev.partition] = ev.revision

    def done(self) -> bool:
        t = self.targets
        return t is not None and all(self.max_rev.get(p, 0) >= r for p, r in t.items())


def connect(seeds: list[str]) -> Any:
    return PrkDbClient.connect(seeds, cluster_id=CLUSTER_ID, timeout=2.0, attempt_timeout=0.5)


async def prepare(client: PrkDbClient, w: WatcherLog) -> WatchCursor:
    """The cursor `w` starts from, and `w.start`/`w.initial`."""
    if w.style == "list-then-watch":
        cursor = await client.watch_cursor(w.prefix, timeout=10.0)
        items = await client.scan(w.prefix, timeout=10.0)
        w.initial = {kv.key: kv.value for kv in items}
        w.start = {p: cursor[p] for p in w.partitions}
    else:
        w.start = {p: 0 for p in w.partitions}
    return WatchCursor(w.start)


async def trio_watcher(client: PrkDbClient, w: WatcherLog, rng: random.Random,
                       delay: float) -> None:
    """Watch until `w.done()`; a "resumer" reopens from its cursor's text now and then."""
    await trio.sleep(delay)
    for _ in range(10):
        try:
            cursor: WatchCursor | str = await prepare(client, w)
            break
        except PrkdbError:
            await trio.sleep(0.5)
    else:
        raise AssertionError(f"{w.name}: could not start (cursor or scan)")
    while True:
        budget = rng.randint(20, 200) if w.style == "resumer" else -1
        w.opened += 1
        async with client.watch(w.prefix, cursor=cursor) as watch:
            w.watch = watch
            try:
                async for ev in watch:
                    w.take(ev)
                    if w.done():
                        return
                    budget -= 1
                    if budget == 0:
                        break
            finally:
                w.streams += streams_opened(watch)
            cursor = watch.cursor.encode()  # resume from the text, as a process would
            w.watch = None


def sync_watcher(seeds: list[str], w: WatcherLog) -> None:
    with SyncClient(seeds, cluster_id=CLUSTER_ID, timeout=2.0, attempt_timeout=0.5) as db:
        w.start = {p: 0 for p in w.partitions}
        w.opened += 1
        with db.watch(w.prefix, cursor=WatchCursor(w.start)) as watch:
            for ev in watch:
                w.take(ev)
                if w.done():
                    w.streams += streams_opened(watch)
                    return


def asyncio_watcher(seeds: list[str], w: WatcherLog) -> None:
    async def run() -> None:
        async with AsyncClient.connect(seeds, cluster_id=CLUSTER_ID, timeout=2.0,
                                       attempt_timeout=0.5) as db:
            w.start = {p: 0 for p in w.partitions}
            w.opened += 1
            async with db.watch(w.prefix, cursor=WatchCursor(w.start)) as watch:
                async for ev in watch:
                    w.take(ev)
                    if w.done():
                        w.streams += streams_opened(watch)
                        return

    asyncio.run(run())


def streams_opened(watch: Any) -> int:
    """Streams a watch opened so far (its plan counts them; no public accessor)."""
    driver = getattr(watch, "_driver", None)
    return 0 if driver is None else int(driver.plan.opened)


def attached_nodes(c: NetnsCluster, watchers: Iterable[WatcherLog]) -> list[int]:
    """The nodes the open streams of `watchers` are attached to.

    The SDK has no public accessor for this (a watch's plan knows each
    partition feed's address): we read it through the watch's driver.
    """
    by_address = dict(zip(c.seeds, c.ids, strict=True))
    out = []
    for w in watchers:
        driver = getattr(w.watch, "_driver", None)
        if driver is None:
            continue
        for feed in driver.plan.feeds.values():
            if feed.handle is not None and feed.address in by_address:
                out.append(by_address[feed.address])
    return out


async def attached_nemesis(c: NetnsCluster, watchers: list[WatcherLog], stop: trio.Event,
                           rng: random.Random, events: list[str],
                           clock: Callable[[], float]) -> None:
    """kill -9 the node a watcher's stream is on (or a partition leader), restart it.

    One node down at a time, and only while every node runs and none is
    rebuilding (so a majority always holds every acknowledged write).
    """
    turn = 0
    while not stop.is_set():
        await trio.sleep(rng.uniform(0.3, 1.0))
        if any(not c.alive(i) for i in c.ids) or c.paused or c.rebuilding():
            continue
        if turn % 3 != 1:  # two attached nodes, then a leader
            nodes = attached_nodes(c, rng.sample(watchers, min(3, len(watchers))))
            what = "attached"
        else:
            leaders = await trio.to_thread.run_sync(c.leaders)
            nodes = [leader for leader, _ in leaders.values()]
            what = "leader"
        if not nodes:
            continue
        turn += 1
        victim = rng.choice(nodes)
        c.kill(victim)
        events.append(f"{clock():6.2f}s kill {victim} ({what})")
        await trio.sleep(rng.uniform(0.8, 2.0))
        c.start(victim)
        events.append(f"{clock():6.2f}s start {victim}")
        await trio.to_thread.run_sync(c.wait_ready)


# --- the checker -------------------------------------------------------------------------

Change = tuple[EventKind, bytes, bytes | None]  # kind, key, value


def _change(ev: WatchEvent) -> Change:
    return ev.kind, ev.key, ev.value


def check_watchers(watchers: list[WatcherLog], writes: list[Write],
                   final: dict[bytes, dict[bytes, tuple[bytes, int]]],
                   ignore: set[bytes], partitions: int) -> dict[str, list[str]]:
    """watcher name -> its mismatches (module doc); `final`: prefix -> key -> (value, mod_rev).

    `ignore`: keys written after the targets (the kick markers).
    """
    problems: dict[str, list[str]] = defaultdict(list)
    acked: dict[int, dict[int, Write]] = defaultdict(dict)  # partition -> revision -> write
    issued_puts: dict[bytes, bytes] = {}  # value -> key
    issued_deletes: set[bytes] = set()
    for wr in writes:
        if wr.value is not None:
            issued_puts[wr.value] = wr.key
        else:
            issued_deletes.add(wr.key)
        if wr.status == "ok":
            acked[wr.partition][wr.revision] = wr
    # The truth: every event any watcher received, by partition and revision.
    truth: dict[int, dict[int, Change]] = defaultdict(dict)
    seen_from: dict[tuple[int, int], str] = {}
    for w in watchers:
        for ev in w.events:
            old = truth[ev.partition].setdefault(ev.revision, _change(ev))
            if old != _change(ev):
                problems[w.name].append(
                    f"partition {ev.partition} revision {ev.revision}: {_change(ev)} but "
                    f"{seen_from[ev.partition, ev.revision]} got {old}")
            seen_from.setdefault((ev.partition, ev.revision), w.name)
    for p, revs in truth.items():
        values: dict[bytes, int] = {}
        for rev, (kind, key, value) in sorted(revs.items()):
            if kind == EventKind.PUT:
                assert value is not None
                if issued_puts.get(value) != key:
                    problems["(all)"].append(f"partition {p} revision {rev}: put {key!r}="
                                             f"{value!r} that no writer issued")
                if value in values:
                    problems["(all)"].append(f"partition {p}: {value!r} applied twice "
                                             f"(revisions {values[value]} and {rev})")
                values[value] = rev
            elif key not in issued_deletes:
                problems["(all)"].append(f"partition {p} revision {rev}: {kind.name} {key!r} "
                                         "that no writer issued")
    for w in watchers:
        out = problems[w.name]
        if w.error is not None:
            out.append(f"ended with {w.error}")
        if w.targets is None or not w.done():
            out.append(f"did not reach its targets {w.targets}: got up to {w.max_rev}")
        targets = w.targets or {}
        state = dict(w.initial)
        last_rev: dict[bytes, int] = {}
        for p in w.partitions:
            evs = [ev for ev in w.events if ev.partition == p]
            after, target = w.start.get(p, 0), targets.get(p, 0)
            previous = after
            got: dict[int, Change] = {}
            for ev in evs:
                if ev.revision <= previous:
                    out.append(f"partition {p}: revision {ev.revision} after {previous} "
                               f"({'duplicate' if ev.revision == previous else 'goes back'})")
                previous = max(previous, ev.revision)
                if not ev.key.startswith(w.prefix) or partition_for(ev.key, partitions) != p:
                    out.append(f"partition {p}: key {ev.key!r} outside the range or partition")
                got[ev.revision] = _change(ev)
                if ev.revision <= target:
                    if ev.kind == EventKind.PUT:
                        assert ev.value is not None
                        state[ev.key] = ev.value
                    else:
                        state.pop(ev.key, None)
                    last_rev[ev.key] = ev.revision
            for rev, wr in sorted(acked[p].items()):
                if not (after < rev <= target) or not wr.key.startswith(w.prefix):
                    continue
                if wr.value is None and wr.prev_version == 0:
                    want = None  # a delete of an absent key changes nothing
                elif wr.value is None:
                    want = (EventKind.DELETE, wr.key, None)
                else:
                    want = (EventKind.PUT, wr.key, wr.value)
                if got.get(rev) != want:
                    out.append(f"partition {p} revision {rev}: acknowledged {want} but the "
                               f"watch got {got.get(rev)}")
            for rev, change in sorted(truth[p].items()):
                if after < rev <= target and change[1].startswith(w.prefix) \
                        and got.get(rev) != change:
                    out.append(f"partition {p} revision {rev}: {seen_from[p, rev]} got {change}"
                               f" but this watch got {got.get(rev)} (a gap)")
        want_state = {k: v for k, (v, _) in final[w.prefix].items() if k not in ignore}
        state = {k: v for k, v in state.items() if k not in ignore}
        if state != want_state:
            diff = sorted(k for k in state.keys() | want_state.keys()
                          if state.get(k) != want_state.get(k))
            k = diff[0]
            out.append(f"replayed state differs from the final scan on {len(diff)} keys; "
                       f"first {k!r}: replayed {state.get(k)!r}, scan {want_state.get(k)!r}")
        for k, (_, mod_rev) in final[w.prefix].items():
            if k in last_rev and k not in ignore and last_rev[k] != mod_rev:
                out.append(f"{k!r}: last event at revision {last_rev[k]}, scan says "
                           f"mod_revision {mod_rev}")
    return {name: msgs for name, msgs in problems.items() if msgs}
