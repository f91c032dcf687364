"""The leader's lease deadlines (prkdb/server/leases.py), driven by a fake clock.

`LeaseKeeper` alone, then `PartitionLeases`, the glue the daemon and the
lease simulator (tests/sim/test_leases.py, whole clusters) share, over a
real state machine.

What the issue asks of expiry, checked here on the keeper alone (no Raft, no
trio): a lease never lapses before its TTL has run since the latest of
leadership start, grant and keep-alive (so a leader change never expires a
lease early: the new leader restarts every TTL), and a lease nobody renews is
found on the first tick at or after its deadline (within TTL + one tick).
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.server.leases import LeaseKeeper, PartitionLeases
from prkdb.state import (
    KVStateMachine,
    LeaseGrantCommand,
    LeaseRevokeCommand,
    PutCommand,
    encode_command,
)

TICK = 0.05
TTL_MS = 2000


def ticks_until(keeper: LeaseKeeper, start: float, stop: float, tick: float = TICK
                ) -> dict[int, float]:
    """Tick from `start` to `stop`; returns lease id -> the first tick it was due at."""
    found: dict[int, float] = {}
    k = 0
    while (now := round(start + k * tick, 9)) <= stop:
        if keeper.next_due <= now:
            for lease_id in keeper.due(now):
                found.setdefault(lease_id, now)
        k += 1
    return found


def test_a_new_leader_gives_every_lease_its_full_ttl() -> None:
    old = LeaseKeeper(retry_s=0.5)
    old.lead(0.0, [(1 << 16, TTL_MS)])
    assert old.renew(1 << 16, TTL_MS, 1.5) == TTL_MS  # lapses at 3.5 on the old leader
    old.step_down()
    assert len(old) == 0 and old.next_due == math.inf
    # The new leader starts at 3.4 (an election later): 3.4 + 2.0, not 3.5.
    new = LeaseKeeper(retry_s=0.5)
    new.lead(3.4, [(1 << 16, TTL_MS)])
    assert new.remaining_ms(1 << 16, 3.4) == TTL_MS
    assert ticks_until(new, 3.4, 5.35) == {}
    assert ticks_until(new, 5.4, 5.5) == {1 << 16: 5.4}


def test_a_lease_nobody_renews_is_due_within_ttl_plus_one_tick() -> None:
    keeper = LeaseKeeper(retry_s=0.5)
    keeper.lead(0.013, [])
    for i in range(1, 6):
        keeper.add(i << 16, TTL_MS + 7 * i, 0.013 + 0.011 * i)  # odd phases vs the tick grid
    found = ticks_until(keeper, 0.0, 3.0)
    assert sorted(found) == [i << 16 for i in range(1, 6)]
    for i in range(1, 6):
        deadline = 0.013 + 0.011 * i + (TTL_MS + 7 * i) / 1000
        assert deadline <= found[i << 16] < deadline + TICK


def test_keep_alives_hold_a_lease_and_a_lapsed_one_cannot_be_renewed() -> None:
    keeper = LeaseKeeper(retry_s=0.5)
    keeper.lead(0.0, [(7, TTL_MS)])
    for t in (0.6, 1.2, 1.8, 2.4):
        assert keeper.renew(7, TTL_MS, t) == TTL_MS
        assert keeper.due(t) == []
    assert keeper.remaining_ms(7, 3.4) == 1000
    assert keeper.due(4.39) == []
    assert keeper.due(4.4) == [7]
    # Lapsed: its revoke is on the way; a late keep-alive does not bring it back.
    assert keeper.renew(7, TTL_MS, 4.41) == 0
    assert keeper.remaining_ms(7, 4.41) == 0


def test_a_pending_revoke_is_proposed_again_once_per_retry_interval() -> None:
    keeper = LeaseKeeper(retry_s=0.5)
    keeper.lead(0.0, [(7, TTL_MS)])
    assert keeper.due(1.99) == []
    assert keeper.due(2.01) == [7]
    assert keeper.due(2.02) == keeper.due(2.5) == []
    assert keeper.due(2.51) == [7]  # not applied within retry_s: proposed again
    keeper.forget(7)  # the revoke was applied
    assert keeper.next_due == 3.01  # a stale heap entry: skipped when it surfaces
    assert keeper.due(10.0) == []
    assert len(keeper) == 0 and keeper.next_due == math.inf


def test_due_returns_at_most_limit_and_keeps_the_rest() -> None:
    keeper = LeaseKeeper(retry_s=0.5)
    keeper.lead(0.0, [(i, TTL_MS) for i in range(5)])
    assert len(keeper.due(2.0, limit=2)) == 2
    assert len(keeper.due(2.05, limit=2)) == 2
    assert len(keeper.due(2.1, limit=2)) == 1
    assert keeper.due(2.2) == []


def test_a_grant_known_already_keeps_its_deadline() -> None:
    keeper = LeaseKeeper(retry_s=0.5)
    keeper.lead(0.0, [(7, TTL_MS)])
    keeper.add(7, TTL_MS, 1.0)  # e.g. the catch-up sync after the fence
    assert keeper.remaining_ms(7, 1.0) == 1000
    assert keeper.sync([(7, TTL_MS), (8, TTL_MS)], 1.0) == 1
    assert keeper.remaining_ms(8, 1.0) == TTL_MS
    assert keeper.ttl_ms(8) == TTL_MS and keeper.ttl_ms(9) is None


def test_a_follower_keeps_nothing() -> None:
    keeper = LeaseKeeper(retry_s=0.5)
    keeper.add(7, TTL_MS, 0.0)
    assert keeper.renew(7, TTL_MS, 0.0) == 0
    assert keeper.sync([(7, TTL_MS)], 0.0) == 0
    assert len(keeper) == 0 and keeper.due(100.0) == []


def test_frequent_keep_alives_do_not_grow_the_heap_without_bound() -> None:
    keeper = LeaseKeeper(retry_s=0.5)
    keeper.lead(0.0, [(i, 60_000) for i in range(100)])
    for step in range(1, 200):
        for i in range(100):
            keeper.renew(i, 60_000, step * 0.001)
    assert len(keeper._heap) <= 4 * 100 + 64 + 1
    assert keeper.due(60.19) == []
    assert sorted(keeper.due(60.2)) == list(range(100))


# -- a model check over random schedules -------------------------------------------

_events = st.lists(
    st.tuples(
        st.sampled_from(["lead", "step_down", "grant", "renew", "revoke", "wait"]),
        st.integers(0, 5),  # lease number
        st.floats(0.0, 1.5),  # time passing before the event, seconds
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_events, st.floats(0.0, TICK))
def test_no_lease_lapses_early_and_none_is_missed(events: list, phase: float) -> None:
    """Against a model: due only after TTL since the last start/grant/renew, and found in time.

    The model is what the state machine and the clock say: which leases
    exist (granted, not revoked) and, while leading, the earliest time each
    may lapse. Ticks run on a fixed grid with a random phase.
    """
    keeper = LeaseKeeper(retry_s=0.5)
    exists: dict[int, int] = {}  # lease id -> ttl_ms, the replicated state
    earliest: dict[int, float] = {}  # lease id -> its deadline as the model sees it
    reported: set[int] = set()
    now = phase
    next_tick = phase
    leading = False

    def run_ticks(until: float) -> None:
        nonlocal next_tick
        while next_tick <= until:
            for lease_id in keeper.due(next_tick) if keeper.next_due <= next_tick else []:
                assert leading and lease_id in earliest
                assert next_tick >= earliest[lease_id], "a lease lapsed early"
                reported.add(lease_id)
            # Nothing that lapsed by this tick is left unreported (<= TTL + one tick).
            for lease_id, deadline in earliest.items():
                assert deadline > next_tick or lease_id in reported
            next_tick += TICK

    for kind, n, dt in events:
        lease_id = (n + 1) << 16
        run_ticks(now + dt)
        now += dt
        if kind == "lead":
            leading = True
            keeper.lead(now, exists.items())
            earliest = {i: now + ttl / 1000 for i, ttl in exists.items()}
            reported.clear()
        elif kind == "step_down":
            leading = False
            keeper.step_down()
            earliest.clear()
            reported.clear()
        elif kind == "grant" and lease_id not in exists:
            exists[lease_id] = TTL_MS + 100 * n
            if leading:
                keeper.add(lease_id, exists[lease_id], now)
                earliest[lease_id] = now + exists[lease_id] / 1000
        elif kind == "renew" and lease_id in exists and leading:
            remaining = keeper.renew(lease_id, exists[lease_id], now)
            if lease_id in reported or earliest[lease_id] <= now:
                assert remaining == 0  # lapsed: cannot be saved
            else:
                assert remaining == exists[lease_id]
                earliest[lease_id] = now + exists[lease_id] / 1000
        elif kind == "revoke" and lease_id in exists:
            del exists[lease_id]
            earliest.pop(lease_id, None)
            reported.discard(lease_id)
            keeper.forget(lease_id)
    run_ticks(now + 5.0)


# -- PartitionLeases: what the driver feeds, what it answers ---------------------------


def _state(*grants: tuple[int, int]) -> KVStateMachine:
    """A partition-1 state machine with a lease granted at each ``(index, ttl_ms)``."""
    sm = KVStateMachine(partition=1)
    for index, ttl_ms in grants:
        sm.apply(index, encode_command(LeaseGrantCommand(ttl_ms)))
    return sm


A, B = 1 << 16 | 1, 2 << 16 | 1  # the leases granted at indexes 1 and 2


def test_a_follower_answers_not_leader_and_expires_nothing() -> None:
    sm = _state((1, TTL_MS))
    leases = PartitionLeases(retry_s=0.5)
    leases.observe(0, sm, 0.0)
    assert not leases.leading and not leases.leads(0)
    assert leases.keep_alive([A], sm, 1.0, 0) is None
    assert leases.expire(100.0, sm, 0) == []
    leases.granted(A, sm, 1.0)
    assert leases.next_due == math.inf


def test_leading_a_new_term_restarts_every_ttl_even_without_a_role_change() -> None:
    # Deposed and elected again between two Readies: the soft state did not
    # change, the term did (a hard state says so). Another leader may have
    # renewed the lease meanwhile: nothing of the old term's deadlines stays.
    sm = _state((1, TTL_MS))
    leases = PartitionLeases(retry_s=0.5)
    leases.observe(3, sm, 0.0)
    assert leases.leads(3) and not leases.leads(4)
    assert leases.keep_alive([A], sm, 1.0, 4) is None  # leads 4, deadlines of 3
    leases.observe(3, sm, 1.5)  # same term: deadlines kept
    assert leases.expire(2.0, sm, 3) == [LeaseRevokeCommand(A, expired=True)]
    leases.observe(4, sm, 2.0)
    assert leases.expire(3.99, sm, 4) == []
    assert leases.keep_alive([A], sm, 3.0, 4) == [TTL_MS]
    assert leases.expire(4.99, sm, 4) == []
    assert leases.expire(5.0, sm, 4) == [LeaseRevokeCommand(A, expired=True)]
    leases.observe(0, sm, 5.0)
    assert not leases.leading and leases.term == 0 and leases.next_due == math.inf


def test_a_grant_applied_while_leading_starts_its_ttl_then() -> None:
    sm = _state((1, TTL_MS))
    leases = PartitionLeases(retry_s=0.5)
    leases.observe(2, sm, 0.0)
    sm.apply(2, encode_command(LeaseGrantCommand(3000)))
    leases.granted(B, sm, 0.7)
    assert leases.status(B, sm, 0.7, with_keys=False) == (3000, 3000, [])
    leases.granted(B, sm, 1.5)  # a session's replay of the grant: the deadline stays
    assert leases.status(B, sm, 1.5, with_keys=False) == (3000, 2200, [])
    sm.apply(3, encode_command(LeaseRevokeCommand(B)))
    leases.granted(B, sm, 1.6)  # replayed after the revoke: not brought back
    assert leases.status(B, sm, 1.6, with_keys=False) is None
    assert leases.listing(sm, 1.0) == [(A, TTL_MS, 1000)]


def test_expire_revokes_lapsed_leases_and_forgets_those_revoked_meanwhile() -> None:
    sm = _state((1, TTL_MS), (2, TTL_MS))
    leases = PartitionLeases(retry_s=0.5, max_expiries=1)
    leases.observe(1, sm, 0.0)
    sm.apply(3, encode_command(PutCommand(b"k", b"v", A)))
    sm.apply(4, encode_command(LeaseRevokeCommand(B)))  # its client revoked it
    assert leases.status(A, sm, 1.0, with_keys=True) == (TTL_MS, 1000, [b"k"])
    assert leases.expire(1.99, sm, 1) == []
    assert leases.next_due == 2.0
    # One per call (max_expiries); B is gone from the state: no proposal for it.
    got = leases.expire(2.0, sm, 1) + leases.expire(2.0, sm, 1)
    assert got == [LeaseRevokeCommand(A, expired=True)]
    assert leases.keep_alive([A, B], sm, 2.1, 1) == [0, 0]  # lapsed; gone
    assert leases.expire(2.49, sm, 1) == []
    assert leases.expire(2.5, sm, 1) == [LeaseRevokeCommand(A, expired=True)]  # retried
    sm.apply(5, encode_command(LeaseRevokeCommand(A, expired=True)))
    assert leases.expire(3.0, sm, 1) == []  # forgotten (a stale heap entry is left)
    assert leases.expire(10.0, sm, 1) == []
    assert leases.next_due == math.inf
