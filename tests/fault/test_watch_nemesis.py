"""Watches under faults, on real processes (issue 17, "Proof").

20 watchers on a few prefixes (two hash-tagged, so one partition each; two
spread over every partition, one nested in the other; one more) while
writers put and delete, first under kill -9 of the nodes the watchers'
streams are attached to and of partition leaders, then under the random
nemesis (partitions, kill -9, SIGSTOP, a lost disk). The watchers mix the SDK's front
ends (trio, asyncio, sync) and ways to start: from revision 0 at once or
late (a backlog), list-then-watch (cursor, scan, watch), and resumers that
reopen from their cursor's text every few events. After healing, for each
watcher and partition the events equal the committed writes of its range in
revision order, with no gap and no duplicate, checked against the
acknowledged writes, against every other watcher, and against a final
linearizable scan (tests/fault/watch_workload.py says how).

Also: a watcher resuming from before the kept history gets `Compacted`,
relists and ends with the right state (the SDK's list-then-watch loop).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable

import pytest
import trio

from prkdb.client import Compacted, EventKind, WatchCursor
from prkdb.partitioning import partition_for
from tests.fault.watch_workload import (
    WatcherLog,
    Write,
    asyncio_watcher,
    attached_nemesis,
    check_watchers,
    connect,
    covered,
    marker_keys,
    sync_watcher,
    trio_watcher,
    write_until_ok,
    writer,
)
from tests.fault.workload import NemesisLog, Stats, random_nemesis

pytestmark = pytest.mark.slow

PARTITIONS = 4
ATTACHED = 9.0  # seconds of kill -9 of attached nodes and leaders, then...
NEMESIS = 11.0  # ...seconds of random faults (a lost disk last: a rebuild blocks kills)
WRITERS = 4
PREFIXES = [b"{w0}/", b"{w1}/", b"s/", b"s/k1", b"t/"]
KEYS = ([b"{w0}/k%d" % i for i in range(6)] + [b"{w1}/k%d" % i for i in range(6)]
        + [b"s/k%d" % i for i in range(16)] + [b"t/k%d" % i for i in range(8)])
# name -> (prefix, front end, style, start delay in seconds)
WATCHERS: list[tuple[bytes, str, str, float]] = (
    [(p, "trio", "from-0", 0.0) for p in PREFIXES]
    + [(p, "trio", "list-then-watch", 1.0 + 2 * i) for i, p in enumerate(PREFIXES)]
    + [(p, "trio", "late-from-0", 4.0 + 2 * i) for i, p in enumerate(PREFIXES)]
    + [(b"{w0}/", "trio", "resumer", 0.0), (b"s/", "trio", "resumer", 0.0),
       (b"t/", "trio", "resumer", 3.0)]
    + [(b"{w1}/", "sync", "from-0", 0.0), (b"s/", "asyncio", "from-0", 0.0)]
)


async def test_watchers_see_every_committed_write_once_in_order(make_cluster) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"\nseed {seed}")
    t0 = time.monotonic()

    def clock() -> float:
        return time.monotonic() - t0

    c = make_cluster(3, partitions=PARTITIONS)
    phases = [f"ready {clock():.1f}s"]
    assert len(WATCHERS) == 20
    watchers = [WatcherLog(f"w{i}:{front}:{style}:{prefix.decode()}", prefix, front, style,
                           covered(prefix, PARTITIONS))
                for i, (prefix, front, style, _) in enumerate(WATCHERS)]
    writes: list[Write] = []
    stats = Stats()
    nem = NemesisLog()
    stop_writes, stop_nemesis, stop_attached = trio.Event(), trio.Event(), trio.Event()
    ignore: set[bytes] = set()
    final: dict[bytes, dict[bytes, tuple[bytes, int]]] = {}
    async with connect(c.seeds) as wclient, connect(c.seeds) as client_a, \
            connect(c.seeds) as client_b:
        async with trio.open_nursery() as watching:
            for i, (w, (_, _, _, delay)) in enumerate(zip(watchers, WATCHERS, strict=True)):
                if w.front == "sync":
                    watching.start_soon(_in_thread, sync_watcher, c.seeds, w)
                elif w.front == "asyncio":
                    watching.start_soon(_in_thread, asyncio_watcher, c.seeds, w)
                else:
                    watching.start_soon(trio_watcher, client_a if i % 2 else client_b, w,
                                        random.Random(rng.random()), delay)
            await trio.sleep(0.5)
            async with trio.open_nursery() as load:
                for proc in range(WRITERS):
                    load.start_soon(writer, wclient, writes, proc, KEYS, PARTITIONS,
                                    stop_writes, stats, random.Random(rng.random()))
                async with trio.open_nursery() as faults:
                    faults.start_soon(attached_nemesis, c, watchers[:-2], stop_attached,
                                      random.Random(rng.random()), nem.events, clock)
                    await trio.sleep(ATTACHED)
                    stop_attached.set()
                phases.append(f"attached kills over {clock():.1f}s")
                async with trio.open_nursery() as faults:  # ends after its current fault
                    faults.start_soon(random_nemesis, c, stop_nemesis,
                                      random.Random(rng.random()), nem, t0)
                    await trio.sleep(NEMESIS)
                    stop_nemesis.set()
                phases.append(f"nemesis over {clock():.1f}s")
                stop_writes.set()
            c.heal()
            for i in c.ids:
                if not c.alive(i):
                    c.start(i)
            await trio.to_thread.run_sync(c.wait_ready)
            phases.append(f"healed {clock():.1f}s")
            await trio.sleep(1.0)  # quiet: nothing in flight is still to apply
            # End markers: the last acknowledged write of every range and partition.
            for prefix in PREFIXES:
                for key in marker_keys(prefix, PARTITIONS, b"end"):
                    await write_until_ok(wclient, writes, key, b"end", PARTITIONS, stats)
            for w in watchers:
                w.targets = {p: max((wr.revision for wr in writes if wr.status == "ok"
                                     and wr.partition == p and wr.key.startswith(w.prefix)),
                                    default=0)
                             for p in w.partitions}
            # Kick markers: one more event everywhere, after the targets are known.
            for prefix in PREFIXES:
                for key in marker_keys(prefix, PARTITIONS, b"kick"):
                    ignore.add(key)
                    await write_until_ok(wclient, writes, key, b"kick", PARTITIONS, stats)
            with trio.move_on_after(20):
                while not all(w.done() for w in watchers):  # noqa: ASYNC110 - threads too
                    await trio.sleep(0.1)
            phases.append(f"watchers done {clock():.1f}s")
            watching.cancel_scope.cancel()
        for prefix in PREFIXES:
            items = await wclient.scan(prefix, timeout=10.0)
            final[prefix] = {kv.key: (kv.value, kv.mod_revision) for kv in items}
    problems = check_watchers(watchers, writes, final, ignore, PARTITIONS)
    phases.append(f"checked {clock():.1f}s")
    acked = sum(1 for wr in writes if wr.status == "ok")
    print(f"seed {seed}: {len(writes)} writes ({acked} acknowledged); {stats.summary()}")
    print(f"faults {dict(nem.faults)}; unavailable: {nem.unavailable}")
    print("phases: " + ", ".join(phases))
    print("kills: " + "; ".join(e for e in nem.events if "kill" in e))
    for w in watchers:
        print(f"  {w.name}: {len(w.events)} events, {w.opened} watches, {w.streams} streams, "
              f"up to {w.max_rev}")
    report = "\n".join(f"{name}: {len(msgs)} mismatches; first: {msgs[0]}"
                       for name, msgs in sorted(problems.items()))
    assert not problems, (f"seed {seed}\n{report}\nfaults:\n" + "\n".join(nem.events))
    # Not vacuous: enough writes in every range, and faults hit the watchers.
    assert acked > 300, f"too little progress to prove anything: {stats.summary()}"
    for w in watchers:
        n = sum(1 for ev in w.events if ev.revision <= (w.targets or {}).get(ev.partition, 0))
        assert n > 20, f"{w.name}: only {n} events"
    reopened = [w.name for w in watchers if w.streams > w.opened * len(w.partitions)]
    assert len(reopened) >= 5, "few streams were reopened elsewhere: the faults missed them"
    kills = [e for e in nem.events if "(attached)" in e]
    assert kills, "no attached node was killed: " + "\n".join(nem.events)
    # The checker sees a gap and a duplicate: watcher 0 with one event dropped (next to
    # an intact copy of itself), then with one event repeated.
    w0 = watchers[0]
    middle = len(w0.events) // 2
    dropped = dataclasses.replace(w0, name="dropped",
                                  events=w0.events[:middle] + w0.events[middle + 1:])
    assert "dropped" in check_watchers([dropped, w0], writes, final, ignore, PARTITIONS)
    repeated = dataclasses.replace(w0, name="repeated",
                                   events=[*w0.events[:middle + 1], *w0.events[middle:]])
    got = check_watchers([repeated], writes, final, ignore, PARTITIONS)
    assert "duplicate" in got["repeated"][0], got


async def _in_thread(fn: Callable[..., None], *args: object) -> None:
    await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


HISTORY = 50  # events each partition keeps in the COMPACTED test


async def test_compacted_watcher_relists_and_ends_right(make_cluster) -> None:
    c = make_cluster(3, partitions=2, extra=f"[limits]\nhistory_events = {HISTORY}\n\n")
    prefix = b"{c}/"
    p = partition_for(prefix, 2)
    keys = [prefix + b"k%d" % i for i in range(10)]
    async with connect(c.seeds) as client:
        for i in range(3 * HISTORY):
            await client.put(keys[i % len(keys)], b"v%d" % i)
        await client.delete(keys[0])
        want = {kv.key: kv.value for kv in await client.scan(prefix)}
        compacted: list[Compacted] = []
        cache: dict[bytes, bytes] = {}
        cursor: WatchCursor | str | None = WatchCursor({p: 1})  # far behind the history
        more = [(keys[1], b"late-1"), (keys[2], None), (keys[0], b"late-0")]
        with trio.fail_after(30):
            while cache != want:
                if cursor is None:  # list: the cursor first, then the scan
                    cursor = await client.watch_cursor(prefix)
                    cache = {kv.key: kv.value for kv in await client.scan(prefix)}
                    for key, value in more:  # changes after the list, seen by the watch
                        if value is None:
                            await client.delete(key)
                            want.pop(key, None)
                        else:
                            await client.put(key, value)
                            want[key] = value
                try:
                    async with client.watch(prefix, cursor=cursor) as watch:
                        async for event in watch:
                            if event.kind == EventKind.PUT:
                                assert event.value is not None
                                cache[event.key] = event.value
                            else:
                                cache.pop(event.key, None)
                            cursor = str(watch.cursor)
                            if cache == want:
                                break
                except Compacted as exc:
                    compacted.append(exc)
                    cursor = None
    assert len(compacted) == 1, compacted
    assert compacted[0].partition == p
    assert 1 < compacted[0].oldest <= 3 * HISTORY + 1
    assert cache == want
