"""The RawNode contract: Ready/advance, persistence rules, and peer input validation.

STYLE.md §8.2 (Ready is a frozen contract) and §8.5 (odd peer input is
dropped with a reason, never raised).
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prkdb.raft import (
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MsgType,
    RaftConfig,
    RaftError,
    RawNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from tests.raft.network import Network

AFTER_PERSIST = {MsgType.APP_RESP, MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP}


def new_node(
    id_: int = 1, peers: tuple[int, ...] = (1, 2, 3), storage: MemoryStorage | None = None
) -> tuple[RawNode, MemoryStorage]:
    st_ = storage if storage is not None else MemoryStorage(peers)
    cfg = RaftConfig(id=id_, peers=peers, rng=random.Random(1))
    return RawNode(cfg, st_), st_


def drain(node: RawNode, storage: MemoryStorage) -> list[Ready]:
    """Act on every Ready as a driver would; return them."""
    out = []
    while node.has_ready():
        rd = node.ready()
        if rd.snapshot is not None:
            storage.apply_snapshot(rd.snapshot)
        storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        node.advance(rd)
        out.append(rd)
    return out


def follower_at_term_5() -> tuple[RawNode, MemoryStorage]:
    """Node 1 with log [1/1, 2/5, 3/5], commit 2, following 2 in term 5."""
    s = MemoryStorage((1, 2, 3))
    s.append([Entry(1, 1, data=b"a"), Entry(5, 2, data=b"b"), Entry(5, 3, data=b"c")])
    s.set_hard_state(HardState(5, 2, 2))
    node, s = new_node(storage=s)
    node.step(Message(MsgType.HEARTBEAT, to=1, from_=2, term=5, commit=2))
    drain(node, s)
    assert node.core.lead == 2
    return node, s


def observable(node: RawNode) -> tuple:
    c = node.core
    return (
        c.term,
        c.vote,
        c.lead,
        c.role,
        c.log.committed,
        c.log.last_index(),
        c.election_elapsed,
        tuple(c.msgs),
        tuple(c.msgs_after_persist),
        tuple(c.read_states),
        node.has_ready(),
    )


# -- Ready / advance ------------------------------------------------------------
def test_ready_twice_without_advance_raises() -> None:
    node, _ = new_node()
    node.campaign()
    rd = node.ready()
    with pytest.raises(RaftError, match="advance"):
        node.ready()
    node.advance(rd)
    node.ready()  # fine again (may be empty)


def test_advance_with_a_stale_ready_raises() -> None:
    node, _ = new_node()
    node.campaign()
    rd1 = node.ready()
    node.advance(rd1)
    node.step(Message(MsgType.PRE_VOTE_RESP, to=1, from_=2, term=1))
    rd2 = node.ready()
    with pytest.raises(RaftError, match=f"got Ready {rd1.number}"):
        node.advance(rd1)
    node.advance(rd2)
    assert rd2.number == rd1.number + 1


def test_must_sync_rules() -> None:
    node, s = new_node()
    # Pre-vote changes neither term nor vote: nothing to fsync.
    node.campaign()
    rd = node.ready()
    assert rd.hard_state is None and not rd.entries and not rd.must_sync
    assert {m.type for m in rd.messages} == {MsgType.PRE_VOTE}
    node.advance(rd)
    # The real election bumps term and vote: must sync before the votes leave.
    node.step(Message(MsgType.PRE_VOTE_RESP, to=1, from_=2, term=1))
    [rd] = drain(node, s)
    assert rd.hard_state == HardState(1, 1, 0) and rd.must_sync
    # Winning appends the no-op: entries => must sync.
    node.step(Message(MsgType.VOTE_RESP, to=1, from_=2, term=1))
    [rd] = drain(node, s)
    assert [(e.term, e.index) for e in rd.entries] == [(1, 1)] and rd.must_sync
    # Only the commit index moves: no fsync needed (it can be recovered).
    node.step(Message(MsgType.APP_RESP, to=1, from_=2, term=1, index=1))
    [rd] = drain(node, s)
    assert rd.hard_state == HardState(1, 1, 1)
    assert not rd.entries and not rd.must_sync
    assert [e.index for e in rd.committed_entries] == [1]
    # Heartbeats only: nothing to persist.
    for _ in range(2):
        node.tick()
    [rd] = drain(node, s)
    assert rd.hard_state is None and not rd.must_sync
    assert {m.type for m in rd.messages} == {MsgType.HEARTBEAT}


def test_messages_after_persist_hold_exactly_the_durable_promises() -> None:
    net = Network(3, seed=2)
    readies: list[Ready] = []
    for sim in net.nodes.values():
        orig = sim.raw.ready

        def rec(orig=orig):  # type: ignore[no-untyped-def]
            rd = orig()
            readies.append(rd)
            return rd

        sim.raw.ready = rec  # type: ignore[method-assign]
    lead = net.wait_for_leader(100) and net.leader()
    for k in range(5):
        net.propose(lead, b"p%d" % k)
    net.tick_all(4)
    assert net.read(next(i for i in net.ids if i != lead)) is not None
    net.tick_all(4)
    after = {m.type for rd in readies for m in rd.messages_after_persist}
    now = {m.type for rd in readies for m in rd.messages}
    assert after == AFTER_PERSIST  # all three kinds were seen there...
    assert not now & AFTER_PERSIST  # ...and never among the messages that leave at once
    assert {MsgType.APP, MsgType.HEARTBEAT, MsgType.HEARTBEAT_RESP} <= now


def test_ready_is_frozen() -> None:
    node, _ = new_node()
    node.campaign()
    rd = node.ready()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rd.must_sync = True  # type: ignore[misc]


# -- peer message validation --------------------------------------------------------
_E = (Entry(6, 4, data=b"x"),)
BAD = {
    "unknown-sender": Message(MsgType.APP, to=1, from_=9, term=6, index=3, log_term=5),
    "sender-is-self": Message(MsgType.HEARTBEAT, to=1, from_=1, term=6),
    "sender-none": Message(MsgType.HEARTBEAT, to=1, from_=0, term=6),
    "wrong-to": Message(MsgType.HEARTBEAT, to=2, from_=3, term=6),
    "local-hup": Message(MsgType.HUP, to=1, from_=2, term=6),
    "local-beat": Message(MsgType.BEAT, to=1, from_=2, term=6),
    "local-check-quorum": Message(MsgType.CHECK_QUORUM, to=1, from_=2, term=6),
    "local-snap-status": Message(MsgType.SNAP_STATUS, to=1, from_=2, term=6),
    "local-unreachable": Message(MsgType.UNREACHABLE, to=1, from_=2, term=6),
    "prop-from-peer": Message(MsgType.PROP, to=1, from_=2, term=6, entries=_E),
    "transfer-from-peer": Message(MsgType.TRANSFER_LEADER, to=1, from_=2, term=6),
    "unknown-type": Message(99, to=1, from_=2, term=6),  # type: ignore[arg-type]
    "negative-term": Message(MsgType.VOTE, to=1, from_=2, term=-1),
    "negative-index": Message(MsgType.APP, to=1, from_=2, term=6, index=-1),
    "negative-log-term": Message(MsgType.APP, to=1, from_=2, term=6, log_term=-3),
    "negative-commit": Message(MsgType.HEARTBEAT, to=1, from_=2, term=6, commit=-1),
    "negative-hint": Message(MsgType.APP_RESP, to=1, from_=2, term=6, reject_hint=-1),
    "no-term": Message(MsgType.HEARTBEAT, to=1, from_=2, term=0),
    "read-with-term": Message(MsgType.READ_INDEX, to=1, from_=2, term=6, context=b"r"),
    "read-without-context": Message(MsgType.READ_INDEX, to=1, from_=2),
    "gap-in-entries": Message(
        MsgType.APP,
        to=1,
        from_=2,
        term=6,
        index=3,
        log_term=5,
        entries=(Entry(6, 4), Entry(6, 6)),
    ),
    "first-entry-not-after-prev": Message(
        MsgType.APP, to=1, from_=2, term=6, index=3, log_term=5, entries=(Entry(6, 3),)
    ),
    "entry-term-above-msg-term": Message(
        MsgType.APP, to=1, from_=2, term=6, index=3, log_term=5, entries=(Entry(7, 4),)
    ),
    "entry-terms-decrease": Message(
        MsgType.APP,
        to=1,
        from_=2,
        term=6,
        index=3,
        log_term=5,
        entries=(Entry(6, 4), Entry(5, 5)),
    ),
    "entry-term-below-prev": Message(
        MsgType.APP, to=1, from_=2, term=6, index=3, log_term=5, entries=(Entry(4, 4),)
    ),
    "entries-on-heartbeat": Message(MsgType.HEARTBEAT, to=1, from_=2, term=6, entries=_E),
    "snap-without-snapshot": Message(MsgType.SNAP, to=1, from_=2, term=6),
    "snap-term-above-msg": Message(
        MsgType.SNAP,
        to=1,
        from_=2,
        term=6,
        snapshot=Snapshot(SnapshotMeta(9, 7, ConfState((1, 2, 3)))),
    ),
    "snap-empty": Message(MsgType.SNAP, to=1, from_=2, term=6, snapshot=Snapshot()),
    "snapshot-on-app": Message(
        MsgType.APP,
        to=1,
        from_=2,
        term=6,
        index=3,
        log_term=5,
        snapshot=Snapshot(SnapshotMeta(3, 5, ConfState((1, 2, 3)))),
    ),
}


@pytest.mark.parametrize("msg", BAD.values(), ids=BAD.keys())
def test_invalid_peer_message_is_dropped_with_a_reason(msg: Message) -> None:
    node, _ = follower_at_term_5()
    before = observable(node)
    reason = node.step(msg)
    assert isinstance(reason, str) and reason
    assert observable(node) == before


@pytest.mark.parametrize(
    "msg",
    [
        Message(MsgType.HEARTBEAT, to=1, from_=3, term=6, commit=3),
        Message(MsgType.APP, to=1, from_=2, term=6, index=3, log_term=5, entries=_E),
        Message(MsgType.VOTE, to=1, from_=3, term=9, index=3, log_term=5, context=b"transfer"),
    ],
    ids=["heartbeat", "append", "transfer-vote"],
)
def test_valid_peer_message_changes_state(msg: Message) -> None:
    # The control for the test above: `observable` does see these changes.
    node, _ = follower_at_term_5()
    before = observable(node)
    assert node.step(msg) is None
    assert observable(node) != before


def test_stale_term_message_is_dropped_without_state_change() -> None:
    node, _ = follower_at_term_5()
    before = observable(node)
    reason = node.step(Message(MsgType.VOTE, to=1, from_=3, term=4, index=9, log_term=4))
    assert reason == "stale term"
    assert observable(node)[:7] == before[:7]


_types = st.sampled_from([t for t in MsgType])
_small = st.integers(min_value=-2, max_value=12)


@st.composite
def peer_messages(draw: st.DrawFn) -> Message:
    t = draw(_types)
    index = draw(_small)
    n = draw(st.integers(0, 3))
    term = draw(_small)
    ents = tuple(Entry(draw(st.integers(0, 12)), index + 1 + i, data=b"f") for i in range(n))
    snap = None
    if draw(st.booleans()):
        snap = Snapshot(SnapshotMeta(draw(_small), draw(_small), ConfState((1, 2, 3))), b"0:")
    return Message(
        t,
        to=draw(st.sampled_from([1, 1, 1, 2])),
        from_=draw(st.sampled_from([0, 1, 2, 3, 4])),
        term=term,
        log_term=draw(_small),
        index=index,
        entries=ents,
        commit=draw(_small),
        reject=draw(st.booleans()),
        reject_hint=draw(_small),
        context=draw(st.sampled_from([b"", b"r1", b"transfer"])),
        snapshot=snap,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(peer_messages(), max_size=6))
def test_step_never_raises_for_peer_input(msgs: list[Message]) -> None:
    """§8.5(b): whatever a peer sends, `step` answers with None or a reason."""
    node, s = new_node()
    for m in msgs:
        reason = node.step(m)
        assert reason is None or isinstance(reason, str)
        drain(node, s)
    assert node.core.role in set(Role)
