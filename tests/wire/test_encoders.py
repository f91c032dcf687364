"""Encoding fast paths produce exactly the bytes of the generic path (cbor2.dumps, to_wire).

The generic path is the reference: every fast encoder must be byte-identical
to it for valid input, and fall back to it (same bytes, same errors) for
anything unusual.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prkdb.errors import ErrorCode
from prkdb.wire.errors import LocalProtocolError
from prkdb.wire.frames import (
    CBOR_ARRAY,
    CBOR_BYTES,
    CBOR_UINT,
    PreEncoded,
    cbor_head,
    encode_body,
    encode_frame,
)

# Plain CBOR data as our messages use it, plus the odd corners cbor2 handles
# (negative ints, bignums, floats, text, maps).
plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.binary(max_size=300)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=30) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=60,
)

BOUNDARIES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]


# --- the reused encoder ------------------------------------------------------------------


@given(plain)
def test_encode_body_equals_cbor2_dumps(obj: Any) -> None:
    assert encode_body(obj) == cbor2.dumps(obj)


class _Unencodable:
    pass


def _cyclic() -> list[Any]:
    inner: list[Any] = [1]
    outer = [2, [3, inner]]
    inner.append(outer)
    return outer


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([1, [2, _Unencodable()]], id="unknown-type-deep"),
        pytest.param(_cyclic(), id="cycle"),
        pytest.param([b"x" * 1000, _Unencodable()], id="after-many-bytes"),
    ],
)
def test_failed_encode_leaves_nothing_behind(bad: Any) -> None:
    """A failure halfway through an item must not leak bytes into the next body."""
    good = [31, 7, True, 1234567, 3, 2, []]
    encode_body(good)
    with pytest.raises(LocalProtocolError) as info:
        encode_body(bad)
    assert info.value.code == ErrorCode.INTERNAL
    assert encode_body(good) == cbor2.dumps(good)
    assert encode_frame(good) == struct.pack(">I", len(cbor2.dumps(good))) + cbor2.dumps(good)


def test_unknown_type_error_text_is_cbor2s() -> None:
    """The PreEncoded hook must not change how other unknown types are refused."""
    with pytest.raises(cbor2.CBOREncodeError) as native:
        cbor2.dumps([_Unencodable()])
    with pytest.raises(LocalProtocolError) as ours:
        encode_body([_Unencodable()])
    assert ours.value.message == f"cannot encode list as cbor: {native.value}"


def test_threads_get_their_own_encoder() -> None:
    """Worker threads (snapshots) encode concurrently with the event loop thread."""
    items = [[i, b"v" * (i % 300), list(range(i % 40))] for i in range(300)]
    expected = [cbor2.dumps(x) for x in items]
    errors: list[str] = []

    def work() -> None:
        for _ in range(20):
            got = [encode_body(x) for x in items]
            if got != expected:
                errors.append("mismatch")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    work()
    for t in threads:
        t.join()
    assert errors == []


def test_large_body_is_not_kept() -> None:
    """Each body gets a fresh buffer: encoding a small item after a large one is small."""
    encode_body([b"x" * (4 * 1024 * 1024)])
    assert encode_body([1]) == b"\x81\x01"


# --- hand-built pieces -------------------------------------------------------------------


@pytest.mark.parametrize("n", BOUNDARIES)
def test_cbor_head_matches_cbor2(n: int) -> None:
    assert cbor_head(CBOR_UINT, n) == cbor2.dumps(n)
    payload = b"x" * n if n <= 70000 else None
    if payload is not None:
        assert cbor_head(CBOR_BYTES, n) + payload == cbor2.dumps(payload)
    if n <= 70000:
        assert cbor_head(CBOR_ARRAY, n) + b"\x00" * n == cbor2.dumps([0] * n)


@pytest.mark.parametrize("n", [-1, -24, 2**64, 2**70])
def test_cbor_head_refuses_what_cbor2_writes_differently(n: int) -> None:
    with pytest.raises(struct.error):
        cbor_head(CBOR_UINT, n)


@given(plain, plain)
def test_pre_encoded_is_spliced_in_place(a: Any, b: Any) -> None:
    obj = [a, [b, a], {"k": b}]
    spliced = [PreEncoded(cbor2.dumps(a)), [b, PreEncoded(cbor2.dumps(a))], {"k": b}]
    assert encode_body(spliced) == cbor2.dumps(obj)
