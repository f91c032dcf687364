"""FrameDecoder / encode_frame: splits, limits, EOF, garbage, CBOR safety."""

from __future__ import annotations

import contextlib
import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.errors import ErrorCode, ProtocolError
from prkdb.wire.errors import LocalProtocolError, RemoteProtocolError
from prkdb.wire.frames import (
    CLOSED,
    DEFAULT_MAX_FRAME,
    MAX_DEPTH,
    NEED_DATA,
    DecoderState,
    FrameDecoder,
    decode_body,
    encode_frame,
    encode_frames,
)

plain_items = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=30)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


def drain(dec: FrameDecoder) -> list[object]:
    out = []
    while (item := dec.next_frame()) is not NEED_DATA and item is not CLOSED:
        out.append(item)
    return out


def feed(dec: FrameDecoder, chunk: bytes) -> None:
    if chunk:  # b"" would mean EOF
        dec.receive_data(chunk)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_round_trip_simple() -> None:
    dec = FrameDecoder()
    dec.receive_data(encode_frame([1, b"k", "v", None, True, {"a": [1, 2]}]))
    assert dec.next_frame() == [1, b"k", "v", None, True, {"a": [1, 2]}]
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(b"")
    assert dec.next_frame() is CLOSED
    assert dec.state is DecoderState.CLOSED
    assert dec.next_frame() is CLOSED


def test_encode_frame_layout() -> None:
    assert encode_frame(1) == b"\x00\x00\x00\x01\x01"
    assert encode_frame([]) == b"\x00\x00\x00\x01\x80"


@settings(max_examples=60, deadline=None)
@given(st.lists(plain_items, min_size=1, max_size=5), st.data())
def test_every_split_point(items: list[object], data: st.DataObject) -> None:
    """Any split of a multi-frame stream decodes to the same items (every point, 1 and 2 cuts)."""
    stream = encode_frames(items)
    for cut in range(len(stream) + 1):
        dec = FrameDecoder()
        feed(dec, stream[:cut])
        got = drain(dec)
        feed(dec, stream[cut:])
        got += drain(dec)
        dec.receive_data(b"")
        assert dec.next_frame() is CLOSED
        assert got == items
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = FrameDecoder()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        feed(dec, stream[a:b])
        got += drain(dec)
    assert got == items


def test_byte_at_a_time_many_frames() -> None:
    items = [[i, b"x" * (i % 7)] for i in range(200)]
    stream = encode_frames(items)
    dec = FrameDecoder()
    got = []
    for i in range(len(stream)):
        dec.receive_data(stream[i : i + 1])
        got += drain(dec)
    assert got == items
    assert dec.buffered == 0


def test_many_small_frames_in_one_chunk_is_linear() -> None:
    """20k frames in one chunk decode without quadratic copying (would take seconds)."""
    items = list(range(20_000))
    dec = FrameDecoder()
    dec.receive_data(encode_frames(items))
    assert drain(dec) == items


def test_encode_frames_equals_concatenation() -> None:
    items = [1, [b"a"], {"k": "v"}]
    assert encode_frames(items) == b"".join(encode_frame(i) for i in items)
    assert encode_frames([]) == b""


def test_oversize_length_rejected_before_body() -> None:
    dec = FrameDecoder(max_frame=100)
    dec.receive_data(struct.pack(">I", 101))  # header only: no body sent at all
    with pytest.raises(RemoteProtocolError) as info:
        dec.next_frame()
    assert info.value.code == ErrorCode.TOO_LARGE
    assert "101" in str(info.value) and "100" in str(info.value)
    assert dec.state is DecoderState.ERROR
    assert dec.buffered == 0


