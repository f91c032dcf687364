"""Length-prefixed CBOR frames, sans-IO (bytes in, objects out).

Theory of operation
-------------------
A frame is a 4-byte big-endian unsigned length N followed by exactly N bytes
that hold exactly one CBOR data item. Nothing else is ever on a connection.

`FrameDecoder` is an h11-style state machine that never touches a socket:
the owner feeds it whatever `recv` returned with `receive_data(data)`
(``b""`` means EOF) and then calls `next_frame()` until it returns
`NEED_DATA` (feed more) or `CLOSED` (clean EOF at a frame boundary). Each
other return value is one decoded CBOR item. Any protocol violation raises
`RemoteProtocolError` and moves the decoder to `DecoderState.ERROR`, where it
stays: every later `next_frame()` raises again, so a caller that forgets to
close cannot keep reading garbage.

Invariants:
- The length is checked against `max_frame` as soon as its 4 bytes are here,
  before waiting for (or buffering) the body: a hostile length costs nothing.
- Bytes in ``_buf[:_pos]`` are consumed; compaction happens at most once per
  `receive_data` call, so a chunk holding thousands of small frames is
  decoded in O(total bytes), not O(frames x bytes).
- ``_buf`` is the chunk `receive_data` got, as it is (bytes, no copy), when
  nothing else was buffered: the common case of one whole answer per
  ``recv``. Only bytes left over when more arrive go into a bytearray, which
  then grows in place (a frame in many chunks costs O(its size), not more).
- A frame body must decode to one CBOR item with no trailing bytes.

CBOR safety: untrusted input may not construct objects. Every CBOR tag is
rejected (cbor2's built-in semantic tags, e.g. datetimes, bignums, regexes,
shared references, are overridden; unknown tags hit a rejecting tag hook),
indefinite lengths and duplicate map keys are refused, map keys must be text
or byte strings (no hash-collision games with crafted ints), and nesting is
limited to `MAX_DEPTH`. What is left is plain data: int, bytes, str, bool,
None, float, list, dict and CBOR simple values; the schema layer
(`prkdb.wire.messages`) rejects whatever it did not ask for.

Known limit: CBOR is compact, so a frame can still expand in memory (an
array of N empty arrays is N bytes on the wire and ~64 N bytes in Python).
The owner bounds this with `max_frame`, which may be lowered for a
connection that has not completed its hello.
"""

from __future__ import annotations

import enum
import io
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final, NoReturn, final

import cbor2

from prkdb.errors import ErrorCode
from prkdb.wire.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CBOR_ARRAY",
    "CBOR_BYTES",
    "CBOR_UINT",
    "CLOSED",
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "MAX_DEPTH",
    "NEED_DATA",
    "DecoderState",
    "FrameDecoder",
    "PreEncoded",
    "cbor_head",
    "decode_body",
    "encode_body",
    "encode_frame",
    "encode_frames",
    "frame_of",
]

HEADER_SIZE: Final = 4
"""Bytes in the big-endian length prefix."""

DEFAULT_MAX_FRAME: Final = 16 * 1024 * 1024
"""Largest body (bytes, header excluded) accepted or sent by default: 16 MiB."""

MAX_DEPTH: Final = 32
"""Deepest container nesting accepted; real messages need < 10 levels."""

_HEADER = struct.Struct(">I")
_SMALL_FRAME = 64 * 1024  # bodies up to this size are sliced (copied) out of the buffer
_EMPTY = io.BytesIO(b"")
_MAX_LENGTH = 0xFFFFFFFF  # what 4 bytes can express


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"

    def __repr__(self) -> str:
        return self.value

    __str__ = __repr__


NEED_DATA: Final = _Sentinel.NEED_DATA
"""Returned by `FrameDecoder.next_frame` when no complete frame is buffered."""

CLOSED: Final = _Sentinel.CLOSED
"""Returned by `FrameDecoder.next_frame` after a clean EOF (at a frame boundary)."""


class DecoderState(enum.Enum):
    """Where a `FrameDecoder` is. OPEN -> CLOSED on clean EOF, -> ERROR on bad input."""

    OPEN = "OPEN"
    CLOSED = "CLOSED"
    ERROR = "ERROR"


def _reject_tag(tag: cbor2.CBORTag, immutable: bool) -> Any:
    raise cbor2.CBORDecodeError(f"cbor tag {tag.tag} is not allowed")


