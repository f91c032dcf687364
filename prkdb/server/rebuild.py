"""Rebuilding a node that lost its data dir, without breaking Raft's promises.

Theory of operation
-------------------
A voter keeps two promises on disk: the vote it cast in each term, and every
entry it acknowledged. A node restarted on an empty disk with the same id has
forgotten both, and plain Raft then loses data: its acknowledgement helped
commit entries it no longer holds, so with it a majority can elect a leader
without them (tests/raft/test_recovering.py plays that story); and it may
vote a second time in a term it already voted in (two leaders in a term).

So a rebuilding node, before it runs any partition:

1. writes the marker file `REBUILDING` (fsynced) into its data dir, so a
   crash at any later point restarts the rebuild instead of a normal start;
2. asks EVERY other node (client port, `RebuildFence`) for each
   partition's term, commit index and leader, and waits until all of them
   answered (meanwhile answering the same question itself, with nothing,
   so that two nodes rebuilding at once do not wait for each other). The
   highest term bounds every term it could have voted in (a candidate
   stores the term it asked votes for). Each peer first forgets every ack
   of our previous process (it drops that process's connections, and its
   leaders reset our progress), so none can commit anything after it
   answered;
3. stores, per partition, the hard state (term = that highest term, vote =
   itself, commit = 0): it never grants a vote in that term or below;
4. records the per-partition targets in the marker, then starts.

Each partition then runs as a *recovering* replica (RaftConfig.recovering):
it accepts and acknowledges entries (those acks are true) but never votes or
campaigns, until its durable commit index reaches the target; then it ends
the recovery and the marker forgets the partition; with none left the
marker is deleted.

The target is not just the highest commit index reported: an entry can be
committed (and answered) while no survivor knows it yet, because a new
leader learns the commit index late, or because the lost process was the
leader. What every committed entry is sure to be in is the log of a leader
elected without our vote. So the recovery ends when the durable commit index
covers either (a) the last index of the surviving leader of the highest
term, if a node reported being one (its log holds every committed entry,
and the fence stops the old process's acks from committing more), or
(b) an entry of a leader elected after the survey: of a term above that
floor, or of the floor term itself when nobody led it at the survey and we
follow it now (only one leader per term, and the lost process is gone).
Such a leader was elected without us (we gave no vote). Then our log
matches one that holds every committed entry, and every committed entry
has a true copy here again (tests/sim wipes disks in its random schedules:
trusting the highest commit index alone lost acknowledged entries).

Waiting for every peer costs availability only while another node is down
too, and then the cluster had no spare replica anyway.

A node started on an empty data dir without `--rebuild` asks the peers it can
reach within a moment: if any of them already has Raft state, this is a
rebuild (a wiped disk, or a node joining late), and it proceeds as if
`--rebuild` was given. For a late first start that costs nothing: it never
voted, and it catches up before voting, which it had to do anyway.
"""

from __future__ import annotations

from pathlib import Path

import trio

from prkdb import __version__
from prkdb.config import NodeConfig, parse_addr
from prkdb.errors import ErrorCode, PrkdbError
from prkdb.logging import NodeLogger
from prkdb.raft import Role
from prkdb.raft.types import HardState
from prkdb.security.tls import NodeTls
from prkdb.server import systemd
from prkdb.server.framed import FramedStream, StreamClosed
from prkdb.server.layout import ask_peers
from prkdb.storage import WriteAheadLog
from prkdb.storage.identity import IDENTITY_FILE, DataDirIdentity
from prkdb.storage.rebuild_marker import MARKER, MARKER_FORMAT, Marker, MarkerError, Target
from prkdb.storage.recovery import list_segments
from prkdb.wire import from_wire
from prkdb.wire.messages import (
    Error,
    Hello,
    HelloOk,
    NodeInfo,
    PartitionStatus,
    RebuildFence,
    Status,
    StatusOk,
)

__all__ = ["MARKER", "MARKER_FORMAT", "Marker", "MarkerError", "RebuildError", "Target"]

SURVEY_TIMEOUT_S = 3.0  # per attempt and peer
DETECT_TIMEOUT_S = 1.0  # the quick look of a node started on an empty dir
RETRY_S = 1.0
WAIT_LOG_EVERY_S = 2.0
EXTEND_START_S = 30.0  # systemd start timeout granted per survey round while waiting


class RebuildError(Exception):
    """The rebuild cannot go on (bad marker, peers of another cluster or layout)."""


_NOT_STATE = {IDENTITY_FILE, IDENTITY_FILE + ".tmp"}  # files that hold no Raft state


def data_dir_is_empty(data_dir: Path) -> bool:
    """Nothing of a previous life to lose: no files (a missing dir counts) but the identity."""
    return not data_dir.exists() or all(p.name in _NOT_STATE for p in data_dir.iterdir())