def test_default_max_frame_rejects_huge_length() -> None:
    dec = FrameDecoder()
    dec.receive_data(b"\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError) as info:
        dec.next_frame()
    assert info.value.code == ErrorCode.TOO_LARGE
    assert DEFAULT_MAX_FRAME == 16 * 1024 * 1024


@pytest.mark.parametrize(("start", "kind", "text"), [
    (b"HTTP/1.1 404 Not Found\r\n", "response", "the peer answered HTTP, not the PrkDB"),
    (b"HTTP/1.0 200 OK\r\n\r\n", "response", "an HTTP port (etcd, a proxy)"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "request", "HTTP request (GET...)"),
    (b"POST /v3/kv/put HTTP/1.1\r\n", "request", "HTTP request (POST...)"),
    (b"PUT /k HTTP/1.1\r\n", "request", "HTTP request (PUT...)"),
    (b"HEAD / HTTP/1.1\r\n", "request", "this is a PrkDB port"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "request", "HTTP request (PRI...)"),
])
def test_http_instead_of_frames_says_so(start: bytes, kind: str, text: str) -> None:
    # b"HTTP" as a length is 1213486160: the old error was "frame length
    # 1213486160 exceeds max_frame (16777216)", which hides a port mix-up.
    for cut in (4, len(start)):  # the header alone is enough to tell
        dec = FrameDecoder()
        dec.receive_data(start[:cut])
        with pytest.raises(RemoteProtocolError) as info:
            dec.next_frame()
        assert text in info.value.message and "max_frame" not in info.value.message
        assert info.value.code == ErrorCode.BAD_REQUEST
        assert info.value.details["http"] == kind
        assert dec.state is DecoderState.ERROR
        with pytest.raises(RemoteProtocolError, match="HTTP"):
            dec.next_frame()  # sticky, with the same reason


def test_http_check_only_for_oversize_headers() -> None:
    # A frame that fits max_frame is never taken for HTTP, and a too-long
    # header that is not HTTP keeps the TOO_LARGE error.
    dec = FrameDecoder(max_frame=0x48545450)
    dec.receive_data(b"HTTP")
    assert dec.next_frame() is NEED_DATA
    dec = FrameDecoder()
    dec.receive_data(b"HTTX")
    with pytest.raises(RemoteProtocolError) as info:
        dec.next_frame()
    assert info.value.code == ErrorCode.TOO_LARGE


def test_exact_max_frame_is_accepted() -> None:
    body = cbor2.dumps(b"x" * 95)
    dec = FrameDecoder(max_frame=len(body))
    dec.receive_data(frame(body))
    assert dec.next_frame() == b"x" * 95


def test_max_frame_can_change_between_frames() -> None:
    dec = FrameDecoder(max_frame=10)
    dec.receive_data(encode_frame(1))
    assert dec.next_frame() == 1
    dec.max_frame = 1000
    dec.receive_data(encode_frame(b"y" * 500))
    assert dec.next_frame() == b"y" * 500


def test_encode_oversize_is_local_error() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(b"x" * 100, max_frame=50)
    assert info.value.code == ErrorCode.TOO_LARGE
    with pytest.raises(LocalProtocolError):
        encode_frames([1, b"x" * 100], max_frame=50)


def test_encode_unencodable_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(object())


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 9])
def test_eof_mid_frame(cut: int) -> None:
    stream = encode_frame([1, b"12345678"])
    dec = FrameDecoder()
    dec.receive_data(stream[:cut])
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed inside a frame"):
        dec.next_frame()
    assert dec.state is DecoderState.ERROR


def test_eof_after_complete_frames_yields_them_first() -> None:
    dec = FrameDecoder()
    dec.receive_data(encode_frames([1, 2]))
    dec.receive_data(b"")
    assert [dec.next_frame(), dec.next_frame(), dec.next_frame()] == [1, 2, CLOSED]


def test_data_after_eof_is_local_error() -> None:
    dec = FrameDecoder()
    dec.receive_data(b"")
    dec.receive_data(b"")  # repeated EOF is harmless
    with pytest.raises(LocalProtocolError):
        dec.receive_data(b"x")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "empty"),
        (b"\x01\x02", "trailing"),
        (b"\x82\x01", "undecodable"),  # array of 2 with 1 item
        (b"\xff", "undecodable"),  # lone break
        (b"\x62\xff\xfe", "undecodable"),  # invalid utf-8 text
        (b"\x5a\xff\xff\xff\xff", "undecodable"),  # 4 GiB byte string declared
        (b"\x9f\x01\xff", "undecodable"),  # indefinite array
        (b"\x5f\x41\x00\xff", "undecodable"),  # indefinite byte string
        (b"\xa2\x61a\x01\x61a\x02", "undecodable"),  # duplicate key
        (b"\xa1\x01\x02", "undecodable"),  # int map key (hash-collision guard)
        (b"\xa1\x81\x01\x02", "undecodable"),  # array map key
        (b"\x1c", "undecodable"),  # reserved additional info
    ],
)
def test_garbage_body_is_bad_request(body: bytes, why: str) -> None:
    dec = FrameDecoder()
    dec.receive_data(frame(body))
    with pytest.raises(RemoteProtocolError, match=why) as info:
        dec.next_frame()
    assert info.value.code == ErrorCode.BAD_REQUEST
    assert isinstance(info.value, ProtocolError)


def test_nesting_limit() -> None:
    ok = b"\x81" * (MAX_DEPTH - 1) + b"\x01"
    assert decode_body(ok) is not None
    with pytest.raises(RemoteProtocolError):
        decode_body(b"\x81" * (MAX_DEPTH + 5) + b"\x01")
    with pytest.raises(RemoteProtocolError):
        decode_body(b"\x81" * 100_000 + b"\x01")