def _reject_semantic(value: Any, immutable: bool) -> Any:
    raise cbor2.CBORDecodeError("cbor semantic tags are not allowed")


# Tags cbor2 6.x decodes itself (found by probing; tests/wire re-probe them and a
# wide range of others). Overriding them routes them to a rejection instead of
# constructing datetimes, Decimals, regexes, sets or shared references.
_BUILTIN_TAGS = (
    0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261,
    1004, 55799,
)  # fmt: skip
_SEMANTIC_OVERRIDES = dict.fromkeys(_BUILTIN_TAGS, _reject_semantic)


def _new_cbor_decoder() -> cbor2.CBORDecoder:
    """A CBOR decoder with the untrusted-input rules above, reading from an empty buffer."""
    return cbor2.CBORDecoder(
        io.BytesIO(b""),
        tag_hook=_reject_tag,
        semantic_decoders=_SEMANTIC_OVERRIDES,
        read_size=_READ_SIZE,
        max_depth=MAX_DEPTH,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
    )


# Bytes the CBOR decoder pulls from its file per read. Any size is correct; one
# read per typical frame is fastest, and the decoder's buffer only grows to
# what a read returned, so a large value costs no memory for small frames.
_READ_SIZE: Final = 64 * 1024


def _decode_with(decoder: cbor2.CBORDecoder, body: io.BytesIO) -> Any:
    """Decode exactly one CBOR item from `body` with `decoder` (see `decode_body`)."""
    decoder.fp = body  # also drops whatever the decoder had buffered
    try:
        obj = decoder.decode()
    except cbor2.CBORDecodeError as exc:
        raise RemoteProtocolError(f"undecodable cbor in frame: {exc}") from None
    # cbor2 ignores trailing bytes, so ask for one more byte: EOF is the good
    # outcome. (The decoder buffers ahead, so body.tell() cannot tell.)
    try:
        decoder.read(1)
    except cbor2.CBORDecodeEOF:
        return obj
    raise RemoteProtocolError("trailing bytes after the cbor item in frame")


def decode_body(body: bytes | bytearray | memoryview) -> Any:
    """Decode one frame body: exactly one CBOR item, untrusted input rules.

    Exposed for callers that frame by other means (tests, offline tools), and
    for hand-written parsers of hot messages: each thread reuses one decoder
    (making one costs more than decoding a small body).

    Raises:
        RemoteProtocolError: BAD_REQUEST if the body is not exactly one
            acceptable CBOR item.
    """
    if not body:
        raise RemoteProtocolError("empty frame body")
    try:
        decoder = _local.decoder
    except AttributeError:
        decoder = _local.decoder = _new_cbor_decoder()
    return _decode_with(decoder, io.BytesIO(body))


@final
class PreEncoded:
    """One CBOR item that is already encoded; `encode_body` writes its bytes as they are.

    Lets a sender encode a part shared by many frames once, e.g. the entries
    a leader sends to every follower (`prkdb.wire.messages.RaftBatchEncoder`).
    Trusted: the bytes must be exactly one well-formed item, as cbor2 would
    write it, or the frame is garbage; only our own encoders make them.
    """

    __slots__ = ("cbor",)

    def __init__(self, cbor: bytes) -> None:
        self.cbor = cbor

    def __repr__(self) -> str:
        return f"PreEncoded({self.cbor[:16]!r}{'...' if len(self.cbor) > 16 else ''})"


def _write_pre_encoded(encoder: cbor2.CBOREncoder, value: Any) -> None:
    """cbor2's hook for types it does not know: splice `PreEncoded`, refuse the rest.

    The refusal is the error (class and text) cbor2 raises without a hook.
    """
    if type(value) is PreEncoded:
        encoder.write(value.cbor)
        return
    raise cbor2.CBOREncodeError(f"cannot encode type {type(value)}")


# One CBOR encoder per thread, reused for every body: `cbor2.dumps` builds a new
# encoder per call, which costs a third of encoding a small reply. We call its
# `encode_to_bytes`, which writes each item into a fresh buffer of its own
# (swapped in, then back out even when encoding raises), so the encoder keeps
# no bytes between calls: a failed encode cannot leave the next one dirty, a
# large body is not kept alive, and a nested call would be safe too. Per
# thread because snapshots are encoded in worker threads and an encoder
# object is not meant to be shared. Same class and options as `cbor2.dumps`,
# so the same bytes (tests/wire compare them); the `default` hook only adds
# `PreEncoded`, and costs nothing for the types cbor2 knows.
_local = threading.local()


