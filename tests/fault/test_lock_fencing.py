"""The SDK's `Lock` under partitions, kills and pauses: never two holders at once.

Setup: a 3-node namespaced cluster (lease TTL floor lowered to 1 s) and
`WORKERS` contender *processes* (tests/fault/lock_worker.py), each with its
own client, looping: take the lock ``fence`` (TTL `TTL`), append a few entries
to a shared log with a fenced txn (``if lock.guard() then put
{fence}:log/w<W>-<n> = "w=<W> rev=<rev> n=<n>"``), release. The log keys share
the lock's hash tag, so guard and append are one txn in one partition.

Phase 1 (`CHAOS` seconds): the random nemesis on the servers (partitions,
kill -9, SIGSTOP, lost disks; tests/fault/workload.py) and, on the clients,
SIGSTOP of the current holder for longer than its TTL, or kill -9 of the
holder (a new contender process replaces it).
Phase 2: healed cluster; a fresh holder is paused for TTL + 2.5 s, so its
lease expires and another contender takes over; then it is resumed and goes
on appending with its old guard.

The check. The fencing token is the lock key's create revision ``rev``
(revisions are the partition's Raft indexes, so holders' revisions increase).
Every log key is written once, so its mod_revision ``M`` is the revision of
the txn that appended it: sorting the final log (a linearizable scan after
healing) by ``M`` gives the order in which appends took effect. Then:

1. in that order the ``rev`` of the entries never decreases (no append of an
   earlier holder took effect after a later holder's), and each ``rev``
   belongs to one worker: two holders' appends never interleave;
2. every entry's ``(worker, rev)`` is a lock that worker reported acquiring,
   and ``M > rev`` (the guard read the key that ``rev`` created);
3. every append the worker saw succeed is in the log with ``M`` = its txn's
   revision, every append the fence rejected is absent (outcome-unknown
   appends may be either);
4. for every pause of a holder during which another contender acquired the
   lock, none of the paused worker's appends invoked after it was resumed
   took effect (each was fenced or had an unknown outcome, and none is in
   the log); phase 2 must show such a takeover and a fenced late append.

Why 1 is the property "no two holders at once": a holder's appends take
effect only while its key exists (the guard), and the next holder acquires
only after that key is gone (FIFO by create revision), so under a correct
lock each holder's appends form one block in revision order, blocks ordered
by ``rev``. A holder that kept acting after losing the lock (a stale read of
the queue, a guard not checked, a lease expired early or kept too long)
shows up as an earlier ``rev`` after a later one, or as a lost or rejected
acknowledged append.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from prkdb.client import ReadConsistency
from tests.fault.lock_worker import log_prefix
from tests.fault.netns import CLUSTER_ID, REPO, NetnsCluster
from tests.fault.workload import NemesisLog, connect, random_nemesis

pytestmark = pytest.mark.slow

NAME = b"fence"
WORKERS = 4
TTL = 1.5  # seconds; the cluster's floor is lowered to 1 s (election timeout <= 0.4 s)
PAUSE = TTL + 2.5  # a paused holder sleeps well past its lease
CHAOS = 20.0  # seconds of phase 1


@dataclass
class Worker:
    """One contender process and the events it printed (tests/fault/lock_worker.py)."""

    wid: int
    proc: subprocess.Popen
    events: list[dict[str, Any]] = field(default_factory=list)
    paused: bool = False
    reader: threading.Thread | None = None

    @classmethod
    def spawn(cls, wid: int, c: NetnsCluster, root: Path) -> Worker:
        err = open(root / f"worker{wid}.err", "wb")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fault.lock_worker", "--seeds", ",".join(c.seeds),
             "--cluster-id", CLUSTER_ID, "--name", NAME.decode(), "--worker", str(wid),
             "--ttl", str(TTL)],
            stdout=subprocess.PIPE, stderr=err, cwd=REPO, text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        err.close()
        w = cls(wid, proc)
        w.reader = threading.Thread(target=w._read, daemon=True)
        w.reader.start()
        return w

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def holding(self) -> dict[str, Any] | None:
        """The 'acquired' event of the hold in progress (as far as printed), or None."""
        for ev in reversed(list(self.events)):
            if ev["ev"] == "acquired":
                return ev
            if ev["ev"] == "released" or ev.get("out") == "fenced":
                return None
        return None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.proc.send_signal(sig)
        self.paused = sig == signal.SIGSTOP

    def kill(self) -> None:
        """kill -9, then wait until every line it printed was read."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            if self.paused:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.wait(10)
        if self.reader is not None:
            self.reader.join(10)


