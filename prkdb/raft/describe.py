"""Readable one-line descriptions of messages and entries, for logs and goldens."""

from __future__ import annotations

from prkdb.raft.types import Entry, Message, MsgType

_NAMES = {
    MsgType.HUP: "MsgHup",
    MsgType.BEAT: "MsgBeat",
    MsgType.PROP: "MsgProp",
    MsgType.APP: "MsgApp",
    MsgType.APP_RESP: "MsgAppResp",
    MsgType.VOTE: "MsgVote",
    MsgType.VOTE_RESP: "MsgVoteResp",
    MsgType.PRE_VOTE: "MsgPreVote",
    MsgType.PRE_VOTE_RESP: "MsgPreVoteResp",
    MsgType.SNAP: "MsgSnap",
    MsgType.HEARTBEAT: "MsgHeartbeat",
    MsgType.HEARTBEAT_RESP: "MsgHeartbeatResp",
    MsgType.TRANSFER_LEADER: "MsgTransferLeader",
    MsgType.TIMEOUT_NOW: "MsgTimeoutNow",
    MsgType.READ_INDEX: "MsgReadIndex",
    MsgType.READ_INDEX_RESP: "MsgReadIndexResp",
    MsgType.CHECK_QUORUM: "MsgCheckQuorum",
    MsgType.SNAP_STATUS: "MsgSnapStatus",
    MsgType.UNREACHABLE: "MsgUnreachable",
    MsgType.PEER_DOWN: "MsgPeerDown",
}


def describe_entry(e: Entry) -> str:
    return f"{e.term}/{e.index}" + (f" {e.data!r}" if e.data else "")


def describe_entries(ents: tuple[Entry, ...] | list[Entry]) -> str:
    return "[" + ", ".join(describe_entry(e) for e in ents) + "]"


def describe_message(m: Message) -> str:
    """`1->2 MsgApp Term:1 Log:1/2 Commit:2 Entries:[1/3]`, in etcd's format."""
    s = f"{m.from_}->{m.to} {_NAMES.get(m.type, str(m.type))} Term:{m.term}"
    s += f" Log:{m.log_term}/{m.index}"
    if m.reject:
        s += f" Rejected (Hint: {m.reject_hint})"
    if m.commit:
        s += f" Commit:{m.commit}"
    if m.entries:
        s += f" Entries:{describe_entries(m.entries)}"
    if m.context:
        s += f" Context:{m.context!r}"
    if m.snapshot is not None:
        meta = m.snapshot.meta
        s += f" Snapshot: Index:{meta.index} Term:{meta.term} Voters:{list(meta.conf_state.voters)}"
    return s