def log_lost(data_dir: Path) -> bool:
    """A used data dir (not empty) without a WAL: its votes and acked entries are gone.

    Such a node must not start as a normal voter: it rebuilds (module doc),
    as after `--rebuild`. An unfinished rebuild (marker present) is not
    "lost": `prepare` resumes it.
    """
    if data_dir_is_empty(data_dir) or (data_dir / MARKER).exists():
        return False
    wal = data_dir / "wal"
    return not wal.is_dir() or not list_segments(wal)


# -- asking the peers (layout.ask_peers) -----------------------------------------


async def answer_while_rebuilding(
    cfg: NodeConfig, tls: NodeTls | None = None, *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve our client port during the survey: Status says "nothing here yet".

    Two nodes rebuilding at once (or two nodes of a new cluster starting
    after the others) each wait for every other node's answer: without this
    neither would ever open its port. An empty answer adds nothing to the
    floors and targets; every other request is refused as UNAVAILABLE.
    """
    host, port = parse_addr(cfg.me.client_addr)
    listeners = await trio.open_tcp_listeners(port, host=host)
    empty = tuple(PartitionStatus(p, 0, 0, 0, 0, Role.FOLLOWER) for p in range(cfg.partitions))
    nodes = tuple(NodeInfo(p.id, p.client_addr, p.peer_addr) for p in cfg.peers)

    async def handle(stream: trio.abc.Stream) -> None:
        framed = FramedStream(stream, 64 * 1024)
        try:
            with trio.fail_after(SURVEY_TIMEOUT_S):
                hello = from_wire(await framed.receive())
            if not isinstance(hello, Hello) or hello.cluster_id != cfg.cluster_id:
                return
            await framed.send_now(HelloOk(cfg.node_id, cfg.cluster_id))
            while True:
                req = from_wire(await framed.receive())
                rid = getattr(req, "request_id", 0)
                if isinstance(req, Status | RebuildFence):
                    await framed.send_now(StatusOk(
                        rid, cfg.node_id, cfg.cluster_id, nodes, empty, __version__,
                        "crc32" if cfg.key_rule == "crc32" else "hashtag"))
                else:
                    await framed.send_now(Error(rid, ErrorCode.UNAVAILABLE,
                                                "this node is rebuilding its data dir"))
        except (PrkdbError, StreamClosed, trio.TooSlowError, trio.BrokenResourceError,
                OSError):
            pass
        finally:
            await framed.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners,
                            handle if tls is None else tls.wrap(handle, "client"), listeners)
        task_status.started()


async def survey_all(cfg: NodeConfig, log: NodeLogger,
                     tls: NodeTls | None = None) -> dict[int, StatusOk]:
    """Every other node's Status; waits (logging who is missing) until all answered."""
    others = [p.id for p in cfg.peers if p.id != cfg.node_id]
    got: dict[int, StatusOk] = {}
    last_log = -WAIT_LOG_EVERY_S
    while True:
        missing = [p for p in others if p not in got]
        survey = await ask_peers(cfg, missing, SURVEY_TIMEOUT_S, fence=True, tls=tls)
        for problem in survey.mismatched.values():
            raise RebuildError(f"{problem}: the configs disagree")
        got.update(survey.answers)
        errors = survey.unreachable
        if len(got) == len(others):
            return got
        # Under systemd, READY=1 waits for the rebuild: say why, and keep
        # the start timeout from killing a node that waits for a peer.
        systemd.notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_START_S * 1e6)}\n"
                       f"STATUS=rebuilding: waiting for node(s) {sorted(errors)}")
        now = trio.current_time()
        if now - last_log >= WAIT_LOG_EVERY_S:
            last_log = now
            log.warning("rebuild_waiting_for_peers", missing=sorted(errors),
                        errors={str(k): v[:120] for k, v in sorted(errors.items())},
                        detail="a rebuild needs every other node's terms and commit indexes")
        await trio.sleep(RETRY_S)


def floors_and_targets(cfg: NodeConfig, answers: dict[int, StatusOk]
                       ) -> tuple[dict[int, int], dict[int, Target]]:
    """Per partition: the term floor, and the Target of its recovery (module doc)."""
    floors = dict.fromkeys(range(cfg.partitions), 0)
    commits = dict.fromkeys(range(cfg.partitions), 0)
    for st in answers.values():
        for ps in st.partitions:
            floors[ps.partition] = max(floors[ps.partition], ps.term)
            commits[ps.partition] = max(commits[ps.partition], ps.commit)
    leader_last = dict.fromkeys(range(cfg.partitions), 0)
    for pid, st in answers.items():
        for ps in st.partitions:
            if ps.role == Role.LEADER and ps.term == floors[ps.partition]:
                own = [r.match for r in ps.progress if r.node_id == pid]
                leader_last[ps.partition] = own[0] if own else 0
    targets = {p: Target(commits[p], leader_last[p], floors[p]) for p in floors}
    return floors, targets