BUILTIN_TAG_SAMPLES = [
    (0, "2020-01-01T00:00:00Z"),
    (1, 0),
    (2, b"\x01"),
    (3, b"\x01"),
    (4, [1, 1]),
    (5, [1, 1]),
    (25, 0),
    (28, [1]),
    (29, 0),
    (30, [1, 2]),
    (35, "a+"),
    (36, "x"),
    (37, b"\x00" * 16),
    (52, b"\x7f\x00\x00\x01"),
    (54, b"\x00" * 16),
    (100, 1),
    (256, [1]),
    (258, [1, 2]),
    (260, b"\x7f\x00\x00\x01"),
    (261, {"a": 1}),
    (1004, "2020-01-01"),
    (55799, 1),
]


@pytest.mark.parametrize(("tag", "value"), BUILTIN_TAG_SAMPLES)
def test_builtin_semantic_tags_rejected(tag: int, value: object) -> None:
    with pytest.raises(RemoteProtocolError, match="tag"):
        decode_body(cbor2.dumps(cbor2.CBORTag(tag, value)))


def test_no_tag_ever_builds_an_object() -> None:
    """Probe many tags with several payloads: every one is rejected, none constructs anything."""
    payloads = [0, b"\x01", "x", [0, 0], {"a": 0}]
    for tag in [*range(0, 1100), 1040, 22098, 40000, 65535, 2**32, 2**63]:
        for value in payloads:
            with pytest.raises(RemoteProtocolError):
                decode_body(cbor2.dumps(cbor2.CBORTag(tag, value)))


def test_simple_values_and_floats_pass_framing() -> None:
    # Framing accepts plain CBOR; the schema layer rejects what it did not ask for.
    assert decode_body(b"\xf9\x3c\x00") == 1.0
    assert decode_body(b"\xf6") is None


def test_error_state_is_sticky() -> None:
    dec = FrameDecoder()
    dec.receive_data(frame(b"\x01\x02") + encode_frame(5))
    with pytest.raises(RemoteProtocolError) as first:
        dec.next_frame()
    for _ in range(3):
        with pytest.raises(RemoteProtocolError, match="ERROR state") as again:
            dec.next_frame()
        assert again.value.code == first.value.code
    dec.receive_data(encode_frame(6))  # ignored, not buffered
    assert dec.buffered == 0
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()
    dec.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_sticky_too_large_keeps_code() -> None:
    dec = FrameDecoder(max_frame=4)
    dec.receive_data(struct.pack(">I", 5))
    for _ in range(2):
        with pytest.raises(RemoteProtocolError) as info:
            dec.next_frame()
        assert info.value.code == ErrorCode.TOO_LARGE


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_garbage_never_escapes(garbage: bytes) -> None:
    """Random bytes give items, NEED_DATA, CLOSED or RemoteProtocolError; nothing else."""
    dec = FrameDecoder(max_frame=1024)
    dec.receive_data(garbage)
    dec.receive_data(b"")
    try:
        while dec.next_frame() is not CLOSED:
            pass
    except RemoteProtocolError:
        assert dec.state is DecoderState.ERROR


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64))
def test_random_bodies_never_escape(body: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_body(body)


def test_invalid_max_frame() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=0)
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=2**32)


def _outcome(fn: object, *args: object) -> tuple[str, object]:
    try:
        return "ok", fn(*args)  # type: ignore[operator]
    except RemoteProtocolError as exc:
        return "error", (exc.message, exc.code)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40) | plain_items.map(cbor2.dumps), min_size=1, max_size=4))
def test_reused_decoder_agrees_with_decode_body(bodies: list[bytes]) -> None:
    """FrameDecoder reuses one CBOR decoder per connection; decode_body builds a fresh one.

    Both must accept and reject the same bodies with the same error, however many
    frames came before (nothing may leak from one frame into the next).
    """
    dec = FrameDecoder()
    dec.receive_data(b"".join(frame(b) for b in bodies))
    for body in bodies:
        want = _outcome(decode_body, body)
        got = _outcome(dec.next_frame)
        assert got == want
        if want[0] == "error":
            assert dec.state is DecoderState.ERROR
            return


def test_large_and_small_frames_alternate() -> None:
    """Bodies over the small-frame size take the memoryview path; results are the same."""
    big = [b"x" * 100_000, list(range(20_000))]
    items: list[object] = [1, big, [2, b"y"], big, "z"]
    dec = FrameDecoder()
    dec.receive_data(encode_frames(items))
    assert drain(dec) == items


def test_large_frame_with_trailing_bytes() -> None:
    dec = FrameDecoder()
    dec.receive_data(encode_frame(3) + frame(cbor2.dumps(b"x" * 100_000) + b"\x01"))
    assert dec.next_frame() == 3
    with pytest.raises(RemoteProtocolError, match="trailing"):
        dec.next_frame()