@dataclass
class Pause:
    wid: int
    rev: int
    stopped: float
    resumed: float = 0.0


async def pause_holder(w: Worker, rev: int, pauses: list[Pause]) -> None:
    p = Pause(w.wid, rev, time.monotonic())
    pauses.append(p)
    w.signal(signal.SIGSTOP)
    try:
        await trio.sleep(PAUSE)
    finally:
        p.resumed = time.monotonic()
        w.signal(signal.SIGCONT)


async def client_nemesis(workers: list[Worker], c: NetnsCluster, root: Path, stop: trio.Event,
                         rng: random.Random, pauses: list[Pause], kills: list[int]) -> None:
    """Pause (SIGSTOP past the TTL) or kill -9 a fresh holder now and then."""
    next_id = len(workers)
    while not stop.is_set():
        await trio.sleep(rng.uniform(1.0, 3.0))
        for _ in range(100):  # a holder that acquired just now: it is mid-hold
            fresh = [(w, ev) for w in workers if w.alive() and not w.paused
                     and (ev := w.holding()) and time.monotonic() - ev["t"] < 0.3]
            if fresh:
                break
            await trio.sleep(0.02)
        else:
            continue
        w, ev = fresh[0]
        if rng.random() < 0.7:
            await pause_holder(w, ev["rev"], pauses)
        else:
            w.kill()
            kills.append(w.wid)
            workers.append(Worker.spawn(next_id, c, root))
            next_id += 1


