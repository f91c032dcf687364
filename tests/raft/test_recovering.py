"""A replica that lost its disk must not vote until it has its log back.

Raft's safety rests on two promises a voter keeps on disk: the vote it cast
in each term, and every entry it acknowledged. A node rebuilt with an empty
data dir has forgotten both. These tests drive the simulator through the
story where that loses a committed, applied entry (the SafetyChecker's
leader-completeness check catches it), then show that a rebuilt replica
started with `RaftConfig.recovering` and a term floor (what
prkdb/server/rebuild.py does) keeps it.
"""

from __future__ import annotations

import pytest

from prkdb.raft import HardState, MemoryStorage, Message, MsgType, RaftConfig, RawNode
from tests.raft.network import Network, SafetyViolation

E = 10


def _commit_entries_on_1_and_2(net: Network) -> int:
    """Leader 1 commits and applies entries only nodes 1 and 2 hold; returns the last index."""
    net.campaign(1)
    assert net.leader() == 1
    net.cut(1, 3)  # node 3 never sees the entries below
    for i in range(5):
        net.propose(1, f"w{i}".encode())
    net.deliver()
    net.tick_all(1)  # commit news reaches node 2
    last = net.nodes[1].raw.core.log.last_index()
    assert net.committed(1) == last and net.committed(2) == last
    assert net.checker.max_applied == last  # applied (and answered) at the leader
    assert net.committed(3) < last
    return last


def _wipe(net: Network, node: int, *, recovering: bool, term_floor: int = 0) -> None:
    """Crash `node` and restart it on an empty disk (optionally as a recovering replica)."""
    n = net.nodes[node]
    net.crash(node)
    n.storage = MemoryStorage(n.voters)
    if term_floor:
        # The vote of the floor term is "spent" on ourselves: we never grant it.
        n.storage.set_hard_state(HardState(term_floor, node, 0))
    n.config_kw = {**n.config_kw, "recovering": recovering}
    net.restart(node)


@pytest.mark.parametrize("seed", range(5))
def test_a_wiped_voter_that_votes_at_once_loses_a_committed_entry(seed: int) -> None:
    # The hazard itself: without recovery the checker must see the loss
    # (if this stops raising, the test below proves nothing).
    net = Network(3, seed=seed, election_ticks=E)
    _commit_entries_on_1_and_2(net)
    _wipe(net, 2, recovering=False)
    net.crash(1)  # the only other copy of the entries
    net.heal()
    with pytest.raises(SafetyViolation, match="leader completeness"):
        net.wait_for_leader(20 * E, among=(2, 3))


@pytest.mark.parametrize("seed", range(5))
def test_a_recovering_replica_waits_for_its_log_before_voting(seed: int) -> None:
    net = Network(3, seed=seed, election_ticks=E)
    last = _commit_entries_on_1_and_2(net)
    target = net.committed(1)  # the highest commit index a survey of the peers reports
    floor = max(net.term(1), net.term(3))
    _wipe(net, 2, recovering=True, term_floor=floor)
    net.crash(1)
    net.heal()
    # Nodes 2 and 3 are a majority, but 2 neither votes nor campaigns: no
    # leader, so nobody can be elected without the entries 1 holds.
    net.tick_all(20 * E)
    assert net.leaders() == []
    assert net.nodes[2].raw.recovering
    # Node 1 comes back: it is elected (3's vote), and 2 gets the log back.
    net.restart(1)
    net.wait_for_leader(20 * E, among=(1, 2, 3))
    assert net.leader() == 1
    net.tick_all(2 * E)
    assert net.committed(2) >= target
    assert net.log_entries(2)[: last] == net.log_entries(1)[: last]
    net.nodes[2].raw.end_recovery()
    assert not net.nodes[2].raw.recovering
    # Recovered, it votes again: after 1 fails, 2 or 3 takes over with every entry.
    net.crash(1)
    net.wait_for_leader(20 * E, among=(2, 3))
    assert net.leader() in (2, 3)


def _core(recovering: bool, hs: HardState | None = None) -> RawNode:
    storage = MemoryStorage((1, 2, 3))
    if hs is not None:
        storage.set_hard_state(hs)
    return RawNode(RaftConfig(id=2, peers=(1, 2, 3), recovering=recovering,
                              election_ticks=E), storage)


def _vote_answers(raw: RawNode) -> list[Message]:
    rd = raw.ready()
    out = [m for m in (*rd.messages, *rd.messages_after_persist)
           if m.type in (MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP)]
    raw.advance(rd)
    return out


@pytest.mark.parametrize("kind", [MsgType.VOTE, MsgType.PRE_VOTE])
def test_recovering_rejects_votes_and_prevotes_then_grants_after_recovery(kind: MsgType) -> None:
    raw = _core(recovering=True)
    raw.step(Message(kind, to=2, from_=3, term=1, index=0, log_term=0))
    answers = _vote_answers(raw)
    assert [m.reject for m in answers] == [True]
    raw.end_recovery()
    raw.step(Message(kind, to=2, from_=3, term=2, index=0, log_term=0))
    answers = _vote_answers(raw)
    assert [m.reject for m in answers] == [False]


