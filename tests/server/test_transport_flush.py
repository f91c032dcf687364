"""The peer transport's outgoing side: one frame per peer per flush, lazy commit news.

A COMMIT_ONLY append (news of the commit index, nobody waits for it) must
never be lost nor sent ahead of the pass's urgent messages: it rides along
with the next frame to its peer, or leaves on `flush(lazy=True)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from prkdb.config import NodeConfig
from prkdb.raft import COMMIT_ONLY, Entry, Message, MsgType
from prkdb.server.clusterconf import local_peers
from prkdb.server.transport import PeerTransport, _PeerLink
from prkdb.wire import FrameDecoder, from_wire
from prkdb.wire.messages import RaftBatch


class _Log:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> dict[int, list[RaftBatch]]:
    """Frames written per peer id (decoded), instead of a socket."""
    frames: dict[int, list[RaftBatch]] = {}

    def write(link: _PeerLink, data: bytes) -> bool:
        dec = FrameDecoder(max_frame=1 << 30)
        dec.receive_data(data)
        batch = from_wire(dec.next_frame())
        assert isinstance(batch, RaftBatch)
        peer = {m.to for _, m in batch.items}
        assert len(peer) == 1, "one frame carries one peer's messages"
        frames.setdefault(peer.pop(), []).append(batch)
        return True

    monkeypatch.setattr(_PeerLink, "write", write)
    return frames


def _transport() -> PeerTransport:
    cfg = dataclasses.replace(NodeConfig.default(), peers=tuple(local_peers(3, 30000)))
    return PeerTransport(cfg, lambda p, m: None, _Log())


def _app(to: int, *, index: int, entries: tuple[Entry, ...] = (), context: bytes = b"") -> Message:
    return Message(MsgType.APP, to=to, from_=1, term=2, log_term=2, index=index,
                   entries=entries, commit=index, context=context)


def _commit_only(to: int, index: int) -> Message:
    return _app(to, index=index, context=COMMIT_ONLY)


def test_one_frame_per_peer_per_flush(sent: dict[int, list[RaftBatch]]) -> None:
    t = _transport()
    t.send(0, [_app(2, index=5, entries=(Entry(2, 6, data=b"a"),)), _app(3, index=5)])
    t.send(1, [Message(MsgType.HEARTBEAT, to=2, from_=1, term=2)])
    assert sent == {}  # nothing leaves before the flush
    t.flush()
    assert [len(b.items) for b in sent[2]] == [2] and [len(b.items) for b in sent[3]] == [1]
    assert [p for p, _ in sent[2][0].items] == [0, 1]  # partitions kept, in order
    t.flush()
    assert len(sent[2]) == 1  # nothing twice


def test_commit_news_waits_for_the_lazy_flush(sent: dict[int, list[RaftBatch]]) -> None:
    t = _transport()
    t.send(0, [_commit_only(2, 7)])
    t.flush()
    assert sent == {} and t.lazy_pending
    t.flush(lazy=True)
    assert [m.context for _, m in sent[2][0].items] == [COMMIT_ONLY]
    assert not t.lazy_pending
    t.flush(lazy=True)
    assert len(sent[2]) == 1


def test_commit_news_rides_along_with_urgent_messages(sent: dict[int, list[RaftBatch]]) -> None:
    t = _transport()
    t.send(0, [_commit_only(2, 7), _commit_only(3, 7)])
    t.send(1, [_app(2, index=9, entries=(Entry(2, 10, data=b"x"),))])
    t.flush()
    # Peer 2 got both in one frame, urgent first; peer 3's news still waits.
    assert [(p, m.context) for p, m in sent[2][0].items] == [(1, b""), (0, COMMIT_ONLY)]
    assert 3 not in sent and t.lazy_pending
    t.flush(lazy=True)
    assert len(sent[2]) == 1 and len(sent[3]) == 1


def test_an_append_with_entries_is_never_lazy(sent: dict[int, list[RaftBatch]]) -> None:
    t = _transport()
    t.send(0, [_app(2, index=3, entries=(Entry(2, 4, data=b"e"),), context=COMMIT_ONLY)])
    t.flush()
    assert len(sent[2]) == 1
