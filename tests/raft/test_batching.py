"""Batching rules added for speed must never cost safety or liveness.

- At most one ReadIndex round is in flight per leader; reads arriving while
  it flies share the next round, and a lost round is recovered by the next
  regular heartbeat.
- A follower in sync does not acknowledge a commit-only append, but still
  rejects one that does not match its log.
- News of a new commit index leaves once per batch of messages, and not at
  all to a follower that an append of the same batch already told.
- A follower sends one ack for consecutive appends of one batch (acks are
  cumulative), and never folds a rejection into it.
"""

from __future__ import annotations

import dataclasses

from prkdb.raft import MsgType
from prkdb.raft.core import COMMIT_ONLY
from prkdb.raft.tracker import ProgressState
from tests.raft.network import Network


def _stable_leader(net: Network) -> int:
    net.wait_for_leader(200)
    net.tick_all(5)
    return net.leader()


def _read(net: Network, node: int, ctx: bytes) -> None:
    n = net.nodes[node]
    n.raw.read_index(ctx)
    n.read_waiting[ctx] = net.checker.max_commit
    n.process()


def test_reads_arriving_during_a_round_share_the_next_round() -> None:
    net = Network(3, seed=21)
    lead = _stable_leader(net)
    node = net.nodes[lead]
    net.sent.clear()
    _read(net, lead, b"first")
    assert net.sent[MsgType.HEARTBEAT] == 2  # round 1 is in flight
    for k in range(5):
        _read(net, lead, b"second-%d" % k)
    assert net.sent[MsgType.HEARTBEAT] == 2  # no new round while one flies
    net.deliver()
    # Round 1 confirmed "first"; then exactly one more round for the other five.
    assert net.sent[MsgType.HEARTBEAT] == 4
    served = sorted(r.context for r in node.served)
    assert served == sorted([b"first"] + [b"second-%d" % k for k in range(5)])


def test_a_lost_read_round_is_recovered_by_the_next_heartbeat() -> None:
    net = Network(3, seed=22)
    lead = _stable_leader(net)
    node = net.nodes[lead]
    net.msg_hook = lambda m: m.type != MsgType.HEARTBEAT  # the read round is lost
    _read(net, lead, b"lost-round")
    _read(net, lead, b"queued-behind-it")
    net.deliver()
    assert node.served == []
    net.msg_hook = None
    net.tick_all(3)  # one heartbeat interval (2 ticks) is enough
    assert sorted(r.context for r in node.served) == [b"lost-round", b"queued-behind-it"]


def test_commit_only_appends_are_not_acknowledged_when_in_sync() -> None:
    net = Network(3, seed=23)
    lead = _stable_leader(net)
    follower = next(i for i in net.ids if i != lead)
    net.propose(lead, b"x")
    sent = []
    net.msg_hook = lambda m: sent.append(m) or True
    net.deliver()
    commit_only = [m for m in sent if m.type == MsgType.APP and m.context == COMMIT_ONLY]
    assert commit_only, "the leader should have sent the new commit index"
    acked = [m for m in sent if m.type == MsgType.APP_RESP and m.from_ == follower]
    # One ack for the entry itself; none for the commit-only append that followed.
    assert len(acked) == 1 and not acked[0].reject
    assert net.committed(follower) == net.committed(lead)


def test_a_mismatched_commit_only_append_is_still_rejected() -> None:
    net = Network(3, seed=24)
    lead = _stable_leader(net)
    follower = next(i for i in net.ids if i != lead)
    core = net.nodes[lead].raw.core
    # Pretend the follower is further along than it is: the next commit-only
    # append names a prev index the follower lacks.
    net.nodes[follower].crash()
    net.queue = [m for m in net.queue if m.to != follower]
    for k in range(3):
        net.propose(lead, b"y%d" % k)
    net.deliver()
    net.nodes[follower].alive = True  # back without having received the entries
    pr = core.progress[follower]
    pr.become_replicate()
    pr.next = core.log.last_index() + 1
    sent = []
    net.msg_hook = lambda m: sent.append(m) or True
    net.propose(lead, b"z")
    net.deliver()
    rejects = [m for m in sent if m.type == MsgType.APP_RESP and m.from_ == follower and m.reject]
    assert rejects, "a follower missing entries must reject, commit-only or not"
    net.tick_all(10)
    assert net.committed(follower) == net.committed(lead)
    assert core.progress[follower].state == ProgressState.REPLICATE


