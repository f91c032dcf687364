"""The corruption campaign's parts: real data dirs, a map of them, damage, an oracle.

Issue 13's proof: a data dir written by a real `prkdb serve` under load is
damaged in one way at a time, and then opened exactly as a node opens it at
start. Each case must end in one of two ways:

- REFUSED: the node would not start, and the error names the damaged spot
  (the file and, for WAL damage, the byte offset);
- RECOVERED: every acknowledged (key, value) is readable, and still is after
  the restarted node's first write and a second restart.

Anything else is a failure: LOST (an acknowledged write is missing or has
another value: silent loss), UNNAMED (refused, but the message does not name
the spot), CRASHED (an exception a node would not turn into a clean refusal).

Parts:

- `generate`: one-node clusters (real processes, so every acknowledged write
  must be on that node's disk) written by concurrent SDK writers, stopped by
  SIGTERM or kill -9; returns every acknowledged (key, value).
- `DirMap.read`: where things are in a data dir: segment headers (decoded by
  `record.decode_segment_header`, so v1 or v2 sizes both work), every record's
  offset, size, kind and partition (from `recovery.read_segment`'s visit
  callback), snapshot files, IDENTITY.
- `make_cases`: the damage, seeded (`random.Random(seed)`), per kind of region.
- `check`: the oracle (datadir.ensure_identity, open_storage, recover_partition
  per partition, then apply the whole recovered log, as a restarted one-node
  leader commits it).
"""

from __future__ import annotations

import enum
import os
import random
import shutil
import signal
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from prkdb.client import PrkDbClient
from prkdb.config import NodeConfig
from prkdb.partitioning import partition_for
from prkdb.raft.types import Entry, HardState
from prkdb.server import rebuild as rebuild_mod
from prkdb.server.datadir import SNAPSHOT_DIR, WAL_DIR, ensure_identity, open_storage
from prkdb.server.recovery import RecoveryError, new_state_machine, recover_partition
from prkdb.state import KVStateMachine
from prkdb.storage import record as rec
from prkdb.storage.errors import SnapshotCorruptionError, StorageError, WalCorruptionError
from prkdb.storage.identity import IDENTITY_FILE, IdentityError, IdentityMismatch
from prkdb.storage.recovery import list_segments, read_segment
from prkdb.storage.segment import parse_segment_name
from tests.integration.cluster import CLUSTER_ID, LocalCluster

PAGE = 4096
SEGMENT_SIZE = 1 << 20  # the smallest the config allows: several segments fast

# ----------------------------------------------------------------------------
# 1. Data dirs written by real nodes


@dataclass
class Generated:
    """A stopped one-node cluster's data dir and what it acknowledged."""

    name: str
    root: Path
    data_dir: Path
    config: Path
    stop: str  # "sigterm" or "kill9"
    acked: dict[bytes, bytes]
    exit_code: int | None

    def node_config(self, data_dir: Path | None = None) -> NodeConfig:
        cfg = NodeConfig.from_toml(self.config)
        return cfg.replace(data_dir=data_dir or self.data_dir)


def _value(rng: random.Random) -> bytes:
    # Mostly small, some a few KiB: records of very different sizes, some
    # crossing pages, so page and boundary damage lands in every position.
    size = rng.choice((1, 9, 40, 120, 300, 700, 1500, 2600, 4000))
    return rng.randbytes(size)


async def _drive(c: LocalCluster, *, puts: int, writers: int, seed: int, stop: str,
                 acked: dict[bytes, bytes]) -> None:
    """`writers` concurrent SDK writers; after `puts` acks the node is stopped mid-load."""
    enough = trio.Event()
    async with PrkDbClient.connect(c.seeds, cluster_id=CLUSTER_ID, timeout=5) as client:

        async def writer(w: int) -> None:
            rng = random.Random(seed * 1000 + w)
            i = 0
            while True:
                key = b"k%d-w%d-%d" % (seed, w, i)
                i += 1
                value = _value(rng)
                await client.put(key, value)
                acked[key] = value  # only once the put returned: acknowledged
                if len(acked) >= puts:
                    enough.set()

        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(writer, w)
            await enough.wait()
            # Stopped while the writers still have puts in flight: those are
            # not acknowledged (their await never returns: cancelled below).
            c.procs[1].send_signal(signal.SIGKILL if stop == "kill9" else signal.SIGTERM)
            nursery.cancel_scope.cancel()