def test_recovering_never_campaigns_even_when_asked() -> None:
    raw = _core(recovering=True)
    for _ in range(5 * E):
        raw.tick()
    raw.campaign()
    raw.step(Message(MsgType.TIMEOUT_NOW, to=2, from_=1, term=0))
    sent = raw.ready().messages if raw.has_ready() else ()
    assert not [m for m in sent if m.type in (MsgType.VOTE, MsgType.PRE_VOTE)]
    assert raw.core.term == 0


def test_the_term_floor_vote_is_never_granted_after_recovery() -> None:
    # The floor is the highest term any peer reported: a vote we may have cast
    # before the wipe was in a term no higher, so we never grant one there.
    raw = _core(recovering=True, hs=HardState(5, 2, 0))
    raw.end_recovery()
    raw.step(Message(MsgType.VOTE, to=2, from_=3, term=5, index=0, log_term=0))
    assert [m.reject for m in _vote_answers(raw)] == [True]
    raw.step(Message(MsgType.VOTE, to=2, from_=3, term=6, index=0, log_term=0))
    assert [m.reject for m in _vote_answers(raw)] == [False]


def test_a_recovering_replica_still_appends_and_acknowledges() -> None:
    raw = _core(recovering=True)
    raw.step(Message(MsgType.APP, to=2, from_=1, term=1, index=0, log_term=0, commit=0,
                     entries=()))
    rd = raw.ready()
    acks = [m for m in rd.messages_after_persist if m.type == MsgType.APP_RESP]
    assert acks and not acks[0].reject
    assert raw.core.lead == 1


def _holders(net: Network, index: int, term: int) -> int:
    """How many nodes hold entry (index, term) durably."""
    n = 0
    for node in net.nodes.values():
        st = node.storage
        if st.first_index() <= index <= st.last_index() and st.term(index) == term:
            n += 1
    return n


def _assert_committed_on_majority(net: Network, leader: int) -> None:
    core = net.nodes[leader].raw.core
    for i in range(1, core.log.committed + 1):
        held = _holders(net, i, core.log.term(i))
        assert held >= 2, f"entry {i} is committed at node {leader} but held by {held} node(s)"


@pytest.mark.parametrize("fence", [False, True])
def test_an_ack_of_the_wiped_process_arriving_late_is_forgotten(fence: bool) -> None:
    # Node 3 acks entry e, the ack is still in flight (unread at the leader)
    # when node 3 is wiped and rebuilt. Counted afterwards, it would commit e
    # although only the leader holds it: RebuildFence makes the leader forget
    # node 3's acks (Node.fence_peer drops the unread ones with the connection).
    net = Network(3, seed=1, election_ticks=E)
    net.campaign(1)
    net.tick_all(1)
    held: list[Message] = []

    def hold_acks_of_3(m: Message) -> bool:
        if m.from_ == 3 and m.type == MsgType.APP_RESP:
            held.append(m)
            return False
        return True

    net.cut(1, 2)
    net.msg_hook = hold_acks_of_3
    index = net.propose(1, b"e")[1]
    net.deliver()
    net.msg_hook = None
    assert held and net.committed(1) < index
    floor = max(net.term(1), net.term(2))
    _wipe(net, 3, recovering=True, term_floor=floor)
    net.cut(1, 3)  # nothing reaches the new node 3 yet
    if fence:
        net.nodes[1].raw.forget_acks(3)
        held.clear()  # the connection they were on is gone
    for m in held:  # the old process's ack, read late (it was sent before the cut)
        net.nodes[1].raw.step(m)
        net.nodes[1].process()
    if fence:
        assert net.committed(1) < index
        _assert_committed_on_majority(net, 1)
        assert net.nodes[1].raw.core.progress[3].match == 0
    else:
        assert net.committed(1) >= index  # counted...
        with pytest.raises(AssertionError, match="held by 1 node"):
            _assert_committed_on_majority(net, 1)  # ...but only the leader has it
    # Either way, once node 3 really has the log, e commits on a true majority.
    net.heal()
    net.tick_all(3 * E)
    assert net.committed(1) >= index
    _assert_committed_on_majority(net, 1)


def test_forget_acks_is_a_leader_only_no_op_elsewhere() -> None:
    net = Network(3, seed=2, election_ticks=E)
    net.campaign(1)
    net.tick_all(1)
    net.nodes[2].raw.forget_acks(3)  # a follower counts no acks: nothing to forget
    net.nodes[1].raw.forget_acks(1)  # never our own
    assert net.nodes[1].raw.core.progress[1].match > 0
    net.nodes[1].raw.forget_acks(3)
    assert net.nodes[1].raw.core.progress[3].match == 0
