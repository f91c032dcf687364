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
    NotLeaderError,
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
    with pytest.raises(NotLeaderError):
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


# -- 7. leadership transfer ----------------------------------------------------
def test_transfer_to_up_to_date_follower_is_immediate() -> None:
    """Thesis §3.10: TimeoutNow goes out at once when the target's log is current."""
    net = Network(3, seed=8)
    lead = stable_leader(net)
    term = net.term(lead)
    target = next(i for i in net.ids if i != lead)
    core = net.nodes[lead].raw.core
    assert core.progress[target].match == core.log.last_index()
    sent = record_sends(net)
    net.nodes[lead].raw.transfer_leadership(target)
    net.nodes[lead].process()
    assert [(m.type, m.to) for m in sent] == [(MsgType.TIMEOUT_NOW, target)]
    net.deliver()
    assert net.leader() == target
    assert net.term(target) == term + 1
    assert net.nodes[lead].raw.core.role == Role.FOLLOWER
    # The transfer skipped pre-vote: one real election, nothing else.
    assert sum(1 for m in sent if m.type == MsgType.PRE_VOTE) == 0


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    net = Network(3, seed=9)
    lead = stable_leader(net)
    term = net.term(lead)
    target = next(i for i in net.ids if i != lead)
    core = net.nodes[lead].raw.core
    net.cut(lead, target)
    for k in range(10):
        net.propose(lead, b"lag%d" % k)
    net.deliver()
    net.heal()
    last = core.log.last_index()
    assert core.progress[target].match == last - 10

    seen: list[tuple[int, int]] = []  # (target match, leader last) when TIMEOUT_NOW was sent
    sent = record_sends(net)
    orig = net.send_all

    def send_all(msgs):  # type: ignore[no-untyped-def]
        for m in msgs:
            if m.type == MsgType.TIMEOUT_NOW:
                seen.append((core.progress[target].match, core.log.last_index()))
        orig(msgs)

    net.send_all = send_all  # type: ignore[method-assign]
    net.nodes[lead].raw.transfer_leadership(target)
    net.nodes[lead].process()
    assert seen == []  # not yet: the target lacks 10 entries
    with pytest.raises(ProposalDropped):
        net.propose(lead, b"during-transfer")
    net.deliver()
    assert seen == [(last, last)]
    assert any(m.type == MsgType.APP and m.to == target and m.entries for m in sent)
    assert net.leader() == target
    assert net.term(target) == term + 1
    assert net.log_entries(target)[:last] == net.log_entries(lead)[:last]


def test_transfer_to_unreachable_follower_aborts_after_election_timeout() -> None:
    net = Network(3, seed=10)
    lead = stable_leader(net)
    term = net.term(lead)
    target = next(i for i in net.ids if i != lead)
    net.isolate(target)
    net.nodes[lead].raw.transfer_leadership(target)
    net.nodes[lead].process()
    assert net.nodes[lead].raw.core.lead_transferee == target
    with pytest.raises(ProposalDropped, match="leadership transfer"):
        net.propose(lead, b"refused")
    aborted_at = None
    for t in range(1, 2 * E):
        net.tick_all(1)
        if net.nodes[lead].raw.core.lead_transferee == 0:
            aborted_at = t
            break
    assert aborted_at == E
    assert net.leader() == lead and net.term(lead) == term
    _, idx = net.propose(lead, b"accepted-again")
    net.deliver()
    assert net.committed(lead) == idx
    other = next(i for i in net.ids if i not in (lead, target))
    assert net.applied_data(other)[-1] == b"accepted-again"
    assert b"refused" not in net.applied_data(lead)


# -- 8. snapshots ----------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed{s}")
def test_far_behind_follower_catches_up_by_snapshot(seed: int) -> None:
    net = Network(3, seed=seed)
    lead = stable_leader(net)
    down = next(i for i in net.ids if i != lead)
    net.crash(down)
    for k in range(60):
        net.propose(lead, b"v%d" % k)
        if k % 10 == 9:
            net.tick_all(1)
    net.tick_all(H)
    for i in net.ids:
        if i != down:
            net.nodes[i].maybe_compact(20)
    first = net.nodes[lead].storage.first_index()
    assert first > net.nodes[down].raw.core.log.last_index() + 1  # the gap is compacted
    net.sent.clear()
    net.restart(down)
    net.tick_all(3 * E)
    assert net.sent[MsgType.SNAP] == 1
    assert net.nodes[down].storage.snapshot().meta.index == first - 1
    assert net.nodes[down].applied_index == net.nodes[lead].applied_index == net.committed(lead)
    assert {net.nodes[i].chain for i in net.ids} == {net.nodes[lead].chain}
    # And it keeps replicating normally afterwards.
    _, idx = net.propose(lead, b"after")
    net.tick_all(H)
    assert net.nodes[down].applied_index == idx
    assert {net.nodes[i].chain for i in net.ids} == {net.nodes[lead].chain}