def generate(root: Path, specs: Sequence[tuple[str, str]], *, puts: int = 3000,
             writers: int = 6, partitions: int = 4, snapshot_entries: int = 250
             ) -> list[Generated]:
    """One one-node cluster per (name, stop) in `specs`, all loaded at once.

    `stop` is "sigterm" (graceful) or "kill9". Every process is killed at the
    end even on failure (by PID, LocalCluster.close).
    """
    clusters = []
    try:
        for name, _ in specs:
            c = LocalCluster(root / name, 1, partitions=partitions,
                             snapshot_entries=snapshot_entries,
                             extra=f"[storage]\nsegment_size = {SEGMENT_SIZE}\n")
            clusters.append(c)
            c.start_all()
        for c in clusters:
            c.wait_ready()
        acks: list[dict[bytes, bytes]] = [{} for _ in specs]

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                for k, (c, (_, stop)) in enumerate(zip(clusters, specs)):
                    nursery.start_soon(lambda c=c, k=k, stop=stop: _drive(
                        c, puts=puts, writers=writers, seed=k + 1, stop=stop, acked=acks[k]))

        trio.run(main)
        out = []
        for k, (c, (name, stop)) in enumerate(zip(clusters, specs)):
            code = c.procs[1].wait(30)
            if stop == "sigterm" and code != 0:
                raise AssertionError(f"{name}: exit {code} after SIGTERM:\n{c.log(1)[-3000:]}")
            out.append(Generated(name, c.root, c.root / "data1", c.root / "node1.toml", stop,
                                 acks[k], code))
        return out
    finally:
        for c in clusters:
            c.close()


# ----------------------------------------------------------------------------
# 2. Where things are in a data dir


@dataclass(frozen=True)
class Rec:
    """One good record: offset in its segment, total size (header + payload)."""

    off: int
    size: int
    kind: int
    partition: int

    @property
    def end(self) -> int:
        return self.off + self.size


@dataclass
class Seg:
    rel: str  # path relative to the data dir
    seq: int
    size: int
    header_len: int
    records: list[Rec]
    end: int  # just after the last good record
    sealed: bool

    def record_at(self, x: int) -> Rec | None:
        """The record holding byte x, if any."""
        for r in self.records:
            if r.off <= x < r.end:
                return r
        return None

    def spot_of_byte(self, x: int) -> tuple[int, int]:
        """Where damage at byte x must be reported: an offset range [lo, x]."""
        if x < self.header_len:
            return (0, 0)
        r = self.record_at(x)
        if r is not None:
            return (r.off, r.off)
        return (self.end, x)


@dataclass
class DirMap:
    root: Path
    segs: list[Seg]
    snaps: list[str]  # snapshot files, relative
    identity: str = IDENTITY_FILE

    @classmethod
    def read(cls, data_dir: Path) -> DirMap:
        wal = data_dir / WAL_DIR
        segs = []
        for seq, path in list_segments(wal):
            data = path.read_bytes()
            header = rec.decode_segment_header(data)
            if header is None:
                raise AssertionError(f"{path}: the generated dir has a bad segment header")
            records: list[Rec] = []

            def visit(off: int, kind: Any, part: int, value: Any,
                      data: bytes = data, records: list[Rec] = records) -> None:
                (length,) = struct.unpack_from("<I", data, off)
                records.append(Rec(off, rec.RECORD_HEADER_SIZE + length, int(kind), part))

            scan = read_segment(path, seq, None, visit)
            if scan.problem is not None:
                raise AssertionError(f"{path}: the generated dir is damaged: {scan.problem}")
            segs.append(Seg(f"{WAL_DIR}/{path.name}", seq, len(data), header.length, records,
                            scan.end, scan.sealed))
        snaps = sorted(str(p.relative_to(data_dir))
                       for p in (data_dir / SNAPSHOT_DIR).rglob("*.snap"))
        return cls(data_dir, segs, snaps)

    def describe(self) -> str:
        lines = []
        for s in self.segs:
            kinds = Counter(_kind_name(r.kind) for r in s.records)
            lines.append(f"  {s.rel}: header {s.header_len} B, data to {s.end} of {s.size}, "
                         f"{'sealed' if s.sealed else 'open'}, {dict(sorted(kinds.items()))}")
        lines.append(f"  snapshots: {', '.join(self.snaps)}")
        return "\n".join(lines)


def _kind_name(kind: int) -> str:
    try:
        return rec.RecordKind(kind).name
    except ValueError:
        return str(kind)


def seg_name(seq: int) -> str:
    name = f"{seq:016x}.wal"
    assert parse_segment_name(name) == seq
    return name


# ----------------------------------------------------------------------------
# 3. The oracle