async def test_lock_has_one_holder_at_a_time_under_faults(make_cluster, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"\nseed {seed}")
    c = make_cluster(3, partitions=4, extra="[limits]\nmin_lease_ttl_ms = 1000\n\n")
    workers = [Worker.spawn(i, c, tmp_path) for i in range(WORKERS)]
    pauses: list[Pause] = []
    kills: list[int] = []
    nem = NemesisLog()
    try:
        # Phase 1: faults on both sides.
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(random_nemesis, c, stop, random.Random(rng.random()), nem,
                               time.monotonic())
            nursery.start_soon(client_nemesis, workers, c, tmp_path, stop,
                               random.Random(rng.random()), pauses, kills)
            await trio.sleep(CHAOS)
            stop.set()
        c.heal()
        for i in c.ids:
            if not c.alive(i):
                c.start(i)
        await trio.to_thread.run_sync(c.wait_ready)
        # Phase 2: a clean takeover from a paused holder.
        phase2 = time.monotonic()
        with trio.fail_after(30):
            while True:
                fresh = [(w, ev) for w in workers if w.alive() and (ev := w.holding())
                         and ev["t"] > phase2 and time.monotonic() - ev["t"] < 0.3]
                if fresh:
                    break
                await trio.sleep(0.01)
        w, ev = fresh[0]
        await pause_holder(w, ev["rev"], pauses)
        final_pause = pauses[-1]
        with trio.fail_after(15):  # the resumed holder tries its next append
            while True:
                if any(e["ev"] == "append" and e["t"] > final_pause.resumed
                       for e in list(w.events)):
                    break
                await trio.sleep(0.05)
        crashed = [w.wid for w in workers if not w.alive() and w.wid not in kills]
        assert not crashed, "workers died: " + "\n".join(
            (tmp_path / f"worker{wid}.err").read_text()[-2000:] for wid in crashed)
    finally:
        for w in workers:
            w.kill()
    c.heal()
    for i in c.ids:
        if not c.alive(i):
            c.start(i)
    await trio.to_thread.run_sync(c.wait_ready)
    async with connect(c.seeds, timeout=10.0) as client:
        log = await client.scan(log_prefix(NAME), consistency=ReadConsistency.LINEARIZABLE)

    events = [(w.wid, e) for w in workers for e in w.events]
    acquired = {(wid, e["rev"]) for wid, e in events if e["ev"] == "acquired"}
    appends = [(wid, e) for wid, e in events if e["ev"] == "append"]
    outcomes: dict[str, int] = {}
    for _, e in appends:
        outcomes[e["out"]] = outcomes.get(e["out"], 0) + 1
    print(f"faults {dict(nem.faults)}; client pauses {len(pauses)}, kills {len(kills)}")
    errors = Counter(f"{e['where']}: {e['err'][:40]}" for _, e in events if e["ev"] == "error")
    print(f"holds {len(acquired)}, appends {outcomes}, log {len(log)} entries; errors {errors}")

    # Parse the log: (M, worker, rev, n).
    entries = []
    for kv in log:
        f = dict(part.split(b"=") for part in kv.value.split())
        entries.append((kv.mod_revision, int(f[b"w"]), int(f[b"rev"]), int(f[b"n"])))
    entries.sort()
    # 1. rev never decreases in revision order; one worker per rev.
    owner: dict[int, int] = {}
    for (m0, w0, r0, n0), (m1, w1, r1, n1) in itertools.pairwise(entries):
        assert r1 >= r0, (f"seed {seed}: append w{w1} n{n1} (lock rev {r1}) took effect at "
                          f"{m1}, after w{w0} n{n0} of the later lock rev {r0} at {m0}")
    for m, wid, rev, n in entries:
        assert owner.setdefault(rev, wid) == wid, f"lock rev {rev} used by w{owner[rev]} and w{wid}"
        # 2. a lock this worker took, and the guard saw its key.
        assert (wid, rev) in acquired, f"w{wid} n{n} carries lock rev {rev} it never acquired"
        assert m > rev, f"w{wid} n{n} took effect at {m}, not after its lock's creation {rev}"
    # Per holder, its own appends in its order.
    by_rev: dict[int, list[int]] = {}
    for _, _, rev, n in entries:
        by_rev.setdefault(rev, []).append(n)
    assert all(ns == sorted(ns) for ns in by_rev.values()), by_rev
    # 3. acknowledged appends are there (at their revision), fenced ones are not.
    in_log = {(wid, n): m for m, wid, _, n in entries}
    for wid, e in appends:
        if e["out"] == "ok":
            assert in_log.get((wid, e["n"])) == e["txn_rev"], f"acknowledged append lost: {e}"
        elif e["out"] == "fenced":
            assert (wid, e["n"]) not in in_log, f"a fenced append took effect: w{wid} {e}"
    # 4. a paused holder whose lock was taken over wrote nothing after it woke up.
    takeovers = 0
    late_fenced = 0
    for p in pauses:
        other = [(wid, e) for wid, e in events if e["ev"] == "acquired" and wid != p.wid
                 and p.stopped < e["t"] < p.resumed]
        if not other:
            continue
        takeovers += 1
        late = [e for wid, e in appends if wid == p.wid and e["rev"] == p.rev
                and _invoke_time(events, wid, e["n"]) > p.resumed]
        for e in late:
            assert e["out"] != "ok" and (p.wid, e["n"]) not in in_log, (
                f"w{p.wid} paused holding rev {p.rev}, taken over by {other[0]}, "
                f"still appended after waking: {e}")
            late_fenced += e["out"] == "fenced"
    print(f"pauses taken over: {takeovers}, late appends fenced: {late_fenced}")
    assert takeovers >= 1 and late_fenced >= 1, (
        f"no takeover from a paused holder seen (pauses {pauses}); the phase-2 pause must")
    fp = final_pause
    assert any(e["ev"] == "acquired" and wid != fp.wid and fp.stopped < e["t"] < fp.resumed
               for wid, e in events), f"phase 2: nobody took over from paused w{fp.wid}"
    assert len(acquired) >= 10 and outcomes.get("ok", 0) >= 40, (
        f"too little progress to prove anything: holds {len(acquired)}, appends {outcomes}")


def _invoke_time(events: list[tuple[int, dict[str, Any]]], wid: int, n: int) -> float:
    for w, e in events:
        if w == wid and e["ev"] == "invoke" and e["n"] == n:
            return e["t"]
    raise AssertionError(f"no invoke event for w{wid} n{n}")
