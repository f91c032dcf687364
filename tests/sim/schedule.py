"""Random fault schedules over the simulated network (tests/raft/network.py).

One schedule = one seed. Every random choice (which event, which node, which
messages get dropped, delayed, duplicated or reordered, each core's election
jitter) comes from that seed, so `run_schedule(seed)` replays a failure
exactly. The SafetyChecker inside the network raises on the first violation;
`run_schedule` adds the seed and the recent event trace to the error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prkdb.raft import HardState, MemoryStorage, ProposalDropped, Role
from prkdb.server.rebuild import Target
from tests.raft.network import Network, SimNode


@dataclass
class ScheduleStats:
    seed: int
    events: int = 0
    proposals: int = 0
    reads_served: int = 0
    crashes: int = 0
    wipes: int = 0
    rebuilt: int = 0
    partitions: int = 0
    max_term: int = 0
    committed: int = 0
    trace: list[str] = field(default_factory=list)


class ScheduleFailure(AssertionError):
    pass


def wipe_and_rebuild(net: Network, victim: int, targets: dict[int, Target], *,
                     safely: bool = True) -> None:
    """`victim` loses its disk and restarts empty, as prkdb/server/rebuild.py does it.

    The survey needs every other node (callers only wipe when all are up):
    each first fences the old process (leaders forget its acks; its unread
    messages go with the connection), then reports term and commit. The
    victim stores (max term, vote for itself, 0) and stays a recovering
    replica until its durable commit reaches its `Target` (rebuild.py). `safely=False`
    is plain Raft's "restart on an empty disk", for the checker's teeth.
    """
    node = net.nodes[victim]
    if node.alive:
        net.crash(victim)
    # Some of what the old process sent is read before the fence (and counts).
    for m in [m for m in net.queue if m.from_ == victim]:
        if net.rng.random() < 0.5:
            net.queue.remove(m)
            net.deliver_one(m)
    others = [net.nodes[i] for i in net.ids if i != victim]
    floor = 0
    target = Target(0, 0, 0)
    if safely:
        net.queue = [m for m in net.queue if m.from_ != victim]
        for o in others:
            o.raw.forget_acks(victim)
            o.process()
        floor = max(o.raw.core.term for o in others)
        commit = max(o.raw.core.log.committed for o in others)
        index = 0
        for o in others:
            core = o.raw.core
            if core.role == Role.LEADER and core.term == floor:
                index = core.progress[o.id].match
        target = Target(commit, index, floor)
    node.storage = MemoryStorage(node.voters)
    if floor:
        node.storage.set_hard_state(HardState(floor, victim, 0))
    recovering = safely and floor > 0
    node.config_kw = {**node.config_kw, "recovering": recovering}
    if recovering:
        targets[victim] = target
    net.restart(victim)


def _end_recoveries(targets: dict[int, Target], stats: ScheduleStats) -> object:
    """The driver's check after each persisted Ready (PartitionDriver._check_rebuilt)."""

    def hook(node: SimNode) -> None:
        target = targets.get(node.id)
        if target is None:
            return
        durable = node.storage.hard_state.commit
        if target.reached(durable, node.storage.term(durable), node.raw.core.term):
            node.raw.end_recovery()
            node.config_kw = {**node.config_kw, "recovering": False}
            del targets[node.id]
            stats.rebuilt += 1
    return hook


