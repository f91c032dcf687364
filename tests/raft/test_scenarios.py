"""Named Raft scenarios on the deterministic simulator (tests/raft/network.py).

Each test drives a `Network` of real `RawNode`s through a story from the Raft
paper or thesis and asserts concrete numbers (ticks, terms, indexes, message
counts). The network's `SafetyChecker` runs throughout, so every scenario is
also a safety test: a stale read, a lost committed entry or two leaders in a
term raise `SafetyViolation` wherever they happen.

Timing facts the bounds below rely on (RaftConfig, core.py):
- a follower campaigns after a randomized timeout in [e, 2e-1] ticks without
  hearing from a leader (e = election_ticks);
- a leader heartbeats every h = heartbeat_ticks ticks;
- with CheckQuorum the leader checks every tick that a majority was heard
  from within the last e ticks.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from prkdb.raft import (
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    Role,
)
from prkdb.raft.tracker import ProgressState
from tests.raft.network import Network

E = 10  # election_ticks used throughout
H = 2  # heartbeat_ticks used throughout


# -- helpers -----------------------------------------------------------------
def record_sends(net: Network) -> list[Message]:
    """Capture every message any node sends from now on (before faults apply)."""
    sent: list[Message] = []
    orig = net.send_all

    def send_all(msgs):  # type: ignore[no-untyped-def]
        msgs = list(msgs)
        sent.extend(msgs)
        orig(msgs)

    net.send_all = send_all  # type: ignore[method-assign]
    return sent


def entry_data(index: int, term: int) -> bytes:
    # Same (index, term) => same data everywhere: crafted logs obey log matching.
    return f"{index}/{term}".encode()


def install_log(net: Network, node: int, terms: list[int], hs_term: int, commit: int) -> None:
    """Restart `node` from a crafted disk: entries 1.. with `terms`, and a hard state."""
    st = MemoryStorage(net.ids)
    st.append([Entry(t, i, data=entry_data(i, t)) for i, t in enumerate(terms, start=1)])
    st.set_hard_state(HardState(hs_term, 0, commit))
    sim = net.nodes[node]
    sim.storage = st
    sim.restart()


def log_terms(net: Network, node: int) -> list[int]:
    return [t for _, t, _ in net.log_entries(node)]


def stable_leader(net: Network) -> int:
    net.wait_for_leader(10 * E)
    net.tick_all(H)  # let the no-op commit everywhere
    return net.leader()


# -- 1. elections ------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12), ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("n", [3, 5], ids=["3nodes", "5nodes"])
def test_one_leader_and_reelection_after_leader_isolated(n: int, seed: int) -> None:
    """§5.2: one leader per term; a new one is elected once the old one is cut off.

    Bound: the followers last heard a heartbeat at most H ticks before the
    isolation; the first to time out does so within 2E-1 ticks of that, and a
    split pre-vote/vote costs at most one more randomized timeout. So
    H + 2*(2E-1) <= 2 * (2E) = 40 ticks.
    """
    net = Network(n, seed=seed, election_ticks=E, heartbeat_ticks=H)
    first = net.wait_for_leader(2 * 2 * E)
    assert first <= 2 * 2 * E
    assert len(net.leaders()) == 1
    old = net.leader()
    old_term = net.term(old)
    assert all(net.nodes[i].raw.core.lead == old for i in net.ids)
    assert {net.term(i) for i in net.ids} == {old_term}

    net.tick_all(3)
    net.isolate(old)
    rest = [i for i in net.ids if i != old]
    ticks = net.wait_for_leader(2 * 2 * E, among=rest)
    assert ticks <= 2 * 2 * E
    new = net.leader()
    assert new in rest
    assert net.term(new) > old_term
    # CheckQuorum: the isolated leader has stepped down by now too.
    assert net.nodes[old].raw.core.role != Role.LEADER
    assert [i for i in rest if net.nodes[i].raw.core.role == Role.LEADER] == [new]


def test_single_node_elects_itself_and_commits() -> None:
    net = Network(1, seed=3)
    ticks = net.wait_for_leader(2 * E)
    assert 1 <= ticks <= 2 * E - 1
    assert net.leader() == 1
    assert net.term(1) == 1
    _, idx = net.propose(1, b"solo")
    assert idx == 2  # after the no-op
    assert net.committed(1) == 2
    assert net.applied_data(1) == [b"solo"]
    assert net.sent[MsgType.APP] == 0  # nobody to talk to


# -- 2. Pre-Vote ---------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed{s}")
@pytest.mark.parametrize(
    "pre_vote", [True, False], ids=["prevote-no-disruption", "no-prevote-disrupts"]
)
def test_prevote_rejoining_follower_does_not_disrupt(pre_vote: bool, seed: int) -> None:
    """Thesis §9.6: a node that was partitioned away cannot depose a healthy leader.

    Without Pre-Vote (and without CheckQuorum's lease) the same node comes
    back with an inflated term and forces the whole cluster into a new term.
    """
    net = Network(3, seed=seed, pre_vote=pre_vote, check_quorum=pre_vote)
    lead = stable_leader(net)
    term = net.term(lead)
    victim = next(i for i in net.ids if i != lead)
    net.isolate(victim)
    net.tick_all(10 * E)
    assert net.leader() == lead
    if pre_vote:
        assert net.term(victim) == term  # failed pre-elections leave no trace
    else:
        # It campaigned once per randomized timeout: at least 100 / 19 times.
        assert net.term(victim) >= term + 10 * E // (2 * E - 1)
    net.heal()
    net.tick_all(3 * E)
    _, idx = net.propose(net.leader(), b"after-heal")
    net.tick_all(H)
    assert {net.committed(i) for i in net.ids} == {idx}
    if pre_vote:
        assert net.leader() == lead
        assert {net.term(i) for i in net.ids} == {term}
        assert max(net.checker.leaders) == term  # no election ever happened after
    else:
        # The rejoining node's higher term deposed the leader.
        assert net.term(net.leader()) > term
        assert net.term(lead) > term


# -- 3. CheckQuorum ------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed{s}")
def test_checkquorum_minority_leader_steps_down_and_loses_its_entries(seed: int) -> None:
    """Thesis §6.2: a leader that cannot reach a majority steps down within E ticks.

    What it appended in the minority never commits, is never applied, and is
    overwritten by the majority's log after the heal.
    """
    net = Network(5, seed=seed, election_ticks=E, heartbeat_ticks=H)
    lead = stable_leader(net)
    net.propose(lead, b"before")
    net.tick_all(H)
    pre_commit = net.committed(lead)
    assert {net.committed(i) for i in net.ids} == {pre_commit}
    term = net.term(lead)

    buddy = next(i for i in net.ids if i != lead)
    minority = [lead, buddy]
    majority = [i for i in net.ids if i not in minority]
    net.partition(minority, majority)
    lost = [b"lost-1", b"lost-2", b"lost-3"]
    for d in lost:
        net.propose(lead, d)
    net.deliver()
    assert net.committed(lead) == pre_commit

    # Count ticks until the minority leader steps down: within one election timeout.
    stepped = None
    for t in range(1, 2 * E):
        net.tick(lead)
        if net.nodes[lead].raw.core.role != Role.LEADER:
            stepped = t
            break
    assert stepped is not None and stepped <= E
    with pytest.raises(NotLeader):
        net.propose(lead, b"refused")

    net.wait_for_leader(4 * E, among=majority)
    new = net.leader()
    assert new in majority and net.term(new) > term
    _, won_idx = net.propose(new, b"won")
    net.tick_all(H)
    assert all(net.committed(i) >= won_idx for i in majority)
    # Nothing ever moved the minority's commit index past the split point.
    assert net.committed(lead) == pre_commit
    assert net.committed(buddy) == pre_commit

    net.heal()
    net.tick_all(2 * E)
    assert net.leader() == new
    logs = {i: net.log_entries(i) for i in net.ids}
    assert all(logs[i] == logs[new] for i in net.ids)
    datas = [d for _, _, d in logs[new]]
    assert not set(lost) & set(datas)
    assert b"won" in datas
    applied = {i: net.applied_data(i) for i in net.ids}
    assert all(applied[i] == applied[new] for i in net.ids)
    assert applied[new][-2:] == [b"before", b"won"]
    assert not {d for _, d in net.checker.applied.values()} & set(lost)
