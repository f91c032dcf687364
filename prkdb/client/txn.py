"""Transaction builders: compares and ops for `txn` (etcd's Txn, within one partition).

```python
from prkdb.client.txn import Compare, Delete, Get, Put, absent, exists

await client.txn(
    [Compare.value(b"{acct:7}/state") == b"open", Compare.version(b"{acct:7}/lock") == 0],
    [Put(b"{acct:7}/state", b"closed"), Delete(b"{acct:7}/pending"), Get(b"{acct:7}/state")],
    [Get(b"{acct:7}/state")],
)
```

A compare is made by comparing a *target* of a key with an operand:
``Compare.value(k) == b"x"``, ``Compare.version(k) > 0``,
``Compare.create_revision(k) < 10``, ``Compare.mod_revision(k) != 3``,
``Compare.lease(k) == lease_id``; `exists` and `absent` are the usual two.
``==``, ``!=``, ``<`` and ``>`` are supported (the four ops of the wire);
VALUE compares bytes (lexicographically), the others ints >= 0. An absent
key has version, revisions and lease 0 and *no value*: any VALUE compare on
it is false, whatever the op (etcd's rule).

Every key of one transaction (compares and both branches) must be in one
partition: related keys share a partition when they share a hash tag, the
part between the first ``{`` and the next ``}`` (``{acct:7}/state``,
``{acct:7}/lock``). The SDK checks this before sending and names the
partitions otherwise.

These are the SDK's own small values; `to_wire` turns them into the wire
records (`prkdb.wire.messages.Compare` and `TxnOp`), which `txn` also takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, final

from prkdb.client.results import check_key, check_value
from prkdb.errors import InvalidRequest
from prkdb.wire.messages import Compare as WireCompare
from prkdb.wire.messages import CompareOp, CompareTarget, TxnOp, TxnOpKind

__all__ = [
    "Compare",
    "CompareOp",
    "CompareTarget",
    "Delete",
    "Get",
    "Put",
    "TxnOpLike",
    "absent",
    "compare_to_wire",
    "exists",
    "op_to_wire",
]

_U64_MAX: Final = (1 << 64) - 1


@final
@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a txn: ``target(key) <op> operand`` (build with the class methods).

    Attributes:
        key: the key compared.
        target: what of the key (value, version, create/mod revision, lease).
        op: EQUAL, NOT_EQUAL, LESS or GREATER.
        operand: bytes for VALUE, an int >= 0 for the other targets.
    """

    key: bytes
    target: CompareTarget
    op: CompareOp
    operand: bytes | int

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", check_key(self.key, "compare key"))
        object.__setattr__(self, "target", CompareTarget(self.target))
        object.__setattr__(self, "op", CompareOp(self.op))
        if self.target == CompareTarget.VALUE:
            object.__setattr__(self, "operand", check_value(self.operand, "compare value"))
        elif (isinstance(self.operand, bool) or not isinstance(self.operand, int)
              or not 0 <= self.operand <= _U64_MAX):
            raise InvalidRequest(f"compare of {self.target.name.lower()} of {self.key[:32]!r}: "
                                 f"operand {self.operand!r:.40} must be an int >= 0")

    @staticmethod
    def value(key: bytes) -> CompareBuilder:
        """``Compare.value(k) == b"x"``: compares the value (false if the key is absent)."""
        return CompareBuilder(key, CompareTarget.VALUE)

    @staticmethod
    def version(key: bytes) -> CompareBuilder:
        """``Compare.version(k) == 3``: writes since the key was created; 0 = absent."""
        return CompareBuilder(key, CompareTarget.VERSION)

    @staticmethod
    def create_revision(key: bytes) -> CompareBuilder:
        """The revision (partition log index) that created the key; 0 = absent."""
        return CompareBuilder(key, CompareTarget.CREATE_REVISION)

    @staticmethod
    def mod_revision(key: bytes) -> CompareBuilder:
        """The revision of the key's last write; 0 = absent."""
        return CompareBuilder(key, CompareTarget.MOD_REVISION)

    @staticmethod
    def lease(key: bytes) -> CompareBuilder:
        """The lease id the key is attached to; 0 = none (or absent)."""
        return CompareBuilder(key, CompareTarget.LEASE)