def run_schedule(
    seed: int,
    *,
    nodes: int = 5,
    events: int = 600,
    compact_every: int = 20,
    wipes: bool = True,
    wipe_safely: bool = True,
) -> ScheduleStats:
    net = Network(
        nodes,
        seed=seed,
        election_ticks=6,
        heartbeat_ticks=1,
        max_inflight_msgs=4,
        max_size_per_msg=64,
    )
    rng = net.rng
    net.drop_rate = rng.choice([0.0, 0.02, 0.1])
    net.dup_rate = rng.choice([0.0, 0.02])
    stats = ScheduleStats(seed)
    max_down = (nodes - 1) // 2
    recovering: dict[int, Target] = {}  # rebuilt node -> its target
    net.advance_hook = _end_recoveries(recovering, stats)  # type: ignore[assignment]
    proposal = 0
    try:
        for step in range(events):
            r = rng.random()
            alive = [i for i in net.ids if net.nodes[i].alive]
            if r < 0.30:
                for i in net.ids:
                    net.tick(i)
                stats.trace.append(f"{step}: tick")
            elif r < 0.55:
                net.deliver_random(rng.randint(1, 30))
            elif r < 0.70:
                target = rng.choice(net.leaders() or alive or [1])
                proposal += 1
                try:
                    net.propose(target, b"p%d" % proposal)
                    stats.proposals += 1
                except ProposalDropped:
                    pass
                stats.trace.append(f"{step}: propose p{proposal} at {target}")
            elif r < 0.78 and alive:
                target = rng.choice(alive)
                net.read(target)
                stats.trace.append(f"{step}: read at {target}")
            elif r < 0.82:
                a = rng.sample(net.ids, rng.randint(1, nodes // 2))
                net.heal()
                net.partition(a, [i for i in net.ids if i not in a])
                stats.partitions += 1
                stats.trace.append(f"{step}: partition {sorted(a)}")
            elif r < 0.86:
                net.heal()
                stats.trace.append(f"{step}: heal")
            elif r < 0.89 and len(net.ids) - len(alive) < max_down and alive:
                victim = rng.choice(alive)
                if rng.random() < 0.5:
                    net.crash(victim)
                else:
                    # Crash between sending a Ready's messages and persisting it.
                    # Deliver one message to it first: that Ready may hold a
                    # vote grant or append ack that never became durable.
                    node = net.nodes[victim]
                    inbox = [k for k, m in enumerate(net.queue) if m.to == victim]
                    if inbox:
                        node.raw.step(net.queue.pop(rng.choice(inbox)))
                    else:
                        node.raw.tick()
                    node.process(crash_mid_ready=True)
                    if node.alive:
                        net.crash(victim)
                    net.queue = [m for m in net.queue if m.to != victim]
                stats.crashes += 1
                stats.trace.append(f"{step}: crash {victim}")
                if rng.random() < 0.7:
                    # Its connections close: the others see it die (fast failover).
                    for i in net.ids:
                        if i != victim and net.nodes[i].alive:
                            net.nodes[i].raw.report_peer_down(victim)
                            net.nodes[i].process()
                    stats.trace.append(f"{step}: peers saw {victim} go down")
            elif r < 0.93:
                down = [i for i in net.ids if not net.nodes[i].alive]
                if down:
                    victim = rng.choice(down)
                    net.restart(victim)
                    stats.trace.append(f"{step}: restart {victim}")
            elif r < 0.945 and alive:
                # A spurious report (a connection reset with the peer alive):
                # must never break safety, at worst it costs a pre-vote.
                reporter, about = rng.choice(alive), rng.choice(net.ids)
                if reporter != about:
                    net.nodes[reporter].raw.report_peer_down(about)
                    net.nodes[reporter].process()
                    stats.trace.append(f"{step}: {reporter} told {about} is down")
            elif r < 0.96:
                for i in alive:
                    net.nodes[i].maybe_compact(compact_every)
                stats.trace.append(f"{step}: compact")
            elif r < 0.975:
                # A disk lost: only while every other node is up (the survey
                # waits for all of them) and nobody else is rebuilding.
                victim = rng.choice(net.ids)
                others_up = all(net.nodes[i].alive for i in net.ids if i != victim)
                if wipes and others_up and not recovering:
                    wipe_and_rebuild(net, victim, recovering, safely=wipe_safely)
                    stats.wipes += 1
                    stats.trace.append(f"{step}: wipe {victim} (target {recovering.get(victim)})")
            else:
                lead = net.leader()
                if lead:
                    to = rng.choice([i for i in net.ids if i != lead])
                    net.nodes[lead].raw.transfer_leadership(to)
                    net.nodes[lead].process()
                    stats.trace.append(f"{step}: transfer {lead}->{to}")
            if len(net.queue) > 500:
                net.queue = net.queue[-500:]  # a bounded network buffer drops the oldest
            stats.events += 1
        # Heal everything and let the cluster settle: it must converge.
        net.heal()
        net.drop_rate = net.dup_rate = 0.0
        for i in net.ids:
            if not net.nodes[i].alive:
                net.restart(i)
        for _ in range(10):
            net.wait_for_leader(20 * net.election_ticks)
            lead = net.leader()
            try:
                net.propose(lead, b"final")
                break
            except ProposalDropped:
                net.tick_all(1)  # e.g. a leadership transfer is still running
        else:
            raise AssertionError("the healed cluster never accepted a proposal")
        net.tick_all(6 * net.election_ticks)
        final = net.nodes[lead]
        for i in net.ids:
            node = net.nodes[i]
            if node.applied_index != final.applied_index or node.chain != final.chain:
                raise AssertionError(
                    f"node {i} did not converge: applied {node.applied_index} "
                    f"vs leader {final.applied_index}"
                )
        # Liveness of a rebuild: once healed, every recovering node gets there.
        if recovering:
            raise AssertionError(f"rebuilt nodes still recovering after settling: {recovering}")
        stats.max_term = max(net.term(i) for i in net.ids)
        stats.committed = net.committed(lead)
        stats.reads_served = len(net.checker.reads)
        assert net.leaders(), "no leader after settling"
    except AssertionError as e:
        tail = "\n  ".join(stats.trace[-25:])
        raise ScheduleFailure(
            f"seed {seed} failed: {e}\nreplay: run_schedule({seed}, nodes={nodes}, "
            f"events={events})\nlast events:\n  {tail}"
        ) from e
    return stats
