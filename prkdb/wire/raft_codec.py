"""Raft messages <-> compact CBOR arrays (the peer hot path).

Theory of operation
-------------------
Every AppendEntries, heartbeat and vote between nodes passes through here, so
the layout is positional arrays of small ints, never string-keyed maps, and
the decoder is hand-unrolled rather than table-driven. The layouts (also
generated into docs/protocol.md from `MESSAGE_LAYOUT` and friends)::

    Message  = [type, to, from, term, log_term, index, entries, commit,
                reject, reject_hint, context, snapshot]
    Entry    = [term, index, data, kind]
    Snapshot = [index, term, voters, data]        # meta flattened in

Trailing fields equal to their default (0, false, b"", [], null,
EntryKind.NORMAL) are omitted by the encoder; the decoder fills them back in.
A heartbeat is thus ``[10, 2, 1, 7, 0, 0, [], 42]`` (12 bytes). The first
`MIN_MESSAGE_FIELDS` / `MIN_ENTRY_FIELDS` fields are always present.

Decoding is the trust boundary for the Raft core, which assumes well-formed
messages (STYLE §8.5: odd-but-well-formed input is the core's business,
malformed input never reaches it). `decode_message` therefore checks:

- exact Python types (``int`` not ``bool``, ``bytes`` not ``str``), ints in
  0..2**64-1, node ids >= 1;
- the type is a known `MsgType` and not a local one (`LOCAL_MSGS`: HUP, BEAT,
  CHECK_QUORUM, SNAP_STATUS, UNREACHABLE only ever come from this node);
- entries only on APP and PROP; for APP they must continue the log at
  ``index + 1`` with consecutive indexes and non-decreasing terms in
  ``log_term..term`` (what any valid leader log satisfies);
- a snapshot iff the type is SNAP, non-empty, with a sorted, duplicate-free,
  non-empty voter list.

Everything failing raises `RemoteProtocolError` (BAD_REQUEST). Encoding does
not validate beyond rejecting local messages (`LocalProtocolError`): the
Raft core is trusted, and the receiver validates anyway.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

from prkdb.raft.types import (
    LOCAL_MSGS,
    ConfState,
    Entry,
    EntryKind,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)
from prkdb.wire.errors import LocalProtocolError, RemoteProtocolError
from prkdb.wire.frames import CBOR_ARRAY, CBOR_BYTES, CBOR_UINT, cbor_head, encode_body
from prkdb.wire.schema import frozen_builder

__all__ = [
    "ENTRY_LAYOUT",
    "MESSAGE_LAYOUT",
    "MIN_ENTRY_FIELDS",
    "MIN_MESSAGE_FIELDS",
    "SNAPSHOT_LAYOUT",
    "WIRE_MSG_TYPES",
    "decode_entry",
    "decode_message",
    "decode_snapshot",
    "encode_entries_cbor",
    "encode_entry",
    "encode_message",
    "encode_snapshot",
]

U64_MAX: Final = 2**64 - 1

WIRE_MSG_TYPES: Final = frozenset(MsgType) - LOCAL_MSGS
"""Message types that may cross the wire."""

# int -> MsgType for the allowed ones; lookups are guarded by `type(x) is int`
# because True == 1 would otherwise find MsgType.BEAT's neighbour.
_WIRE_TYPES: Final = {int(t): t for t in WIRE_MSG_TYPES}
_ENTRY_KINDS: Final = {int(k): k for k in EntryKind}
_CARRY_ENTRIES: Final = frozenset({MsgType.APP, MsgType.PROP})

# (name, wire type, meaning) - the single source for docs/protocol.md.
MESSAGE_LAYOUT: Final = (
    ("type", "uint", "MsgType (table below); local types are rejected"),
    ("to", "uint >= 1", "receiving node id"),
    ("from", "uint >= 1", "sending node id; must equal RaftBatch.from_node"),
    ("term", "uint", "sender's term"),
    ("log_term", "uint", "APP: term at `index`; votes: last log term; rejects: hint term"),
    ("index", "uint", "APP: index preceding entries; votes: last log index; resp: ack"),
    ("entries", "[Entry]", "APP and PROP only, else []"),
    ("commit", "uint", "sender's commit index"),
    ("reject", "bool", "responses: request refused"),
    ("reject_hint", "uint", "APP_RESP reject: follower's guess of the match index"),
    ("context", "bytes", "opaque (ReadIndex ids, b'transfer' for transfer campaigns)"),
    ("snapshot", "Snapshot or null", "SNAP only (required there), else null"),
)
MIN_MESSAGE_FIELDS: Final = 4
"""type, to, from and term are always present."""

ENTRY_LAYOUT: Final = (
    ("term", "uint", "term the entry was proposed in"),
    ("index", "uint", "log position"),
    ("data", "bytes", "opaque command; b'' is the leader's no-op"),
    ("kind", "uint", "EntryKind: 0 NORMAL, 1 CONF_CHANGE"),
)
MIN_ENTRY_FIELDS: Final = 2

SNAPSHOT_LAYOUT: Final = (
    ("index", "uint >= 1", "last log index the snapshot covers"),
    ("term", "uint >= 1", "term of that entry"),
    ("voters", "[uint >= 1]", "voter ids, strictly increasing, non-empty"),
    ("data", "bytes", "state machine snapshot, opaque to Raft"),
)

_NORMAL = EntryKind.NORMAL
_APP = MsgType.APP
# Decoding builds a Message per Raft message and an Entry per entry; a frozen
# dataclass __init__ is the largest part of that (see `frozen_builder`).
_new_entry = frozen_builder(Entry)
_new_message = frozen_builder(Message)
# Message defaults by position, for filling omitted trailing fields.
_MSG_DEFAULTS: Final[tuple[object, ...]] = (None, 0, 0, 0, 0, 0, [], 0, False, 0, b"", None)
# _DEFAULT_TAILS[n]: the defaults of the fields after the first n (never mutated).
_DEFAULT_TAILS: Final = tuple(list(_MSG_DEFAULTS[n:]) for n in range(13))


def _bad(what: str, value: Any) -> RemoteProtocolError:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return RemoteProtocolError(f"raft message: {what}, got {type(value).__name__} {shown}")


def _uint(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= U64_MAX:
        raise _bad(f"{what} must be a uint64", value)
    return value


def encode_entry(e: Entry) -> list[Any]:
    """Entry -> ``[term, index, data?, kind?]`` (trailing defaults dropped)."""
    if e.kind is not _NORMAL:
        return [e.term, e.index, e.data, int(e.kind)]
    if e.data:
        return [e.term, e.index, e.data]
    return [e.term, e.index]


_ENTRY_3 = cbor_head(CBOR_ARRAY, 3)


def encode_entries_cbor(entries: Sequence[Entry]) -> bytes:
    """The CBOR array of `entries`, the bytes cbor2 writes for ``[encode_entry(e) ...]``.

    Built by hand, which is ~30% cheaper than lists for cbor2 (cbor2 pays a
    cycle check per array, and an APP has one per entry); and a leader can
    encode a run of entries once for every follower (`PreEncoded`,
    `prkdb.wire.messages.RaftBatchEncoder`). Entries of another shape than
    the common ``[term, index, data]`` (a no-op, a conf change, a field not
    of the declared type or not a uint64) go through `encode_entry` and cbor2, so the bytes match
    the generic path for every input.
    """
    parts = [cbor_head(CBOR_ARRAY, len(entries))]
    extend = parts.extend
    head, normal, entry_3 = cbor_head, _NORMAL, _ENTRY_3
    for e in entries:
        data, term, index = e.data, e.term, e.index
        if e.kind is normal and type(data) is bytes and data and type(term) is int \
                and type(index) is int:
            try:
                # One join at the end beats concatenating per entry.
                extend((entry_3, head(CBOR_UINT, term), head(CBOR_UINT, index),
                        head(CBOR_BYTES, len(data)), data))
                continue
            except struct.error:
                pass  # term or index is not a uint64 (nothing was added): let cbor2 decide
        parts.append(encode_body(encode_entry(e)))
    return b"".join(parts)


def decode_entry(obj: Any) -> Entry:
    """Validate and build an Entry (types and ranges only; see `decode_message`).

    Raises:
        RemoteProtocolError: BAD_REQUEST naming the bad field.
    """
    if type(obj) is not list:
        raise _bad("entry must be an array", obj)
    n = len(obj)
    kind = _NORMAL
    data = b""
    if n == 3:
        term, index, data = obj
    elif n == 2:
        term, index = obj
    elif n == 4:
        term, index, data, k = obj
        if type(k) is not int or k not in _ENTRY_KINDS:
            raise _bad("entry kind must be a known EntryKind", k)
        kind = _ENTRY_KINDS[k]
    else:
        raise RemoteProtocolError(f"raft message: entry must have 2..4 fields, got {n}")
    if type(term) is not int or not 0 <= term <= U64_MAX:
        raise _bad("entry term must be a uint64", term)
    if type(index) is not int or not 0 <= index <= U64_MAX:
        raise _bad("entry index must be a uint64", index)
    if type(data) is not bytes:
        raise _bad("entry data must be bytes", data)
    return _new_entry(term, index, kind, data)


def encode_snapshot(s: Snapshot) -> list[Any]:
    """Snapshot -> ``[index, term, voters, data]``."""
    meta = s.meta
    return [meta.index, meta.term, list(meta.conf_state.voters), s.data]


def decode_snapshot(obj: Any) -> Snapshot:
    """Validate and build a non-empty Snapshot.

    Raises:
        RemoteProtocolError: BAD_REQUEST naming the bad field.
    """
    if type(obj) is not list or len(obj) != 4:
        raise _bad("snapshot must be an array of 4", obj)
    index, term, voters, data = obj
    if _uint(index, "snapshot index") < 1:
        raise _bad("snapshot index must be >= 1", index)
    if _uint(term, "snapshot term") < 1:
        raise _bad("snapshot term must be >= 1", term)
    if type(voters) is not list or not voters:
        raise _bad("snapshot voters must be a non-empty array", voters)
    prev = 0
    for v in voters:
        if type(v) is not int or not prev < v <= U64_MAX:
            raise _bad("snapshot voters must be strictly increasing node ids >= 1", v)
        prev = v
    if type(data) is not bytes:
        raise _bad("snapshot data must be bytes", data)
    return Snapshot(SnapshotMeta(index, term, ConfState(tuple(voters))), data)


def encode_message(m: Message, *, entries: Any = None) -> list[Any]:
    """Message -> positional array with trailing defaults dropped.

    Args:
        m: a message that may cross the wire.
        entries: what to put at the entries position instead of encoding
            ``m.entries`` (e.g. ``PreEncoded(encode_entries_cbor(m.entries))``);
            only for a message with entries, whose position is never dropped.

    Raises:
        LocalProtocolError: `m` is a local-only message (a driver bug: those
            must never be sent).
    """
    if m.type in LOCAL_MSGS:
        raise LocalProtocolError(f"raft message type {m.type.name} is local and cannot be sent")
    out: list[Any] = [
        int(m.type),
        m.to,
        m.from_,
        m.term,
        m.log_term,
        m.index,
        [encode_entry(e) for e in m.entries] if entries is None else entries,
        m.commit,
        m.reject,
        m.reject_hint,
        m.context,
        None if m.snapshot is None else encode_snapshot(m.snapshot),
    ]
    n = 12
    defaults = _MSG_DEFAULTS
    while n > MIN_MESSAGE_FIELDS:
        last = out[n - 1]
        default = defaults[n - 1]
        # `type(...) is` so that e.g. reject=False is not mistaken for a 0 default
        # at a position where the type differs (positions have fixed types, but
        # be exact anyway).
        if last != default or type(last) is not type(default):
            break
        n -= 1
    if n < 12:
        del out[n:]
    return out


def decode_message(obj: Any) -> Message:
    """Validate a wire array and build the Raft `Message` (see module docstring).

    Raises:
        RemoteProtocolError: BAD_REQUEST naming the bad field; the message
            never reaches the core.
    """
    if type(obj) is not list:
        raise _bad("message must be an array", obj)
    n = len(obj)
    if not MIN_MESSAGE_FIELDS <= n <= 12:
        raise RemoteProtocolError(f"raft message: must have 4..12 fields, got {n}")
    if n < 12:
        obj = obj + _DEFAULT_TAILS[n]
    (
        t,
        to,
        from_,
        term,
        log_term,
        index,
        raw_entries,
        commit,
        reject,
        reject_hint,
        context,
        raw_snapshot,
    ) = obj
    if type(t) is not int or t not in _WIRE_TYPES:
        raise _bad("type must be a MsgType that may cross the wire", t)
    mtype = _WIRE_TYPES[t]
    if type(to) is not int or not 1 <= to <= U64_MAX:
        raise _bad("to must be a node id >= 1", to)
    if type(from_) is not int or not 1 <= from_ <= U64_MAX:
        raise _bad("from must be a node id >= 1", from_)
    if not (
        type(term) is int
        and type(log_term) is int
        and type(index) is int
        and type(commit) is int
        and type(reject_hint) is int
        and 0 <= term <= U64_MAX
        and 0 <= log_term <= U64_MAX
        and 0 <= index <= U64_MAX
        and 0 <= commit <= U64_MAX
        and 0 <= reject_hint <= U64_MAX
    ):
        # One combined test on the hot path; name the first bad field here.
        _uint(term, "term")
        _uint(log_term, "log_term")
        _uint(index, "index")
        _uint(commit, "commit")
        _uint(reject_hint, "reject_hint")
    if type(reject) is not bool:
        raise _bad("reject must be a bool", reject)
    if type(context) is not bytes:
        raise _bad("context must be bytes", context)
    if type(raw_entries) is not list:
        raise _bad("entries must be an array", raw_entries)

    entries: tuple[Entry, ...] = ()
    if raw_entries:
        if mtype not in _CARRY_ENTRIES:
            raise RemoteProtocolError(f"raft message: {mtype.name} must not carry entries")
        fast = None
        if mtype is _APP:
            fast = _decode_appended(raw_entries, index, log_term, term)
        if fast is not None:
            entries = fast
        else:
            entries = tuple([decode_entry(e) for e in raw_entries])
            if mtype is _APP:
                _check_appended(entries, index, log_term, term)

    snapshot = None
    if mtype is MsgType.SNAP:
        if raw_snapshot is None:
            raise RemoteProtocolError("raft message: SNAP must carry a snapshot")
        snapshot = decode_snapshot(raw_snapshot)
    elif raw_snapshot is not None:
        raise RemoteProtocolError(f"raft message: {mtype.name} must not carry a snapshot")

    return _new_message(
        mtype,
        to,
        from_,
        term,
        log_term,
        index,
        entries,
        commit,
        reject,
        reject_hint,
        context,
        snapshot,
    )


def _decode_appended(
    raw: list[Any], index: int, log_term: int, term: int
) -> tuple[Entry, ...] | None:
    """Fast path for APP entries: the checks of `decode_entry` + `_check_appended` in one loop.

    Only for the common shape, ``[term, index, data]`` (kind NORMAL, data
    present); returns None at the first entry that is anything else, valid or
    not, and the caller runs the strict path, which decides (and words the
    error). Every entry it accepts passes the strict checks: ints and bytes
    by exact type, index == previous + 1 starting at ``index + 1`` (so in
    range once the last one is), term in ``max(log_term, 1)..term`` (so a
    uint64), non-decreasing. Called with `index`, `log_term`, `term` already
    checked as uint64s.
    """
    if index + len(raw) > U64_MAX:
        return None
    out: list[Entry] = []
    append = out.append
    expect = index + 1
    prev_term = log_term if log_term > 1 else 1
    new_entry, normal = _new_entry, _NORMAL
    for e in raw:
        if type(e) is not list or len(e) != 3:
            return None
        e_term, e_index, data = e
        if (
            type(e_index) is not int
            or e_index != expect
            or type(e_term) is not int
            or not prev_term <= e_term <= term
            or type(data) is not bytes
        ):
            return None
        append(new_entry(e_term, e_index, normal, data))
        prev_term = e_term
        expect += 1
    return tuple(out)


def _check_appended(entries: tuple[Entry, ...], index: int, log_term: int, term: int) -> None:
    """APP entries must extend the log right after (index, log_term), as a leader's log does."""
    expect = index + 1
    prev_term = log_term
    for e in entries:
        if e.index != expect:
            raise RemoteProtocolError(
                f"raft message: APP entry index {e.index} does not follow {expect - 1}"
            )
        if not prev_term <= e.term <= term or e.term < 1:
            raise RemoteProtocolError(
                f"raft message: APP entry {e.index} has term {e.term}, "
                f"outside {max(prev_term, 1)}..{term}"
            )
        prev_term = e.term
        expect += 1