# -- 9. flow control ---------------------------------------------------------------
def test_flow_control_bounds_traffic_to_a_dead_follower() -> None:
    """Thesis §10.2.1: pipelining is bounded by the inflight window, then by probing."""
    max_inflight = 4
    net = Network(3, seed=11, max_inflight_msgs=max_inflight, max_size_per_msg=64)
    lead = stable_leader(net)
    dead = next(i for i in net.ids if i != lead)
    core = net.nodes[lead].raw.core
    assert core.progress[dead].state == ProgressState.REPLICATE
    net.crash(dead)
    sent = record_sends(net)
    for k in range(100):
        net.propose(lead, b"x" * 40 + b"%d" % k)
        assert core.progress[dead].inflights.count() <= max_inflight
        if k % 5 == 4:
            net.tick_all(1)
    net.tick_all(H)
    to_dead = [m for m in sent if m.to == dead]
    apps = [m for m in to_dead if m.type == MsgType.APP]
    # 100 entries of ~56 bytes, 64-byte messages: one entry each. Only the
    # first window's worth was ever sent to the dead follower.
    assert len(apps) == max_inflight
    assert all(len(m.entries) == 1 for m in apps)
    assert core.progress[dead].inflights.full()
    heartbeats = [m for m in to_dead if m.type == MsgType.HEARTBEAT]
    ticks = 100 // 5 + H
    assert len(heartbeats) == ticks // H
    assert net.committed(lead) == core.log.last_index()  # the live majority committed all

    # Once the driver reports it unreachable, the leader probes: one append per
    # heartbeat at most, and with no answer not even that.
    net.nodes[lead].raw.report_unreachable(dead)
    assert core.progress[dead].state == ProgressState.PROBE
    sent.clear()
    for k in range(20):
        net.propose(lead, b"y%d" % k)
    net.tick_all(10 * H)
    apps = [m for m in sent if m.to == dead and m.type == MsgType.APP]
    assert len(apps) == 1
    assert len([m for m in sent if m.to == dead and m.type == MsgType.HEARTBEAT]) == 10

    # It comes back: the window reopens and it catches up.
    net.restart(dead)
    net.tick_all(3 * H)
    assert net.nodes[dead].applied_index == net.committed(lead)
    assert core.progress[dead].state == ProgressState.REPLICATE


def test_max_uncommitted_size_drops_proposals_without_a_quorum() -> None:
    net = Network(3, seed=12, max_uncommitted_size=100)
    lead = stable_leader(net)
    others = [i for i in net.ids if i != lead]
    for i in others:
        net.crash(i)
    accepted = 0
    with pytest.raises(ProposalDropped, match="uncommitted"):
        for _ in range(10):
            net.propose(lead, b"z" * 30)
            accepted += 1
    # 30 + 30 + 30 = 90 <= 100; a fourth would make 120.
    assert accepted == 3
    assert net.nodes[lead].raw.core.uncommitted_size == 90
    for i in others:
        net.restart(i)
    net.tick_all(2 * H)
    assert net.nodes[lead].raw.core.uncommitted_size == 0
    _, idx = net.propose(lead, b"z" * 30)
    net.tick_all(H)
    assert net.committed(lead) == idx
    assert net.applied_data(lead).count(b"z" * 30) == 4


# -- duplicates and random faults --------------------------------------------------
@pytest.mark.parametrize("seed", range(6), ids=lambda s: f"seed{s}")
def test_duplicated_and_dropped_messages_stay_safe(seed: int) -> None:
    """The checker watches every step; duplicates and drops must not break safety."""
    net = Network(5, seed=seed)
    net.dup_rate = 0.3
    net.drop_rate = 0.05
    proposed = 0
    for step in range(300):
        net.tick_all(1, deliver=False)
        net.deliver_random(40)
        lead = net.leader()
        if lead and step % 3 == 0:
            try:
                net.propose(lead, b"d%d" % step)
                proposed += 1
            except ProposalDropped:
                pass
        if step % 50 == 25:
            net.read(net.ids[step % 5])
    net.dup_rate = net.drop_rate = 0.0
    net.heal()
    net.tick_all(5 * E)
    lead = net.leader()
    assert lead
    assert proposed > 50
    assert {net.committed(i) for i in net.ids} == {net.committed(lead)}
    assert {net.nodes[i].chain for i in net.ids} == {net.nodes[lead].chain}
    assert net.checker.max_applied == net.committed(lead)
    assert len(net.checker.leaders) >= 1


# --- fast failover ---------------------------------------------------------------------


def _ticks_to_new_leader(report: bool, seed: int) -> int:
    net = Network(5, seed=seed)
    net.wait_for_leader(100)
    old = net.leader()
    net.crash(old)
    if report:
        for i in net.ids:
            if i != old:
                net.nodes[i].raw.report_peer_down(old)
                net.nodes[i].process()
    others = [i for i in net.ids if i != old]
    # Real nodes' tickers are not in phase: tick one node at a time and let
    # its messages land before the next one ticks.
    for t in range(200):
        leaders = [i for i in net.leaders() if i in others]
        if leaders:
            return t
        for i in others:
            net.tick(i)
            net.deliver()
    raise AssertionError("no new leader")


@pytest.mark.parametrize("seed", range(8))
def test_fast_failover_when_the_leader_process_dies(seed: int) -> None:
    """Followers that see the leader's connection close campaign within a few ticks,
    and grant each other's pre-votes despite the (now void) leader lease."""
    fast = _ticks_to_new_leader(True, seed)
    slow = _ticks_to_new_leader(False, seed)
    # 1-3 ticks of jitter, then one pre-vote and one vote round.
    assert fast <= 5, fast
    # Without the report the lease and the election timeout (10 ticks) must run out.
    assert slow >= 10, slow


def test_peer_down_report_about_a_live_leader_does_not_disrupt() -> None:
    net = Network(3, seed=11)
    net.wait_for_leader(100)
    lead = net.leader()
    term = net.term(lead)
    follower = next(i for i in net.ids if i != lead)
    net.nodes[follower].raw.report_peer_down(lead)
    net.nodes[follower].process()
    net.tick_all(50)
    # The other follower still heard the leader: it rejects the pre-vote,
    # and the leader's heartbeats bring the reporter back.
    assert net.leader() == lead
    assert net.term(lead) == term
    assert net.nodes[follower].raw.core.lead == lead
