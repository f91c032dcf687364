"""ErrorCode values, the exception hierarchy, and error_from_code."""

from __future__ import annotations

import pytest

from prkdb import errors as e
from prkdb.errors import ErrorCode, error_from_code
from prkdb.wire import messages as m
from prkdb.wire.errors import LocalProtocolError, RemoteProtocolError


def test_codes_are_stable() -> None:
    """Codes are on the wire: renumbering breaks every deployed client."""
    assert {c.name: int(c) for c in ErrorCode} == {
        "OK": 0,
        "NOT_LEADER": 1,
        "UNAVAILABLE": 2,
        "OUTCOME_UNKNOWN": 3,
        "BAD_REQUEST": 4,
        "TOO_LARGE": 5,
        "WRONG_CLUSTER": 6,
        "BAD_VERSION": 7,
        "INTERNAL": 8,
        "TIMEOUT": 9,
        "LEASE_NOT_FOUND": 10,
        "TOO_MANY_LEASES": 11,
        "COMPACTED": 12,
        "WATCH_OVERFLOW": 13,
        "UNAUTHENTICATED": 14,
        "PERMISSION_DENIED": 15,
        "AUTH_FAILED": 16,
    }
    assert set(e.ERROR_DESCRIPTIONS) == set(ErrorCode)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (ErrorCode.NOT_LEADER, e.NotLeader),
        (ErrorCode.UNAVAILABLE, e.Unavailable),
        (ErrorCode.OUTCOME_UNKNOWN, e.OutcomeUnknown),
        (ErrorCode.BAD_REQUEST, e.InvalidRequest),
        (ErrorCode.TOO_LARGE, e.TooLarge),
        (ErrorCode.WRONG_CLUSTER, e.WrongCluster),
        (ErrorCode.BAD_VERSION, e.ProtocolError),
        (ErrorCode.INTERNAL, e.InternalError),
        (ErrorCode.TIMEOUT, e.Timeout),
        (ErrorCode.LEASE_NOT_FOUND, e.LeaseNotFound),
        (ErrorCode.TOO_MANY_LEASES, e.TooManyLeases),
        (ErrorCode.COMPACTED, e.Compacted),
        (ErrorCode.WATCH_OVERFLOW, e.WatchOverflow),
        (ErrorCode.UNAUTHENTICATED, e.Unauthenticated),
        (ErrorCode.PERMISSION_DENIED, e.PermissionDenied),
        (ErrorCode.AUTH_FAILED, e.AuthFailed),
    ],
)
def test_error_from_code_maps_every_code(code: ErrorCode, cls: type) -> None:
    exc = error_from_code(code, "boom", extra=1)
    assert type(exc) is cls
    assert isinstance(exc, e.PrkdbError)
    assert exc.code == code
    assert exc.message == "boom" or code == ErrorCode.NOT_LEADER
    assert exc.details["extra"] == 1


def test_every_code_has_a_class() -> None:
    for code in ErrorCode:
        if code != ErrorCode.OK:
            assert type(error_from_code(code, "x")) is not e.PrkdbError, code


def test_compacted_details() -> None:
    """COMPACTED carries the oldest cursor the replica can serve, and the partition."""
    exc = error_from_code(ErrorCode.COMPACTED, "compacted", oldest=1200, partition=3)
    assert isinstance(exc, e.Compacted)
    assert (exc.oldest, exc.partition) == (1200, 3)
    assert exc.details == {"oldest": 1200, "partition": 3} and exc.message == "compacted"
    bare = error_from_code(ErrorCode.COMPACTED, "")
    assert isinstance(bare, e.Compacted) and bare.oldest is None and bare.partition is None
    # wrong-typed details from a buggy server do not leak into typed attributes
    odd = error_from_code(ErrorCode.COMPACTED, "", oldest="1200", partition=True)
    assert isinstance(odd, e.Compacted) and odd.oldest is None and odd.partition is None
    assert not isinstance(exc, e.Unavailable)  # relist, do not resume blindly


def test_compacted_constructor() -> None:
    exc = e.Compacted(1200, partition=3)
    assert exc.code == ErrorCode.COMPACTED
    assert exc.details == {"oldest": 1200, "partition": 3}
    assert str(exc) == (
        "the event history of partition 3 is compacted: the oldest cursor held is 1200; "
        "list again, then watch"
    )
    assert e.Compacted(7).oldest == 7 and e.Compacted(7).partition is None
    assert "oldest cursor held is 7" in str(e.Compacted(7))


def test_watch_overflow_is_resumed() -> None:
    """The SDK resumes after WATCH_OVERFLOW as after UNAVAILABLE: nothing is lost."""
    assert issubclass(e.WatchOverflow, e.Unavailable)
    assert e.WatchOverflow("slow").code == ErrorCode.WATCH_OVERFLOW