class Outcome(enum.Enum):
    RECOVERED = "recovered"
    REFUSED = "refused"
    LOST = "LOST"  # silent loss of acknowledged writes
    UNNAMED = "UNNAMED"  # refused without naming the spot
    CHANGED = "CHANGED"  # refused, but the dir was modified first ("nothing was changed")
    CRASHED = "CRASHED"  # an exception a node would not turn into a clean refusal


class FirstWriteFailed(Exception):
    """The node started on the recovered state, and its WAL refused the first write."""


_REFUSALS = (WalCorruptionError, SnapshotCorruptionError, RecoveryError, IdentityError,
             IdentityMismatch, rebuild_mod.RebuildError, StorageError)


class EventLog:
    """Logger stand-in for the storage layer: keeps the events (what the node logs)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _add(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    info = warning = error = debug = _add

    def names(self) -> set[str]:
        return {e for e, _ in self.events}


@dataclass
class Opened:
    """What a node would serve after its start, per partition."""

    sms: dict[int, KVStateMachine]
    hard: dict[int, HardState]  # as recovered, before the new term's write
    last: dict[int, tuple[int, int]]  # partition -> (last index, term) after that write
    events: EventLog


def open_like_node(cfg: NodeConfig) -> Opened:
    """Do with the data dir what `prkdb serve` does at start, and apply the log.

    A restarted one-node cluster elects itself and commits its whole log, so
    every recovered entry after the snapshot is applied. Then the node's
    first write of its new term is made (an empty entry and a hard state per
    partition, synced), so a later start replays a WAL that was appended to
    after this recovery.

    Raises what the node would stop with (see `_REFUSALS`).
    """
    log = EventLog()
    # node.py, Node.run: identity first, then a used dir without a WAL
    # rebuilds from its peers (rebuild.prepare), which a one-node cluster
    # cannot do: it stops with RebuildError.
    empty = rebuild_mod.data_dir_is_empty(cfg.data_dir)
    ident = ensure_identity(cfg, log)
    if rebuild_mod.log_lost(cfg.data_dir):
        log.error("wal_missing", data_dir=str(cfg.data_dir))
        try:
            trio.run(lambda: rebuild_mod.prepare(cfg, log, requested=True, empty=empty,
                                                 identity=ident))
        except rebuild_mod.RebuildError as e:
            raise rebuild_mod.RebuildError(f"wal_missing data_dir={cfg.data_dir}; {e}") from e
        raise AssertionError("a one-node cluster without its WAL started a rebuild")
    wal, snapshots = open_storage(cfg, ident, log)
    try:
        sms: dict[int, KVStateMachine] = {}
        hard: dict[int, HardState] = {}
        last: dict[int, tuple[int, int]] = {}
        for p in range(cfg.partitions):
            sm = new_state_machine(cfg, p)
            r = recover_partition(p, cfg.voter_ids, wal, snapshots, sm)
            st = r.storage
            lo, hi = r.snapshot_index + 1, st.last_index()
            if hi >= lo:
                for e in st.entries(lo, hi + 1, 1 << 62):
                    if e.data:
                        sm.apply(e.index, e.data)
            sms[p] = sm
            hard[p] = st.hard_state
            last[p] = (hi, max(st.hard_state.term, st.term(hi)) + 1)
        try:
            for p, (hi, term) in last.items():
                wal.append_entries(p, [Entry(term, hi + 1)])
                wal.append_hard_state(p, HardState(term, cfg.node_id, hi + 1))
                last[p] = (hi + 1, term)
            wal.sync()
        except Exception as e:
            raise FirstWriteFailed(f"started, then its first write failed: "
                                   f"{type(e).__name__}: {e}") from e
    finally:
        wal.close()
    return Opened(sms, hard, last, log)


@dataclass
class Spot:
    """Where a refusal must point: one of `files` (relative), offset in [lo, hi].

    `offset` is None when no byte offset applies (a missing file, a snapshot,
    the identity). For WAL errors the offset is checked only if given.
    """

    files: tuple[str, ...]
    offset: tuple[int, int] | None = None


@dataclass
class Verdict:
    outcome: Outcome
    detail: str
    notes: tuple[str, ...] = ()


def _named(err: BaseException, work: Path, spot: Spot) -> str | None:
    """None if `err` names the spot, else what is wrong with it."""
    msg = str(err)
    if isinstance(err, WalCorruptionError):
        if f"byte offset {err.offset}" not in msg or str(err.path) not in msg:
            return f"message lacks the file or offset: {msg[:300]}"
        if not any(err.path == work / f for f in spot.files):
            return f"names {err.path}, the damage is in {spot.files}"
        if spot.offset is not None and not (spot.offset[0] <= err.offset <= spot.offset[1]):
            return f"names offset {err.offset}, expected in {list(spot.offset)}"
        return None
    if any(str(work / f) in msg for f in spot.files):
        return None
    return f"message names none of {spot.files}: {msg[:300]}"


def fingerprint(data_dir: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file: what a refusal must leave as it was."""
    out = {}
    for p in sorted(data_dir.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(data_dir))] = (st.st_size, st.st_mtime_ns)
    return out