def _acks_in_one_batch(net: Network, lead: int) -> None:
    """Deliver the queued appends to the followers and step all their acks
    into the leader without letting it take a Ready in between."""
    apps, net.queue = net.queue, []
    for m in apps:
        net.deliver_one(m)
    acks, net.queue = net.queue, []
    assert acks and {m.type for m in acks} == {MsgType.APP_RESP}
    for m in acks:
        net.nodes[lead].raw.step(m)


def test_commit_news_leaves_once_per_batch() -> None:
    net = Network(3, seed=25)
    lead = _stable_leader(net)
    followers = sorted(i for i in net.ids if i != lead)
    net.propose(lead, b"a")
    _, last = net.propose(lead, b"b")  # two rounds of appends in flight
    _acks_in_one_batch(net, lead)  # the commit advances twice in this batch
    rd = net.nodes[lead].raw.ready()
    apps = [m for m in rd.messages if m.type == MsgType.APP]
    # One commit-only append per follower (etcd's bcastAppend per advance
    # would send four), carrying the newest commit index.
    assert sorted(m.to for m in apps) == followers
    assert all(m.context == COMMIT_ONLY and not m.entries and m.commit == last for m in apps)


def test_no_commit_news_to_a_follower_an_append_already_told() -> None:
    net = Network(3, seed=26)
    lead = _stable_leader(net)
    followers = sorted(i for i in net.ids if i != lead)
    _, first = net.propose(lead, b"x")
    _acks_in_one_batch(net, lead)  # commit -> x ...
    net.nodes[lead].raw.propose(b"y")  # ... and new entries in the same batch
    rd = net.nodes[lead].raw.ready()
    apps = [m for m in rd.messages if m.type == MsgType.APP]
    # Just the appends of y, which carry the commit index of x.
    assert sorted(m.to for m in apps) == followers
    assert all(m.entries and m.commit == first and m.context != COMMIT_ONLY for m in apps)
    # And nothing is lost: once delivered, everyone commits both.
    node = net.nodes[lead]
    net.send_all(rd.messages)
    node._persist(rd)
    net.send_all(rd.messages_after_persist)
    node._apply(rd)
    node.raw.advance(rd)
    node._after_advance()
    node.process()
    net.deliver()
    net.tick_all(3)
    assert {net.committed(i) for i in net.ids} == {first + 1}


def test_consecutive_acks_of_one_batch_become_one() -> None:
    net = Network(3, seed=27)
    lead = _stable_leader(net)
    f = next(i for i in net.ids if i != lead)
    net.propose(lead, b"a")
    _, last = net.propose(lead, b"b")
    apps = [m for m in net.queue if m.to == f and m.type == MsgType.APP]
    net.queue = [m for m in net.queue if m.to != f]
    assert len(apps) == 2
    for m in apps:  # both arrive before the follower takes a Ready
        net.nodes[f].raw.step(m)
    rd = net.nodes[f].raw.ready()
    acks = [m for m in rd.messages_after_persist if m.type == MsgType.APP_RESP]
    assert [(m.to, m.index, m.reject) for m in acks] == [(lead, last, False)]


def test_a_rejection_is_never_folded_into_an_ack() -> None:
    net = Network(3, seed=28)
    lead = _stable_leader(net)
    f = next(i for i in net.ids if i != lead)
    _, idx = net.propose(lead, b"a")
    app = next(m for m in net.queue if m.to == f and m.type == MsgType.APP)
    net.queue = [m for m in net.queue if m.to != f]
    follower = net.nodes[f].raw
    follower.step(app)  # accepted: ack for idx
    # An append whose previous entry the follower does not have: rejected.
    gap = dataclasses.replace(app, index=idx + 5, log_term=app.log_term, entries=())
    follower.step(gap)
    rd = follower.ready()
    acks = [(m.index, m.reject) for m in rd.messages_after_persist
            if m.type == MsgType.APP_RESP]
    assert acks[0] == (idx, False) and acks[-1][1] is True and len(acks) == 2
