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

import dataclasses

import pytest

from prkdb.raft import (
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MsgType,
    NotLeader,
    Role,
)
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


# -- 4. log repair in O(terms) ----------------------------------------------
def test_log_repair_is_o_terms_not_o_entries() -> None:
    """Thesis §5.3 / etcd findConflictByTerm: each rejection skips a whole term.

    Node 3's log diverges from index 11 on over four old terms of 50 entries
    each, interleaved with the leader's terms so that every probe lands in a
    fresh conflict. Entry-by-entry backtracking would need ~200 round trips;
    the conflict hint needs one per divergent term.
    """
    net = Network(3, seed=1, pre_vote=False, check_quorum=False)
    per, prefix = 50, 10
    leader_terms = [1] * prefix + [3] * per + [5] * per + [7] * per + [9] * per
    follower_terms = [1] * prefix + [2] * per + [4] * per + [6] * per + [8] * per
    install_log(net, 1, leader_terms, hs_term=9, commit=prefix)
    install_log(net, 2, leader_terms, hs_term=9, commit=prefix)
    install_log(net, 3, follower_terms, hs_term=8, commit=prefix)
    assert net.committed(3) == prefix and net.nodes[3].applied_index == prefix

    sent = record_sends(net)
    net.campaign(1)
    assert net.leader() == 1 and net.term(1) == 10
    last = net.nodes[1].raw.core.log.last_index()
    assert last == prefix + 4 * per + 1  # + the no-op

    to3 = [m for m in sent if m.to == 3 and m.type == MsgType.APP]
    rejects = [m for m in sent if m.from_ == 3 and m.type == MsgType.APP_RESP and m.reject]
    # Exactly one rejection per divergent term (4), never one per entry (200):
    # each hint names the last index of the follower's next-older term.
    assert [(m.reject_hint, m.log_term) for m in rejects] == [(210, 8), (160, 6), (110, 4), (60, 2)]
    # 4 rejected probes + the matching one + one more carrying the commit index.
    assert len(to3) == len(rejects) + 2
    assert log_terms(net, 3) == log_terms(net, 1)
    assert net.committed(3) == last
    assert net.nodes[3].chain == net.nodes[1].chain


# -- 5. Figure 8 ---------------------------------------------------------------
def _figure8(net: Network) -> None:
    """Figure 8 (c): S1 leads term 4 with 2/2 on S1..S3, S5 holds 2/3 and is down.

    Every AppendEntries carries one entry (max_size_per_msg=1), and the hook
    delivers the ones carrying term-4 entries with those entries stripped (an
    empty append at the same position), so index 2 (term 2) reaches a majority
    while no entry of the current term does.
    """
    install_log(net, 1, [1, 2], hs_term=3, commit=1)
    install_log(net, 2, [1, 2], hs_term=3, commit=1)
    install_log(net, 3, [1], hs_term=3, commit=1)
    install_log(net, 4, [1], hs_term=3, commit=1)
    install_log(net, 5, [1, 3], hs_term=3, commit=1)
    net.crash(5)

    def hook(m: Message) -> bool:
        if not any(e.term == 4 for e in m.entries):
            return True
        node = net.nodes[m.to]
        node.raw.step(dataclasses.replace(m, entries=()))
        node.process()
        return False

    net.msg_hook = hook
    net.campaign(1)
    assert net.leader() == 1 and net.term(1) == 4
    net.tick_all(3 * H)


def test_figure8_old_term_entry_is_not_committed_by_counting() -> None:
    """§5.4.2: 'Raft never commits log entries from previous terms by counting replicas.'"""
    net = Network(5, seed=2, pre_vote=False, check_quorum=False, max_size_per_msg=1)
    _figure8(net)
    core = net.nodes[1].raw.core
    holders = [i for i in (1, 2, 3, 4) if net.nodes[i].raw.core.log.term(2) == 2]
    assert holders == [1, 2, 3, 4]  # a majority of 5 stores 2/2...
    assert core.progress[3].match == 2 and core.progress[4].match == 2
    assert {net.committed(i) for i in (1, 2, 3, 4)} == {1}  # ...and it is not committed

    # (d) S1 crashes; S5 (last log term 3 > 2) wins with S2..S4 and overwrites
    # index 2. Had 2/2 been committed and applied, the checker would raise here.
    net.crash(1)
    net.msg_hook = None
    net.restart(5)
    for _ in range(3):
        net.campaign(5)
        if net.leader() == 5:
            break
    assert net.leader() == 5
    net.tick_all(H)
    for i in (2, 3, 4, 5):
        assert net.nodes[i].raw.core.log.term(2) == 3
        assert net.committed(i) == 3
    assert net.checker.applied[2][0] == 3