def test_not_leader_details() -> None:
    exc = error_from_code(
        ErrorCode.NOT_LEADER, "", leader_id=2, leader_address="10.0.0.2:8080", partition=5
    )
    assert isinstance(exc, e.NotLeader)
    assert (exc.leader_id, exc.leader_address, exc.partition) == (2, "10.0.0.2:8080", 5)
    assert "node 2 at 10.0.0.2:8080" in str(exc)
    unknown = error_from_code(ErrorCode.NOT_LEADER, "no leader")
    assert isinstance(unknown, e.NotLeader)
    assert unknown.leader_id is None and unknown.leader_address is None
    # wrong-typed details from a buggy server do not leak into typed attributes
    odd = error_from_code(ErrorCode.NOT_LEADER, "", leader_id="2", leader_address=5)
    assert isinstance(odd, e.NotLeader)
    assert odd.leader_id is None and odd.leader_address is None


def test_not_leader_constructor() -> None:
    exc = e.NotLeader(3, "h:1")
    assert exc.code == ErrorCode.NOT_LEADER
    assert exc.details == {"leader_id": 3, "leader_address": "h:1"}
    assert str(exc) == "not the leader; the leader is node 3 at h:1"
    assert str(e.NotLeader()) == "not the leader; no leader known"


def test_unknown_code_keeps_raw_int() -> None:
    exc = error_from_code(4242, "future", x=1)
    assert type(exc) is e.PrkdbError
    assert exc.code == 4242 and exc.details == {"x": 1}
    assert "4242" in repr(exc)


def test_ok_is_not_an_error() -> None:
    with pytest.raises(ValueError):
        error_from_code(ErrorCode.OK, "")


def test_hierarchy() -> None:
    assert issubclass(e.Timeout, e.Unavailable)
    assert issubclass(e.TooLarge, e.InvalidRequest)
    assert issubclass(RemoteProtocolError, e.ProtocolError)
    assert issubclass(LocalProtocolError, e.ProtocolError)
    for cls in (
        e.NotLeader,
        e.Unavailable,
        e.OutcomeUnknown,
        e.InvalidRequest,
        e.WrongCluster,
        e.ProtocolError,
        e.InternalError,
    ):
        assert issubclass(cls, e.PrkdbError)
    assert not issubclass(e.OutcomeUnknown, e.Unavailable)  # must never be retried blindly


def test_error_frame_to_exception() -> None:
    """What the SDK does: Error frame -> exception, with details carried over."""
    frame = m.from_wire([3, 7, 1, "not leader", {"leader_id": 2, "leader_address": "a:1"}])
    assert isinstance(frame, m.Error)
    exc = error_from_code(frame.code, frame.message, **frame.details)
    assert isinstance(exc, e.NotLeader) and exc.leader_address == "a:1"


def test_remote_protocol_error_carries_request_id() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        m.from_wire([11, 42, "k", b"v", 1, 1])
    assert info.value.request_id == 42
    with pytest.raises(RemoteProtocolError) as info:
        m.from_wire([11, "x", b"k", b"v", 1, 1])
    assert info.value.request_id == 0
    with pytest.raises(RemoteProtocolError) as info:
        m.from_wire([1, 1, "c", "peer", 0])  # Hello has no request id
    assert info.value.request_id == 0


def test_lease_errors_are_not_retryable() -> None:
    """The client retries UNAVAILABLE, TIMEOUT and OUTCOME_UNKNOWN only; a lost lease is final."""
    for cls in (e.LeaseNotFound, e.TooManyLeases):
        assert issubclass(cls, e.PrkdbError)
        assert not issubclass(cls, e.Unavailable | e.OutcomeUnknown)


@pytest.mark.parametrize(
    ("code", "cls", "details"),
    [
        (ErrorCode.LEASE_NOT_FOUND, e.LeaseNotFound, {"lease_id": 5046275}),
        (ErrorCode.TOO_MANY_LEASES, e.TooManyLeases, {"lease_id": 5046275}),
        (ErrorCode.COMPACTED, e.Compacted, {"oldest": 5046275, "partition": 2}),
        (ErrorCode.WATCH_OVERFLOW, e.WatchOverflow, {}),
    ],
)
def test_the_client_raises_lease_and_watch_errors(
    code: ErrorCode, cls: type, details: dict[str, int]
) -> None:
    """An Error frame with a lease or watch code becomes its class in the SDK (error_from_frame)."""
    from prkdb.client.attempt import error_from_frame

    frame = m.from_wire([3, 4, int(code), "it failed", details])
    assert isinstance(frame, m.Error) and frame.code is code
    exc = error_from_frame(frame)
    assert type(exc) is cls and exc.code == code
    assert exc.details == details and exc.message == "it failed"
    if isinstance(exc, e.Compacted):
        assert (exc.oldest, exc.partition) == (5046275, 2)