def check(work: Path, cfg: NodeConfig, acked: dict[bytes, bytes], spot: Spot,
          hard: dict[int, HardState] | None = None) -> Verdict:
    """The oracle: open `work` as a node would, twice; see the module docstring.

    `hard`: the undamaged dir's recovered hard states; a recovered term (or
    the vote in it) below them is a voter that forgot what it promised (LOST).
    """
    notes: list[str] = []
    before = fingerprint(work)
    for attempt in (1, 2):
        try:
            opened = open_like_node(cfg)
        except _REFUSALS as err:
            if attempt == 2:
                return Verdict(Outcome.LOST, f"recovered once, then refused at the second "
                                             f"start: {type(err).__name__}: {err}")
            wrong = _named(err, work, spot)
            if wrong is not None:
                return Verdict(Outcome.UNNAMED, f"{type(err).__name__}: {wrong}")
            after = fingerprint(work)
            # Refusals that promise "nothing was changed" (the WAL's) or come
            # before the WAL is opened; a RecoveryError comes after the WAL's
            # open, which may legitimately have cut a torn tail.
            if after != before and not isinstance(err, RecoveryError):
                changed = sorted(f for f in before.keys() | after.keys()
                                 if before.get(f) != after.get(f))
                return Verdict(Outcome.CHANGED, f"{type(err).__name__} ({str(err)[:120]}), "
                                                f"after changing {changed}")
            return Verdict(Outcome.REFUSED, f"{type(err).__name__}: {str(err)[:160]}",
                           (type(err).__name__,))
        except Exception as err:  # the node would die with a traceback
            return Verdict(Outcome.CRASHED, f"attempt {attempt}: {type(err).__name__}: {err}")
        missing = []
        for key, value in acked.items():
            got = opened.sms[partition_for(key, cfg.partitions)].get(key)
            if got is None or got[0] != value:
                missing.append(key)
        if missing:
            return Verdict(Outcome.LOST, f"attempt {attempt}: {len(missing)} of {len(acked)} "
                                         f"acknowledged writes missing or wrong, e.g. "
                                         f"{missing[:3]}; events {sorted(opened.events.names())}")
        for p, before in (hard or {}).items() if attempt == 1 else ():
            now = opened.hard[p]
            if now.term < before.term or (now.term == before.term and now.vote != before.vote):
                return Verdict(Outcome.LOST, f"partition {p}: hard state {before} recovered "
                                             f"as {now} (term or vote forgotten)")
        if attempt == 1:
            first_last = opened.last
            names = opened.events.names()
            notes = [n for n in ("wal_torn_tail_truncated", "snapshot_corrupt_skipped",
                                 "data_dir_identity_adopted") if n in names]
        elif any(opened.last[p][0] <= first_last[p][0] for p in first_last):
            return Verdict(Outcome.LOST, f"the first start's write is gone at the second: "
                                         f"{first_last} then {opened.last}")
    return Verdict(Outcome.RECOVERED, "all acknowledged writes present", tuple(notes))


# ----------------------------------------------------------------------------
# 4. Damage


Mutation = Callable[[Path], Spot]


@dataclass
class Case:
    kind: str  # the row of the count table
    label: str  # reproducer: what exactly was done
    mutate: Mutation
    must_recover: bool = False  # an ordinary crash's leftovers: refusing is wrong too


def xor_byte(path: Path, off: int, mask: int) -> None:
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)[0]
        f.seek(off)
        f.write(bytes([b ^ mask]))


def _flip(rel: str, off: int, mask: int, spot: Spot) -> Mutation:
    def mutate(work: Path) -> Spot:
        xor_byte(work / rel, off, mask)
        return spot
    return mutate


def _flip_case(kind: str, seg: Seg, x: int, rng: random.Random) -> Case:
    mask = rng.randrange(1, 256)
    lo, hi = seg.spot_of_byte(x)
    return Case(kind, f"xor {mask:#04x} at {seg.rel}@{x}",
                _flip(seg.rel, x, mask, Spot((seg.rel,), (lo, hi))))