def _thread_encoder() -> Callable[[Any], bytes]:
    """This thread's reusable `encode_to_bytes` (created on first use)."""
    encoder = cbor2.CBOREncoder(io.BytesIO(), default=_write_pre_encoded)
    encode: Callable[[Any], bytes] = encoder.encode_to_bytes
    _local.encode = encode
    return encode


def encode_body(obj: Any) -> bytes:
    """CBOR-encode one item (no length prefix); the same bytes as ``cbor2.dumps(obj)``.

    `PreEncoded` items anywhere inside `obj` are written as they are.

    Raises:
        LocalProtocolError: INTERNAL if cbor2 cannot encode `obj` (our bug).
    """
    try:
        encode = _local.encode
    except AttributeError:
        encode = _thread_encoder()
    try:
        return encode(obj)  # type: ignore[no-any-return]
    except cbor2.CBOREncodeError as exc:
        raise LocalProtocolError(f"cannot encode {type(obj).__name__} as cbor: {exc}") from None


CBOR_UINT: Final = 0x00
"""`cbor_head` major type: unsigned int (the argument is the value)."""
CBOR_BYTES: Final = 0x40
"""`cbor_head` major type: byte string (the argument is its length; the bytes follow)."""
CBOR_ARRAY: Final = 0x80
"""`cbor_head` major type: array (the argument is its item count; the items follow)."""

_ONE_BYTE = tuple(bytes((i,)) for i in range(256))
_HEAD_8 = struct.Struct(">BB").pack
_HEAD_16 = struct.Struct(">BH").pack
_HEAD_32 = struct.Struct(">BI").pack
_HEAD_64 = struct.Struct(">BQ").pack


def cbor_head(major: int, n: int) -> bytes:
    """The shortest CBOR head of major type `major` with argument `n`, as cbor2 writes it.

    For hand-built encodings of hot messages: a head plus the payload costs
    less than building a list for cbor2, which pays a cycle check per array.

    Args:
        major: `CBOR_UINT`, `CBOR_BYTES` or `CBOR_ARRAY`.
        n: an ``int`` (never a bool: cbor2 writes True as a simple value).

    Raises:
        struct.error: `n` is outside 0..2**64-1 (cbor2 would write a bignum
            tag or a negative int there: callers fall back to cbor2).
    """
    if 0 <= n < 24:
        return _ONE_BYTE[major | n]
    if n < 0x100:
        return _HEAD_8(major | 24, n)
    if n < 0x10000:
        return _HEAD_16(major | 25, n)
    if n < 0x100000000:
        return _HEAD_32(major | 26, n)
    return _HEAD_64(major | 27, n)


