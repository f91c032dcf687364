"""The SDK core's login logic, sans-IO: a scripted node answers each `Send` (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from prkdb.client.core import (
    AUTHENTICATE_REQUEST_ID,
    ClientCore,
    Send,
    Sleep,
    _Op,
    drive_blocking,
)
from prkdb.client.security import Credentials
from prkdb.errors import AuthFailed, ErrorCode, Unauthenticated
from prkdb.wire import NEED_DATA, FrameDecoder
from prkdb.wire.messages import (
    Authenticate,
    AuthOk,
    Error,
    Hello,
    Login,
    StatusOk,
    from_wire,
)

ADDR = "127.0.0.1:1"


class Node:
    """Answers requests by type; records what it was sent."""

    def __init__(self, *, valid: set[str], password: str = "pw") -> None:
        self.valid = valid  # tokens it takes
        self.password = password
        self.bound = False
        self.sent: list[str] = []
        self.logins = 0

    def send(self, action: Send) -> Any:
        msg = from_wire(action.build(7))
        self.sent.append(type(msg).__name__)
        if isinstance(msg, Login):
            self.logins += 1
            if msg.password != self.password:
                return Error(7, ErrorCode.AUTH_FAILED, "login failed: wrong user or password")
            token = f"t{self.logins}"
            self.valid.add(token)
            self.bound = True
            return AuthOk(7, msg.user, token, 1)
        if isinstance(msg, Authenticate):
            if msg.token in self.valid:
                self.bound = True
                return AuthOk(7, "u", msg.token, 1)
            return Error(7, ErrorCode.UNAUTHENTICATED, "token expired")
        if not self.bound:
            return Error(7, ErrorCode.UNAUTHENTICATED, "authentication required")
        return StatusOk(7, 1, "c", (), ())


def _core(password: str = "pw") -> ClientCore:
    t = [0.0]
    return ClientCore([ADDR], clock=lambda: t[0], credentials=Credentials("u", password))


def _status(core: ClientCore, node: Node) -> Any:
    op = _Op(lambda: "status", lambda rid: [15, rid], address=ADDR)
    return drive_blocking(core.execute(op, 5.0, StatusOk), node.send, lambda s: None)


def test_a_refused_request_presents_the_token_first() -> None:
    core = _core()
    core.token = "t0"  # still good: a connection dialed before the login
    node = Node(valid={"t0"})
    assert isinstance(_status(core, node), StatusOk)
    assert node.sent == ["Status", "Authenticate", "Status"] and node.logins == 0


def test_an_expired_token_logs_in_again_once() -> None:
    core = _core()
    core.token = "old"
    node = Node(valid=set())
    assert isinstance(_status(core, node), StatusOk)
    assert node.sent == ["Status", "Authenticate", "Login", "Status"]
    assert core.token == "t1"


def test_a_wrong_password_is_raised_and_a_second_refusal_too() -> None:
    core = _core("nope")
    node = Node(valid=set())
    with pytest.raises(AuthFailed, match="wrong user or password"):
        _status(core, node)

    class Stubborn(Node):  # takes every login, binds nothing
        def send(self, action: Send) -> Any:
            reply = super().send(action)
            self.bound = False
            return reply

    with pytest.raises(Unauthenticated):
        _status(_core(), Stubborn(valid=set()))


def test_without_credentials_unauthenticated_is_raised() -> None:
    core = ClientCore([ADDR], clock=lambda: 0.0)
    with pytest.raises(Unauthenticated):
        _status(core, Node(valid=set()))


def test_new_connections_present_the_token_after_hello() -> None:
    core = _core()
    dec = FrameDecoder()
    dec.receive_data(core.hello_frame())
    assert isinstance(from_wire(dec.next_frame()), Hello)
    assert dec.next_frame() is NEED_DATA  # no token yet: the Hello alone
    core.token = "tok"
    dec = FrameDecoder()
    dec.receive_data(core.hello_frame())
    frames = [from_wire(dec.next_frame()), from_wire(dec.next_frame())]
    assert isinstance(frames[0], Hello)
    assert frames[1] == Authenticate(AUTHENTICATE_REQUEST_ID, "tok")


def test_a_burst_of_refusals_costs_one_login() -> None:
    """Two calls refused at once: one logs in, the other waits and presents its token."""
    core = _core()
    core.token = "old"
    node = Node(valid=set())
    op = _Op(lambda: "status", lambda rid: [15, rid], address=ADDR)
    a, b = core.execute(op, 5.0, StatusOk), core.execute(op, 5.0, StatusOk)
    act_a, act_b = next(a), next(b)
    act_a, act_b = a.send(node.send(act_a)), b.send(node.send(act_b))  # both refused
    act_a = a.send(node.send(act_a))  # a: its Authenticate refused -> a Login (pending)
    assert from_wire(act_a.build(7)).__class__ is Login
    act_b = b.send(node.send(act_b))  # b: refused too; a login runs: b waits
    assert isinstance(act_b, Sleep)
    act_a = a.send(node.send(act_a))  # a's login answered: token t1; a retries
    act_b = b.send(None)  # b wakes: presents the new token
    assert from_wire(act_b.build(7)) == Authenticate(7, "t1")
    for plan, act in ((a, act_a), (b, act_b)):
        with pytest.raises(StopIteration) as done:
            while True:
                act = plan.send(node.send(act))
        assert isinstance(done.value.value, StatusOk)
    assert node.logins == 1