@final
class CompareBuilder:
    """``Compare.<target>(key)``: compare it with ``==``, ``!=``, ``<`` or ``>`` to get a `Compare`.

    Not a value itself: it cannot be hashed, and ``bool()`` of it is an error,
    so a forgotten comparison (``if Compare.version(k): ...``) fails loudly.
    """

    __slots__ = ("key", "target")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, key: bytes, target: CompareTarget) -> None:
        self.key = key
        self.target = target

    def _make(self, op: CompareOp, operand: object) -> Compare:
        return Compare(self.key, self.target, op, operand)  # type: ignore[arg-type]

    def __eq__(self, operand: object) -> Compare:  # type: ignore[override]
        return self._make(CompareOp.EQUAL, operand)

    def __ne__(self, operand: object) -> Compare:  # type: ignore[override]
        return self._make(CompareOp.NOT_EQUAL, operand)

    def __lt__(self, operand: object) -> Compare:
        return self._make(CompareOp.LESS, operand)

    def __gt__(self, operand: object) -> Compare:
        return self._make(CompareOp.GREATER, operand)

    def __le__(self, operand: object) -> Compare:
        raise InvalidRequest("compares support ==, !=, < and > (write x <= n as x < n + 1)")

    def __ge__(self, operand: object) -> Compare:
        raise InvalidRequest("compares support ==, !=, < and > (write x >= n as x > n - 1)")

    def __bool__(self) -> bool:
        raise InvalidRequest(f"Compare.{self.target.name.lower()}({self.key[:32]!r}) needs a "
                             "comparison (==, !=, <, >) to be a condition")

    def __repr__(self) -> str:
        return f"Compare.{self.target.name.lower()}({self.key!r})"


def exists(key: bytes) -> Compare:
    """The key exists (its version is > 0)."""
    return Compare(key, CompareTarget.VERSION, CompareOp.GREATER, 0)


def absent(key: bytes) -> Compare:
    """The key does not exist (its version is 0)."""
    return Compare(key, CompareTarget.VERSION, CompareOp.EQUAL, 0)


@final
@dataclass(frozen=True, slots=True)
class Put:
    """Store `value` under `key`, attached to `lease` (0 = none: detaches it from any)."""

    key: bytes
    value: bytes
    lease: int = 0


@final
@dataclass(frozen=True, slots=True)
class Delete:
    """Delete `key` (absent: nothing happens; its result has prev_version 0)."""

    key: bytes


@final
@dataclass(frozen=True, slots=True)
class Get:
    """Read `key` as the branch's earlier ops left it (`TxnOpResult.value` None = absent)."""

    key: bytes


TxnOpLike = Put | Delete | Get | TxnOp
"""What a txn branch holds: the builders above, or wire `TxnOp` records."""


def check_lease_id(lease: object, what: str = "lease") -> int:
    """`lease` as a lease id (0 = none): an int, or anything with an int ``id`` (a `Lease`).

    Raises:
        InvalidRequest: neither, or out of range.
    """
    if not isinstance(lease, int):
        lease = getattr(lease, "id", lease)
    if isinstance(lease, bool) or not isinstance(lease, int) or not 0 <= lease <= _U64_MAX:
        raise InvalidRequest(f"{what} ({lease!r:.40}) must be a lease id (an int >= 0) "
                             "or a Lease")
    return lease


def compare_to_wire(index: int, cmp: Compare | WireCompare) -> WireCompare:
    """One compare as its wire record.

    Raises:
        InvalidRequest: not a compare (a forgotten ``== x`` shows up here).
    """
    if isinstance(cmp, Compare):
        if cmp.target == CompareTarget.VALUE:
            return WireCompare(cmp.key, cmp.target, cmp.op, cmp.operand, None)  # type: ignore[arg-type]
        return WireCompare(cmp.key, cmp.target, cmp.op, None, cmp.operand)  # type: ignore[arg-type]
    if isinstance(cmp, WireCompare):
        return cmp
    raise InvalidRequest(f"compare {index} ({cmp!r:.60}) is not a Compare; build one as "
                         "Compare.version(key) > 0, exists(key), ...")


def op_to_wire(branch: str, index: int, op: TxnOpLike) -> TxnOp:
    """One op as its wire record, checked.

    Raises:
        InvalidRequest: not an op, or a bad key/value/lease.
    """
    where = f"{branch} op {index}"
    match op:
        case Put():
            return TxnOp(TxnOpKind.PUT, check_key(op.key, f"{where} key"),
                         check_value(op.value, f"{where} value"),
                         check_lease_id(op.lease, f"{where} lease"))
        case Delete():
            return TxnOp(TxnOpKind.DELETE, check_key(op.key, f"{where} key"))
        case Get():
            return TxnOp(TxnOpKind.GET, check_key(op.key, f"{where} key"))
        case TxnOp():
            return op
    raise InvalidRequest(f"{where} ({op!r:.60}) is not Put, Delete or Get")


def ops_to_wire(branch: str, ops: Iterable[TxnOpLike]) -> tuple[TxnOp, ...]:
    if isinstance(ops, Put | Delete | Get | TxnOp):
        raise InvalidRequest(f"{branch} must be a list of ops, not one op: [{ops!r:.60}]")
    return tuple(op_to_wire(branch, i, op) for i, op in enumerate(ops))