def _flip_cases(m: DirMap, rng: random.Random, n: int) -> list[Case]:
    """n flips per kind of region; half of them in the newest segment (the torn-tail rules)."""
    K = rec.RecordKind
    newest = m.segs[-1]
    preds: dict[str, Callable[[Rec], bool]] = {
        "record header (part/kind/flags)": lambda r: True,
        "length field": lambda r: True,
        "crc field": lambda r: True,
        "entry payload": lambda r: r.kind == K.ENTRY,
        "hard state record": lambda r: r.kind == K.HARD_STATE,
        "snapshot marker record": lambda r: r.kind == K.SNAPSHOT_MARKER,
        "sync mark / seal record": lambda r: r.kind not in (K.ENTRY, K.HARD_STATE,
                                                            K.SNAPSHOT_MARKER),
    }

    def byte_in(kind: str, r: Rec) -> int:
        if kind.startswith("record header"):
            return r.off + 8 + rng.randrange(8)
        if kind == "length field":
            return r.off + rng.randrange(4)
        if kind == "crc field":
            return r.off + 4 + rng.randrange(4)
        if kind == "entry payload":
            return r.off + rec.RECORD_HEADER_SIZE + rng.randrange(r.size - rec.RECORD_HEADER_SIZE)
        return r.off + rng.randrange(r.size)

    out: list[Case] = []
    for i in range(n):
        segs = [newest] if i % 2 == 0 else m.segs
        for kind, pred in preds.items():
            pool = [(s, r) for s in segs for r in s.records if pred(r)]
            if pool:
                s, r = rng.choice(pool)
                out.append(_flip_case(kind, s, byte_in(kind, r), rng))
        # The last records of the newest segment: the last acknowledged
        # batches and their sync marks, where a torn tail is legitimate
        # only past the last durable byte.
        r = rng.choice(newest.records[-24:])
        out.append(_flip_case("newest segment, last records", newest,
                              r.off + rng.randrange(r.size), rng))
        s = rng.choice(segs)
        out.append(_flip_case("segment header", s, rng.randrange(s.header_len), rng))
        # Segment boundaries: the header/first record joint, the last records
        # and the first bytes after the data.
        s = rng.choice(segs)
        x = rng.choice((rng.randrange(max(0, s.header_len - 8), s.header_len + 24),
                        rng.randrange(max(s.header_len, s.end - 40), min(s.size, s.end + 40))))
        out.append(_flip_case("segment boundary", s, x, rng))
        s = rng.choice(segs)
        if s.end < s.size:
            out.append(_flip_case("after the data (zeros)", s, rng.randrange(s.end, s.size), rng))
    return out


