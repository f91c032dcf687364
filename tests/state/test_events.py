"""Change events: what each command emits, the bounded history, since()."""

from __future__ import annotations

import pytest

from prkdb.state import (
    Compacted,
    DeleteCommand,
    Event,
    EventKind,
    KVStateMachine,
    PutCommand,
    encode_command,
)

PUT, DELETE = EventKind.PUT, EventKind.DELETE


def test_put_delete_events_and_since() -> None:
    m = KVStateMachine()
    seen: list[list[Event]] = []
    m.on_events = seen.append
    m.apply(1, encode_command(PutCommand(b"a", b"1")))
    m.apply(2, encode_command(PutCommand(b"a", b"2")))
    m.apply(3, encode_command(DeleteCommand(b"a")))
    m.apply(4, encode_command(DeleteCommand(b"a")))  # absent: nothing
    want = [
        Event(PUT, b"a", 1, b"1", None),
        Event(PUT, b"a", 2, b"2", b"1"),
        Event(DELETE, b"a", 3, None, b"2"),
    ]
    assert seen == [[e] for e in want]
    assert m.events.since(0) == want
    assert m.events.since(2) == want[2:]
    assert m.events.oldest == 0


def test_since_before_oldest_is_compacted() -> None:
    m = KVStateMachine(history_events=1)
    for i in range(1, 4):
        m.apply(i, encode_command(PutCommand(b"k", b"%d" % i)))
    assert m.events.oldest == 2
    with pytest.raises(Compacted) as info:
        m.events.since(1)
    assert info.value.oldest == 2
    assert [e.revision for e in m.events.since(2)] == [3]