def frame_of(body: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Length prefix + `body`, after checking the size as `encode_frame` does.

    Raises:
        LocalProtocolError: TOO_LARGE if the body exceeds `max_frame`.
    """
    if len(body) > max_frame:
        raise LocalProtocolError(
            f"frame body of {len(body)} bytes exceeds max_frame ({max_frame})",
            code=ErrorCode.TOO_LARGE,
            details={"limit": max_frame, "size": len(body)},
        )
    return _HEADER.pack(len(body)) + body


def encode_frame(obj: Any, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Encode one object as a complete frame (length prefix + CBOR body).

    Args:
        obj: plain CBOR-able data (use `prkdb.wire.messages.to_wire` for messages).
        max_frame: the largest body we may send; the receiver enforces the
            same limit, so sending more would only get the connection closed.

    Raises:
        LocalProtocolError: TOO_LARGE if the body exceeds `max_frame`;
            INTERNAL if `obj` is not encodable.
    """
    return frame_of(encode_body(obj), max_frame)


def encode_frames(objs: Iterable[Any], *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Encode many objects into one buffer of back-to-back frames.

    For batched writes: one ``send_all`` per event-loop pass instead of one
    per message. All-or-nothing: if any object fails, nothing is returned.

    Raises:
        LocalProtocolError: as `encode_frame`, for the first bad object.
    """
    parts: list[bytes] = []
    append = parts.append
    pack = _HEADER.pack
    for obj in objs:
        body = encode_body(obj)
        if len(body) > max_frame:
            raise LocalProtocolError(
                f"frame body of {len(body)} bytes exceeds max_frame ({max_frame})",
                code=ErrorCode.TOO_LARGE,
                details={"limit": max_frame, "size": len(body)},
            )
        append(pack(len(body)))
        append(body)
    return b"".join(parts)


# The first 4 bytes of HTTP/1.x traffic (and of HTTP/2's "PRI * HTTP/2.0"
# preface). Read as a length they are all over 1.1 GB (0x43000000 and up),
# beyond any sane max_frame, so they are only looked for in a header that is
# too long anyway: valid frames never pay for the check.
_HTTP_RESPONSE: Final = b"HTTP"
_HTTP_METHODS: Final = frozenset({
    b"GET ", b"HEAD", b"POST", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC", b"PRI ",
})


# TLS records (handshake 0x16, alert 0x15) start with their type and the
# major version 3: as a length that is over 350 MB, so, as for HTTP, only a
# header that is too long anyway is looked at.
_TLS_RECORDS: Final = frozenset({0x15, 0x16})


def _http_start(header: bytes | bytearray) -> RemoteProtocolError | None:
    """The error for a frame header that is the start of HTTP or TLS, else None.

    A port mix-up (a seed that is etcd's or a proxy's HTTP port; curl or a
    health checker pointed at a PrkDB port) then says so instead of
    "frame length 1213486160 exceeds max_frame". `details["http"]` is
    "response" or "request", so a server can answer in HTTP; TLS (a client
    that speaks TLS to a plaintext port, or a TLS server's alert to a
    plaintext client) sets `details["tls"]` instead. The decoder does not
    know the address: the connection's owner adds it.
    """
    head = bytes(header)
    if head == _HTTP_RESPONSE:
        return RemoteProtocolError(
            "the peer answered HTTP, not the PrkDB protocol: is it an HTTP port "
            "(etcd, a proxy) rather than a PrkDB client or peer port?",
            details={"http": "response"},
        )
    if head in _HTTP_METHODS:
        method = head.decode("ascii").strip()
        return RemoteProtocolError(
            f"the peer sent an HTTP request ({method}...), not the PrkDB protocol: "
            "this is a PrkDB port, not an HTTP endpoint",
            details={"http": "request"},
        )
    if head[0] in _TLS_RECORDS and head[1] == 3:
        if head[0] == 0x16:
            return RemoteProtocolError(
                "the peer opened a TLS handshake, but this port does not speak TLS: "
                "connect without TLS, or set [tls] on the node",
                details={"tls": "client_hello"},
            )
        return RemoteProtocolError(
            "the peer answered in TLS: the server expects TLS (connect with TLS: "
            "prkctl --cacert FILE, tls=TlsOptions(...) in the SDKs)",
            details={"tls": "record"},
        )
    return None


_OPEN: Final = DecoderState.OPEN  # one global lookup, not two, per next_frame


class FrameDecoder:
    """Incremental frame decoder; feed bytes, pull decoded CBOR items.

    Usage (the owner does the I/O)::

        dec = FrameDecoder()
        while True:
            item = dec.next_frame()
            if item is NEED_DATA:
                dec.receive_data(await stream.receive_some())  # b"" at EOF
            elif item is CLOSED:
                break
            else:
                handle(item)

    `max_frame` is a plain attribute: the owner may lower it until the hello
    is done and raise it afterwards; it applies to frames whose header has
    not been parsed yet.
    """

    __slots__ = ("_buf", "_cbor", "_eof", "_error", "_pos", "max_frame", "state")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 1 <= max_frame <= _MAX_LENGTH:
            raise ValueError(f"max_frame ({max_frame}) must be in 1..{_MAX_LENGTH}")
        self.max_frame = max_frame
        self.state = DecoderState.OPEN
        # Invariant: _buf[:_pos] is consumed, 0 <= _pos <= len(_buf). bytes
        # (a whole chunk, see the module doc) or bytearray (grows in place).
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._eof = False
        self._error: RemoteProtocolError | None = None
        # One CBOR decoder per connection, reused for every frame: building one
        # with the safety options costs more than decoding a small request.
        # Safe to reuse: after any decode error this decoder is in ERROR for good.
        self._cbor = _new_cbor_decoder()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed (EOF).

        Never raises for bad bytes: problems surface from `next_frame`, so the
        owner has one place to handle them. Data arriving in ERROR state is
        dropped (the connection is going away and must not grow memory).

        Raises:
            LocalProtocolError: data after EOF was already reported (owner bug).
        """
        if self.state is DecoderState.ERROR:
            return
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data after EOF")
            return
        if not data:
            self._eof = True
            return
        buf = self._buf
        pos = self._pos
        if pos == len(buf):  # nothing left over: keep the chunk itself
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
            return
        if type(buf) is not bytearray:  # a chunk's leftover: copy it, once, to grow
            buf = self._buf = bytearray(memoryview(buf)[pos:])
        elif pos:
            # Compact once per chunk; bytearray deletes from the front cheaply.
            del buf[:pos]
        self._pos = 0
        buf += data

    def next_frame(self, parse: Callable[[bytes], Any] | None = None) -> Any:
        """Return the next decoded item, `NEED_DATA` or `CLOSED`.

        Args:
            parse: tried first on the body (bytes) of a frame of up to 64 KiB;
                what it returns, unless None, is returned instead of the
                CBOR item, and its errors are its own (the decoder stays OPEN).
                For parsers that read what they know and leave the rest to
                cbor2 (`prkdb.wire.messages.next_message`).

        Returns:
            A CBOR item (list, dict, int, ... - unvalidated: pass it to
            `prkdb.wire.messages.from_wire`), or what `parse` returned, or
            `NEED_DATA` when no whole frame is buffered, or `CLOSED` after a
            clean EOF.

        Raises:
            RemoteProtocolError: TOO_LARGE for a length over `max_frame`
                (raised before the body arrives), BAD_REQUEST with
                ``details["http"]`` for a header that is the start of HTTP
                (a port mix-up), BAD_REQUEST for an empty or
                undecodable body, trailing bytes, or EOF inside a frame. The
                decoder is then in ERROR and raises on every later call.
        """
        if self.state is not _OPEN:
            if self.state is DecoderState.CLOSED:
                return CLOSED
            assert self._error is not None
            raise RemoteProtocolError(
                f"frame decoder is in ERROR state: {self._error.message}",
                code=self._error.code,
            )
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < HEADER_SIZE:
            return self._need_data(avail)
        (length,) = _HEADER.unpack_from(buf, pos)
        if length > self.max_frame:
            http = _http_start(buf[pos : pos + HEADER_SIZE])
            if http is not None:
                self._fail(http)
            self._fail(
                RemoteProtocolError(
                    f"frame length {length} exceeds max_frame ({self.max_frame})",
                    code=ErrorCode.TOO_LARGE,
                    details={"limit": self.max_frame, "size": length},
                )
            )
        end = pos + HEADER_SIZE + length
        if end > len(buf):
            return self._need_data(avail)
        self._pos = end
        if not length:
            self._fail(RemoteProtocolError("empty frame body"))
        start = pos + HEADER_SIZE
        if length <= _SMALL_FRAME:
            # Copying a small slice beats setting up a memoryview (and its release).
            small = buf[start:end]
            if parse is not None:
                if type(small) is not bytes:  # a bytearray's slice: parsers take bytes
                    small = bytes(small)
                parsed = parse(small)
                if parsed is not None:
                    return parsed
            body = io.BytesIO(small)
        else:
            with memoryview(buf) as view, view[start:end] as part:
                body = io.BytesIO(part)
        try:
            obj = _decode_with(self._cbor, body)
        except RemoteProtocolError as exc:
            self._fail(exc)
        if length > _SMALL_FRAME:
            self._cbor.fp = _EMPTY  # do not keep a copy of a large body alive
        return obj

    def _need_data(self, avail: int) -> Any:
        if not self._eof:
            return NEED_DATA
        if avail == 0:
            self.state = DecoderState.CLOSED
            self._buf = bytearray()
            self._pos = 0
            return CLOSED
        self._fail(RemoteProtocolError(f"connection closed inside a frame ({avail} bytes left)"))

    def _fail(self, exc: RemoteProtocolError) -> NoReturn:
        self.state = DecoderState.ERROR
        self._error = exc
        self._buf = bytearray()  # free memory; nothing more will be decoded
        self._pos = 0
        raise exc