def _zero_page(m: DirMap, rng: random.Random, n: int) -> list[Case]:
    out = []
    for i in range(n):
        s = m.segs[-1] if i % 2 == 0 else rng.choice(m.segs)
        pages = list(range(1, (s.end + PAGE - 1) // PAGE)) or [0]
        if s is m.segs[-1]:
            # Not the page holding the newest segment's last sync mark: a page
            # that wipes that mark and the batch it proves reads as a torn
            # tail, a limit of the design (docs/storage.md, "What is not
            # detected"), not what this kind checks (a page in the middle).
            marks = [r for r in s.records if r.kind == rec.RecordKind.SYNC_MARK]
            if marks:
                last = marks[-1]
                pages = [k for k in pages
                         if k * PAGE >= last.end or (k + 1) * PAGE <= last.off] or pages
        k = rng.choice(pages)
        start = k * PAGE
        r = s.record_at(start)
        lo = 0 if start < s.header_len else (r.off if r is not None else start)
        spot = Spot((s.rel,), (lo, min(start + PAGE, s.size)))

        def mutate(work: Path, rel: str = s.rel, start: int = start, spot: Spot = spot) -> Spot:
            with open(work / rel, "r+b") as f:
                f.seek(start)
                f.write(bytes(PAGE))
            return spot
        out.append(Case("zeroed 4 KiB page", f"zero page {s.rel}@{start}", mutate))
    return out


def _truncations(m: DirMap, rng: random.Random, n: int) -> list[Case]:
    out = []
    for i in range(n):
        s = m.segs[-1] if i % 2 == 0 else rng.choice(m.segs[:-1] or m.segs)
        cut = rng.choice((0, s.header_len, rng.randrange(s.header_len, s.end),
                          rng.randrange(s.end, s.size)))
        where = "newest" if s is m.segs[-1] else "older"

        def mutate(work: Path, rel: str = s.rel, cut: int = cut) -> Spot:
            os.truncate(work / rel, cut)
            return Spot((rel,), (0, cut))
        out.append(Case(f"truncated segment ({where})", f"truncate {s.rel} to {cut}", mutate))
    return out


def _any_segment(m: DirMap) -> tuple[str, ...]:
    return (*(s.rel for s in m.segs), WAL_DIR)


def _segment_files(m: DirMap, other: DirMap) -> list[Case]:
    """Deleted, duplicated, reordered, foreign segments (all of them, not sampled)."""
    out: list[Case] = []
    segs = m.segs
    top = segs[-1].seq
    anywhere = Spot(_any_segment(m))
    for i, s in enumerate(segs):
        which = "oldest" if i == 0 else "newest" if i == len(segs) - 1 else "middle"

        def delete(work: Path, rel: str = s.rel) -> Spot:
            (work / rel).unlink()
            return anywhere
        out.append(Case(f"deleted segment ({which})", f"delete {s.rel}", delete))
        for target in {top + 1, s.seq + 1}:
            dup = f"{WAL_DIR}/{seg_name(target)}"

            def duplicate(work: Path, rel: str = s.rel, dup: str = dup) -> Spot:
                shutil.copyfile(work / rel, work / dup)
                return Spot((dup,), (0, 0))
            out.append(Case("duplicated segment", f"copy {s.rel} to {dup}", duplicate))
    pairs = [(segs[i], segs[i + 1]) for i in range(len(segs) - 1)]
    if len(segs) > 2:
        pairs.append((segs[0], segs[-1]))
    for a, b in pairs:
        def swap(work: Path, a: str = a.rel, b: str = b.rel) -> Spot:
            tmp = work / (a + ".swap")
            (work / a).rename(tmp)
            (work / b).rename(work / a)
            tmp.rename(work / b)
            return Spot((a, b), (0, 0))
        out.append(Case("reordered segments", f"swap {a.rel} and {b.rel}", swap))
    theirs = {s.seq: s for s in other.segs}
    for s in segs:
        src = theirs.get(s.seq) or other.segs[-1]

        def foreign(work: Path, rel: str = s.rel, src: Path = other.root / src.rel) -> Spot:
            shutil.copyfile(src, work / rel)
            return Spot((rel,), (0, 0))
        out.append(Case("segment from another data dir", f"replace {s.rel} by {src.rel} of "
                                                          f"{other.root}", foreign))
    nxt = f"{WAL_DIR}/{seg_name(top + 1)}"
    src_top = other.root / other.segs[-1].rel

    def foreign_next(work: Path, src: Path = src_top, nxt: str = nxt) -> Spot:
        shutil.copyfile(src, work / nxt)
        return Spot((nxt,), (0, 0))
    out.append(Case("segment from another data dir", f"add {src_top} as {nxt}", foreign_next))

    def delete_all(work: Path) -> Spot:
        for s in segs:
            (work / s.rel).unlink()
        return Spot(("",))  # the node logs wal_missing with the data dir
    out.append(Case("deleted wal dir", "delete every segment", delete_all))

    def delete_wal(work: Path) -> Spot:
        shutil.rmtree(work / WAL_DIR)
        return Spot(("",))
    out.append(Case("deleted wal dir", "rm -r wal", delete_wal))
    return out


def _stale_records(m: DirMap, rng: random.Random, n: int) -> list[Case]:
    """Valid records of an older segment found after the newest segment's data.

    Stale bytes of a reused or preallocated file, or a misdirected write: the
    records pass their CRC, so only their content can give them away.
    """
    out = []
    newest = m.segs[-1]
    sources = [s for s in m.segs[:-1] if len(s.records) > 4] or [newest]
    for i in range(n):
        src = rng.choice(sources)
        k = rng.randrange(1, len(src.records) - 2)
        j = min(len(src.records), k + rng.randint(1, 6))
        if i % 4 == 2:
            # From a partition's hard state to its next entry batch: the old
            # hard state (lower commit) comes first, so the batch after it
            # does not look like a rewrite of committed entries.
            hs = [q for q, r in enumerate(src.records) if r.kind == rec.RecordKind.HARD_STATE]
            k = rng.choice(hs)
            p = src.records[k].partition
            j = next((q + 1 for q in range(k + 1, len(src.records))
                      if src.records[q].kind == rec.RecordKind.ENTRY
                      and src.records[q].partition == p), j)
        start, end = src.records[k].off, src.records[j - 1].end
        gap = 0 if i % 2 == 0 else rng.randrange(16, 2048)
        at = newest.end + gap
        if at + end - start > newest.size:
            continue

        def mutate(work: Path, src: str = src.rel, start: int = start, end: int = end,
                   at: int = at) -> Spot:
            chunk = (work / src).read_bytes()[start:end]
            with open(work / newest.rel, "r+b") as f:
                f.seek(at)
                f.write(chunk)
            # Found only by what the records say, so the WAL dir is named.
            return Spot((newest.rel, WAL_DIR), (newest.end, at))
        where = "right after" if gap == 0 else f"{gap} B after"
        out.append(Case("stale records after the data",
                        f"copy {src.rel}[{start}:{end}] {where} the data of {newest.rel} "
                        f"(at {at})", mutate))
    return out


def _snapshot_cases(m: DirMap, other: DirMap, rng: random.Random, n: int) -> list[Case]:
    out: list[Case] = []
    snapdir = Spot((SNAPSHOT_DIR,))
    for _ in range(n):
        rel = rng.choice(m.snaps)
        size = (m.root / rel).stat().st_size
        x = rng.choice((rng.randrange(44), rng.randrange(size), rng.randrange(size - 4, size)))
        mask = rng.randrange(1, 256)
        out.append(Case("snapshot file (byte flip)", f"xor {mask:#04x} at {rel}@{x}",
                        _flip(rel, x, mask, Spot((rel, SNAPSHOT_DIR)))))
    by_part: dict[str, list[str]] = {}
    for rel in m.snaps:
        by_part.setdefault(str(Path(rel).parent), []).append(rel)
    for pdir, files in sorted(by_part.items()):
        files.sort()
        for rel in files:
            def delete(work: Path, rel: str = rel) -> Spot:
                (work / rel).unlink()
                return Spot((rel, SNAPSHOT_DIR))
            age = "newest" if rel == files[-1] else "older"
            out.append(Case("deleted snapshot file", f"delete {rel} ({age})", delete))

            def truncate(work: Path, rel: str = rel) -> Spot:
                path = work / rel
                os.truncate(path, path.stat().st_size // 2)
                return Spot((rel, SNAPSHOT_DIR))
            out.append(Case("snapshot file (truncated)", f"truncate {rel} to half", truncate))

        def delete_all(work: Path, pdir: str = pdir) -> Spot:
            shutil.rmtree(work / pdir)
            return snapdir
        out.append(Case("deleted snapshot file", f"rm -r {pdir}", delete_all))
        # The other dir's newest snapshot of this partition, under its own
        # name: a valid file of another data dir (snapshots carry no dir id).
        theirs = sorted(r for r in other.snaps if str(Path(r).parent) == pdir)
        if theirs:
            def foreign(work: Path, src: Path = other.root / theirs[-1],
                        rel: str = theirs[-1], mine: tuple[str, ...] = tuple(files)) -> Spot:
                for f in mine:
                    (work / f).unlink(missing_ok=True)
                shutil.copyfile(src, work / rel)
                return Spot((rel, SNAPSHOT_DIR))
            out.append(Case("snapshot from another data dir",
                            f"replace {pdir}/* by {theirs[-1]} of {other.root}", foreign))

    def delete_dir(work: Path) -> Spot:
        shutil.rmtree(work / SNAPSHOT_DIR)
        return snapdir
    out.append(Case("deleted snapshot file", "rm -r snapshots", delete_dir))
    return out


def _identity_cases(m: DirMap, rng: random.Random, n: int) -> list[Case]:
    out = []
    size = (m.root / IDENTITY_FILE).stat().st_size
    for _ in range(n):
        x = rng.randrange(size)
        mask = rng.randrange(1, 256)
        out.append(Case("IDENTITY (byte flip)", f"xor {mask:#04x} at IDENTITY@{x}",
                        _flip(IDENTITY_FILE, x, mask, Spot((IDENTITY_FILE,)))))

    def delete(work: Path) -> Spot:
        (work / IDENTITY_FILE).unlink()
        # The node adopts the dir as a legacy one with a NEW data dir id, so
        # the refusal comes from the first segment (it carries the old id).
        return Spot((IDENTITY_FILE, *_any_segment(m)))
    out.append(Case("IDENTITY (deleted)", "delete IDENTITY", delete))
    return out


def _torn_writes(m: DirMap, rng: random.Random, n: int) -> list[Case]:
    """An unfinished last write: a prefix of a new record right after the newest data.

    This is what a crash leaves; nothing in it was acknowledged (no sync
    returned for it, and no sync mark follows it). A node must start here:
    `run_torn_writes` asserts RECOVERED, not just "not lost".
    """
    out = []
    newest = m.segs[-1]
    for _ in range(n):
        data = rng.randbytes(rng.choice((20, 300, 1500, 5000)))
        part = rng.randrange(4)
        record = rec.encode_entries(part, [Entry(1, 1_000_000, data=data)])
        k = rng.randrange(1, len(record))
        at = newest.end

        def mutate(work: Path, at: int = at, chunk: bytes = record[:k]) -> Spot:
            with open(work / newest.rel, "r+b") as f:
                f.seek(at)
                f.write(chunk)
            return Spot((newest.rel,), (at, at))
        out.append(Case("torn last write (must recover)",
                        f"first {k} of {len(record)} bytes of a new p{part} record at "
                        f"{newest.rel}@{at}", mutate, must_recover=True))
    return out


def _combined(m: DirMap, rng: random.Random) -> list[Case]:
    """Two damages whose sum needs what each alone does not (fallback snapshot + WAL)."""
    out: list[Case] = []
    by_part: dict[str, list[str]] = {}
    for rel in m.snaps:
        by_part.setdefault(str(Path(rel).parent), []).append(rel)
    for _, files in sorted(by_part.items()):
        newest = sorted(files)[-1]
        for s in m.segs[:-1]:
            x = rng.randrange((m.root / newest).stat().st_size)

            def mutate(work: Path, snap: str = newest, seg: str = s.rel, x: int = x) -> Spot:
                xor_byte(work / snap, x, 0x40)
                (work / seg).unlink()
                return Spot((snap, seg, SNAPSHOT_DIR, *_any_segment(m)))
            out.append(Case("snapshot flip + deleted segment",
                            f"xor 0x40 at {newest}@{x}, delete {s.rel}", mutate))
    return out


def make_cases(m: DirMap, other: DirMap, rng: random.Random, *, flips: int = 20,
               pages: int = 20, truncations: int = 12, stale: int = 6, snaps: int = 16,
               identity: int = 8, torn: int = 8) -> list[Case]:
    """Every kind of damage for the dir mapped by `m` (`other`: a second, foreign dir)."""
    return [
        *_flip_cases(m, rng, flips),
        *_zero_page(m, rng, pages),
        *_truncations(m, rng, truncations),
        *_segment_files(m, other),
        *_stale_records(m, rng, stale),
        *_snapshot_cases(m, other, rng, snaps),
        *_identity_cases(m, rng, identity),
        *_combined(m, rng),
        *_torn_writes(m, rng, torn),
    ]


# ----------------------------------------------------------------------------
# 5. Running cases


def scratch_root(fallback: Path) -> Path:
    """A new private dir for the damaged copies: in /dev/shm if there is one (fsync is free).

    The caller removes it.
    """
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else fallback
    return Path(tempfile.mkdtemp(prefix="prkdb-corruption-", dir=base))


@dataclass
class Tally:
    rows: dict[str, Counter] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)

    def add(self, dirname: str, case: Case, v: Verdict) -> None:
        self.rows.setdefault(case.kind, Counter())[v.outcome] += 1
        for n in v.notes:
            self.notes[(case.kind, n)] += 1
        if case.must_recover and v.outcome == Outcome.REFUSED:
            self.failures.append(f"[REFUSED A CRASH'S TORN WRITE] {dirname}: {case.kind}: "
                                 f"{case.label}: {v.detail}")
        elif v.outcome not in (Outcome.RECOVERED, Outcome.REFUSED):
            self.failures.append(f"[{v.outcome.value}] {dirname}: {case.kind}: {case.label}: "
                                 f"{v.detail}")

    def table(self) -> str:
        cols = list(Outcome)
        head = f"{'kind':40}" + "".join(f"{o.value:>10}" for o in cols) + f"{'total':>8}"
        lines = [head, "-" * len(head)]
        total: Counter = Counter()
        for kind in sorted(self.rows):
            c = self.rows[kind]
            total.update(c)
            lines.append(f"{kind:40}" + "".join(f"{c[o]:>10}" for o in cols)
                         + f"{sum(c.values()):>8}")
        lines.append("-" * len(head))
        lines.append(f"{'all':40}" + "".join(f"{total[o]:>10}" for o in cols)
                     + f"{sum(total.values()):>8}")
        if self.notes:
            lines.append("how: " + ", ".join(
                f"{k} / {n}: {c}" for (k, n), c in sorted(self.notes.items())))
        return "\n".join(lines)


def run_cases(gen: Generated, cases: Iterable[Case], tally: Tally, scratch: Path,
              hard: dict[int, HardState] | None = None) -> float:
    """Run each case on a fresh copy of gen's data dir; returns the seconds spent."""
    t0 = time.monotonic()
    for n, case in enumerate(cases):
        work = scratch / f"{gen.name}-case{n}"
        shutil.copytree(gen.data_dir, work)
        try:
            spot = case.mutate(work)
            v = check(work, gen.node_config(work), gen.acked, spot, hard)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        tally.add(gen.name, case, v)
    return time.monotonic() - t0