# -- the start-up step ---------------------------------------------------------


async def prepare(cfg: NodeConfig, log: NodeLogger, *, requested: bool, empty: bool,
                  identity: DataDirIdentity,
                  tls: NodeTls | None = None) -> dict[int, Target] | None:
    """Run before the node opens its WAL: the targets if rebuilding, else None.

    `requested`: started with --rebuild (the caller checked the dir was empty).
    `empty`: the data dir held nothing before this start wrote its identity.
    """
    data_dir = cfg.data_dir
    try:
        marker = Marker.load(data_dir)
    except MarkerError as e:
        raise RebuildError(str(e)) from None
    if marker is not None and marker.node_id != cfg.node_id:
        raise RebuildError(
            f"{data_dir / MARKER} belongs to node {marker.node_id}, this is node {cfg.node_id}"
        )
    others = [p.id for p in cfg.peers if p.id != cfg.node_id]
    if not others and (requested or marker is not None):
        raise RebuildError(
            "a one-node cluster has no peer to rebuild from: restore it from a backup "
            "(prkdb restore); or, accepting the loss of whatever a repair cut, delete "
            f"{data_dir / MARKER} and start again")
    if marker is None:
        if not others:
            return None
        if not requested:
            if not empty:
                return None
            # A peer whose layout differs is not counted: layout.py quarantines it.
            survey = await ask_peers(cfg, others, DETECT_TIMEOUT_S, tls=tls)
            seen = {pid: max((p.term for p in st.partitions), default=0)
                    for pid, st in survey.answers.items()}
            if not any(seen.values()):
                return None  # a new cluster: every node we reached is empty too
            log.warning("rebuild_detected", peer_terms={str(k): v for k, v in seen.items()},
                        detail="empty data dir in a cluster that has Raft state (a wiped "
                               "node, or a first start after the others): rebuilding as "
                               "with --rebuild, which is safe either way")
        marker = Marker(cfg.node_id, None)
        marker.save(data_dir)
        log.info("rebuild_started", data_dir=str(data_dir))
    if marker.targets is None:
        failed: list[RebuildError] = []
        answers: dict[int, StatusOk] = {}
        async with trio.open_nursery() as nursery:
            await nursery.start(answer_while_rebuilding, cfg, tls)
            try:
                answers = await survey_all(cfg, log, tls)
            except RebuildError as e:
                failed.append(e)  # raised below, not wrapped in the nursery's group
            nursery.cancel_scope.cancel()
        if failed:
            raise failed[0]
        floors, targets = floors_and_targets(cfg, answers)
        _store_floors(cfg, floors, identity)
        # A partition that never had a term has nothing to recover.
        marker.targets = {p: t for p, t in targets.items() if t.floor > 0}
        marker.save(data_dir)
        log.info("rebuild_prepared", term_floors={str(p): t for p, t in floors.items()},
                 targets={str(p): list(t) for p, t in marker.targets.items()})
    if not marker.targets:
        Marker.remove(data_dir)
        log.info("rebuild_complete")
        return None
    return dict(marker.targets)


def _store_floors(cfg: NodeConfig, floors: dict[int, int], identity: DataDirIdentity) -> None:
    """Per partition: hard state (floor, self, 0) unless a higher term is stored."""
    wal = WriteAheadLog.open(cfg.data_dir / "wal", segment_size=cfg.storage.segment_size,
                             data_dir_id=identity.dir_id_bytes)
    try:
        recovered = wal.recovered()
        for p, floor in floors.items():
            plog = recovered.get(p)
            if plog is not None and plog.hard_state.term >= floor:
                continue
            wal.append_hard_state(p, HardState(floor, cfg.node_id, 0))
        wal.sync()
    finally:
        wal.close()


class RebuildTracker:
    """The partitions still recovering; forgets each (in the marker) once it caught up."""

    def __init__(self, data_dir: Path, node_id: int, targets: dict[int, Target],
                 log: NodeLogger) -> None:
        self.data_dir = data_dir
        self.node_id = node_id
        self.targets = dict(targets)
        self.log = log

    def target(self, partition: int) -> Target | None:
        """What the partition must reach before it votes, or None if done."""
        return self.targets.get(partition)

    def reached(self, partition: int, durable_commit: int, term_at_commit: int,
                current_term: int) -> bool:
        target = self.targets.get(partition)
        return target is None or target.reached(durable_commit, term_at_commit, current_term)

    def caught_up(self, partition: int, commit: int) -> None:
        """Partition's durable commit index reached its target: it may vote again."""
        if self.targets.pop(partition, None) is None:
            return
        self.log.info("partition_rebuilt", partition=partition, commit=commit,
                      left=len(self.targets))
        if self.targets:
            Marker(self.node_id, dict(self.targets)).save(self.data_dir)
        else:
            Marker.remove(self.data_dir)
            self.log.info("rebuild_complete")
