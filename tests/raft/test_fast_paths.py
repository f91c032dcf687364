"""The hot paths of the core against plain from-scratch definitions.

`RawNode.has_ready`/`ready` and the `RaftLog` position queries are written
for speed (field comparisons, inlined layers, fast paths). Here each is
checked, on every call across random fault schedules (elections, crashes,
snapshots, truncations, reads), against the obvious definition built from
`soft_state()`, `hard_state()` and the unstable/storage layers, so a fast
path that diverges in some corner fails loudly.
"""

from __future__ import annotations

import dataclasses
import inspect
import random

import pytest

from prkdb.raft import (
    Entry,
    HardState,
    MemoryStorage,
    Message,
    RaftConfig,
    RawNode,
    Ready,
    Role,
)
from prkdb.raft.core import RaftCore
from prkdb.raft.errors import Compacted, EntriesUnavailable
from prkdb.raft.log import RaftLog
from tests.sim.schedule import run_schedule


def _reference_has_ready(raw: RawNode) -> bool:
    core = raw.core
    log = core.log
    lo = max(log.applying, _reference_first_index(log) - 1) + 1
    return bool(
        core.msgs
        or core.commit_news
        or core.msgs_after_persist
        or core.read_states
        or log.unstable.entries
        or log.unstable.snapshot is not None
        or log.committed >= lo
        or core.soft_state() != raw._prev_soft
        or core.hard_state() != raw._prev_hard
    )


def _reference_first_index(log: RaftLog) -> int:
    u = log.unstable
    if u.snapshot is not None:
        return u.snapshot.meta.index + 1
    return log.storage.first_index()


def _reference_last_index(log: RaftLog) -> int:
    u = log.unstable
    if u.entries:
        return u.offset + len(u.entries) - 1
    if u.snapshot is not None:
        return u.snapshot.meta.index
    return log.storage.last_index()


def _reference_term(log: RaftLog, i: int) -> int:
    if i < _reference_first_index(log) - 1 or i > _reference_last_index(log):
        return 0
    u = log.unstable
    if i < u.offset:
        if u.snapshot is not None and u.snapshot.meta.index == i:
            return u.snapshot.meta.term
        try:
            return log.storage.term(i)
        except (Compacted, EntriesUnavailable):
            return 0
    return u.entries[i - u.offset].term


class _Checked:
    calls = 0


def _check_log(log: RaftLog) -> None:
    first = _reference_first_index(log)
    last = _reference_last_index(log)
    assert log.first_index() == first
    assert log.last_index() == last
    assert log.last_term() == _reference_term(log, last)
    for i in {0, first - 2, first - 1, first, log.unstable.offset - 1, log.unstable.offset,
              log.committed, last, last + 1}:
        assert log.term(i) == _reference_term(log, i), i


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> type[_Checked]:
    has_ready, ready, step = RawNode.has_ready, RawNode.ready, RaftCore.step

    def checked_has_ready(self: RawNode) -> bool:
        fast = has_ready(self)
        # The reference flushes the read round first; the fast one predicts it.
        self.core.flush_read_round()
        assert fast == _reference_has_ready(self)
        _check_log(self.core.log)
        _Checked.calls += 1
        return fast

    def checked_ready(self: RawNode):  # type: ignore[no-untyped-def]
        core = self.core
        soft, hard = core.soft_state(), core.hard_state()
        prev_soft, prev_hard = self._prev_soft, self._prev_hard
        rd = ready(self)
        assert rd.soft_state == (soft if soft != prev_soft else None)
        assert rd.hard_state == (hard if hard != prev_hard else None)
        assert rd.must_sync == (
            bool(rd.entries)
            or rd.snapshot is not None
            or hard.term != prev_hard.term
            or hard.vote != prev_hard.vote
        )
        return rd

    def checked_step(self: RaftCore, m):  # type: ignore[no-untyped-def]
        try:
            return step(self, m)
        finally:
            _check_log(self.log)

    monkeypatch.setattr(RawNode, "has_ready", checked_has_ready)
    monkeypatch.setattr(RawNode, "ready", checked_ready)
    monkeypatch.setattr(RaftCore, "step", checked_step)
    _Checked.calls = 0
    return _Checked


@pytest.mark.parametrize("seed", range(12))
def test_fast_paths_match_definitions_over_random_schedules(
    seed: int, checked: type[_Checked]
) -> None:
    stats = run_schedule(seed, nodes=5 if seed % 2 else 3, events=400, compact_every=8)
    assert checked.calls > 100
    assert stats.committed > 0


def test_has_ready_matches_definition_for_every_field_alone() -> None:
    """Each input of has_ready, changed alone, from a quiet node (many are rare in a run)."""
    rng = random.Random(7)
    storage = MemoryStorage((1, 2, 3))
    storage.append([Entry(1, i) for i in range(1, 11)])
    storage.set_hard_state(HardState(1, 2, 5))
    raw = RawNode(RaftConfig(id=1, peers=(1, 2, 3), rng=random.Random(1), applied=3), storage)
    while raw.has_ready():
        raw.advance(raw.ready())
    for _ in range(2000):
        core, log = raw.core, raw.core.log
        saved = (core.lead, core.role, core.term, core.vote, log.committed, log.applying)
        compact = rng.random() < 0.2
        if compact:
            saved_ents = list(storage.ents)
            storage.compact(rng.randint(1, 10))
        for _ in range(rng.randint(1, 2)):
            match rng.randrange(6):
                case 0:
                    core.lead = rng.choice((0, 1, 2))
                case 1:
                    core.role = rng.choice(list(Role))
                case 2:
                    core.term = rng.choice((1, 2))
                case 3:
                    core.vote = rng.choice((0, 1, 2))
                case 4:
                    log.committed = rng.randint(3, 10)
                case _:
                    log.applying = rng.randint(1, 10)
        assert raw.has_ready() == _reference_has_ready(raw)
        _check_log(log)
        core.lead, core.role, core.term, core.vote, log.committed, log.applying = saved
        if compact:
            storage.ents = saved_ents


@pytest.mark.parametrize("cls", [Entry, Message, Ready], ids=lambda c: c.__name__)
def test_hand_written_init_matches_the_generated_one(cls: type) -> None:
    """Entry/Message/Ready store their fields by hand (types.py); same as dataclass would."""
    fields = dataclasses.fields(cls)
    ref = dataclasses.make_dataclass(
        cls.__name__,
        [
            (f.name, f.type)
            if f.default is dataclasses.MISSING
            else (f.name, f.type, dataclasses.field(default=f.default))
            for f in fields
        ],
        frozen=True,
        slots=True,
    )
    ours, theirs = inspect.signature(cls.__init__), inspect.signature(ref.__init__)
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ]
    assert not hasattr(cls, "__post_init__")
    rng = random.Random(3)
    required = [f for f in fields if f.default is dataclasses.MISSING]
    for _ in range(50):
        args = [object() for _ in required]
        kwargs = {f.name: object() for f in fields[len(required):] if rng.random() < 0.5}
        a, b = cls(*args, **kwargs), ref(*args, **kwargs)
        assert [getattr(a, f.name) for f in fields] == [getattr(b, f.name) for f in fields]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.__setattr__(fields[0].name, 1)
    assert dataclasses.replace(a, **{fields[-1].name: 7}) == cls(
        *[getattr(a, f.name) for f in fields[:-1]], 7
    )