def test_figure8_old_term_entry_commits_with_a_current_term_entry() -> None:
    """(e): once an entry of term 4 is on a majority, 2/2 commits with it, not before."""
    net = Network(5, seed=2, pre_vote=False, check_quorum=False, max_size_per_msg=1)
    _figure8(net)
    assert net.committed(1) == 1
    core = net.nodes[1].raw.core
    seen: list[tuple[int, int]] = []  # (replicas of 3/4 acked, leader commit) per ack

    def hook(m: Message) -> bool:
        if m.to == 1 and m.type == MsgType.APP_RESP and not m.reject:
            acked = sum(1 for v, pr in core.progress.items() if pr.match >= 3)
            seen.append((acked, core.log.committed))
        return True

    net.msg_hook = hook
    net.tick_all(3 * H)
    assert net.committed(1) == 3
    # The leader's commit stayed at 1 while fewer than 3 of 5 nodes had 3/4.
    assert all(c == 1 for acked, c in seen if acked < 3)
    assert seen and seen[-1][1] == 3
    for i in (1, 2, 3, 4):
        assert net.nodes[i].raw.core.log.term(2) == 2
    assert net.checker.applied[2] == (2, entry_data(2, 2))


# -- 6. ReadIndex --------------------------------------------------------------
def served_contexts(net: Network) -> set[bytes]:
    return {r.context for n in net.nodes.values() for r in n.served}


@pytest.mark.parametrize("check_quorum", [True, False], ids=["checkquorum", "no-checkquorum"])
def test_read_on_deposed_partitioned_leader_is_never_served(check_quorum: bool) -> None:
    """Thesis §6.4: a leader must confirm it still leads before serving a read."""
    net = Network(5, seed=4, check_quorum=check_quorum)
    lead = stable_leader(net)
    buddy = next(i for i in net.ids if i != lead)
    majority = [i for i in net.ids if i not in (lead, buddy)]
    net.partition([lead, buddy], majority)
    ctx = net.read(lead)
    assert ctx is not None  # accepted: it still believes it leads
    net.wait_for_leader(6 * E, among=majority)
    new = net.leader()
    _, idx = net.propose(new, b"newer")
    net.tick_all(5 * E)
    assert all(net.committed(i) >= idx for i in majority)
    assert ctx not in served_contexts(net)
    net.heal()
    net.tick_all(3 * E)
    assert net.leader() == new
    assert ctx not in served_contexts(net)
    assert net.nodes[lead].served == []


@pytest.mark.parametrize("n_reads", [1, 5, 20], ids=lambda k: f"{k}reads")
@pytest.mark.parametrize("n", [3, 5], ids=["3nodes", "5nodes"])
def test_batch_of_reads_shares_one_heartbeat_round(n: int, n_reads: int) -> None:
    net = Network(n, seed=5)
    lead = stable_leader(net)
    node = net.nodes[lead]
    commit = net.committed(lead)
    net.sent.clear()
    ctxs = [f"batch-{k}".encode() for k in range(n_reads)]
    for ctx in ctxs:  # all arrive before the driver takes the next Ready
        node.raw.read_index(ctx)
        node.read_waiting[ctx] = net.checker.max_commit
    node.process()
    assert net.sent[MsgType.HEARTBEAT] == n - 1
    net.deliver()
    assert net.sent[MsgType.HEARTBEAT] == n - 1
    assert net.sent[MsgType.HEARTBEAT_RESP] == n - 1
    assert sorted(r.context for r in node.served) == sorted(ctxs)
    assert {r.index for r in node.served} == {commit}


def test_follower_read_is_forwarded_and_linearizable() -> None:
    net = Network(3, seed=6)
    lead = stable_leader(net)
    follower = next(i for i in net.ids if i != lead)
    net.cut(lead, follower)
    for k in range(3):
        net.propose(lead, b"w%d" % k)
    net.deliver()
    net.heal()
    # Committed by the other two; the follower lags 3 entries behind when it reads.
    commit_at_issue = net.committed(lead)
    assert net.committed(follower) == commit_at_issue - 3
    net.sent.clear()
    ctx = net.read(follower)
    assert ctx is not None
    net.deliver()
    assert net.sent[MsgType.READ_INDEX] == 1
    assert net.sent[MsgType.READ_INDEX_RESP] == 1
    [read] = net.nodes[follower].served
    assert read.context == ctx
    assert read.index >= commit_at_issue
    assert net.nodes[follower].applied_index >= read.index


def test_read_on_new_leader_waits_for_its_noop_to_commit() -> None:
    """Thesis §6.4 step 1: a fresh leader's commit index may be stale until its no-op commits."""
    net = Network(3, seed=7, pre_vote=False, check_quorum=False)
    old = stable_leader(net)
    new = next(i for i in net.ids if i != old)
    net.msg_hook = lambda m: not (m.from_ == new and m.type == MsgType.APP)
    net.campaign(new)
    assert net.leader() == new
    noop_index = net.nodes[new].raw.core.log.last_index()
    assert net.committed(new) < noop_index
    net.sent.clear()
    ctx = net.read(new)
    assert ctx is not None
    net.tick_all(4 * H)
    assert ctx not in served_contexts(net)
    # Plain heartbeats went out, but none carried the read's context.
    assert net.sent[MsgType.HEARTBEAT] > 0
    assert net.nodes[new].raw.core.read_only.pending == {}
    net.msg_hook = None
    net.tick_all(H)
    assert net.committed(new) >= noop_index
    [read] = net.nodes[new].served
    assert read.context == ctx and read.index >= noop_index
