"""Hypothesis strategies and a reference model shared by the state tests.

Keys come from a tiny alphabet so that random sequences hit the same keys
often (versions grow, CAS conditions and txn compares sometimes hold,
deletes hit live keys). Lease ids are drawn from the ids that grants at the
first few log indexes would get (partition 0), so puts and revokes often
name a lease that exists, and sometimes one that does not.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

from hypothesis import strategies as st

from prkdb.state import (
    UNCHECKED,
    BatchCommand,
    Command,
    Compare,
    CompareAndSetCommand,
    CompareOp,
    CompareTarget,
    DeleteCommand,
    GetOp,
    LeaseGrantCommand,
    LeaseRevokeCommand,
    OpResult,
    PutCommand,
    ResultCode,
    TxnCommand,
    WriteResult,
    encode_command,
)

keys = st.sampled_from([b"a", b"b", b"c", b"d"])
values = st.binary(max_size=6)
#: Ids that a grant at log index 1..12 gets in partition 0.
lease_ids = st.integers(1, 12).map(lambda i: i << 16)
leases = st.one_of(st.just(0), st.just(0), lease_ids)

puts = st.builds(PutCommand, keys, values)
leased_puts = st.builds(PutCommand, keys, values, leases)
deletes = st.builds(DeleteCommand, keys)
gets = st.builds(GetOp, keys)
expected_values = st.one_of(st.just(UNCHECKED), st.none(), values)
expected_versions = st.one_of(st.none(), st.integers(0, 4))
cas = st.builds(
    lambda k, ev, ever, nv: CompareAndSetCommand(
        k, expected_value=ev, expected_version=ever, new_value=nv
    ),
    keys,
    expected_values,
    expected_versions,
    st.one_of(st.none(), values),
)
batches = st.builds(BatchCommand, st.lists(st.one_of(puts, deletes), max_size=5).map(tuple))


@st.composite
def compares(draw: st.DrawFn) -> Compare:
    target = draw(st.sampled_from(CompareTarget))
    op = draw(st.sampled_from(CompareOp))
    if target is CompareTarget.VALUE:
        operand: bytes | int = draw(values)
    elif target is CompareTarget.LEASE:
        operand = draw(leases)
    else:
        operand = draw(st.integers(0, 6))
    return Compare(draw(keys), target, op, operand)


txn_ops = st.one_of(leased_puts, deletes, gets)
txns = st.builds(
    TxnCommand,
    st.lists(compares(), max_size=3).map(tuple),
    st.lists(txn_ops, max_size=4).map(tuple),
    st.lists(txn_ops, max_size=4).map(tuple),
)
grants = st.builds(LeaseGrantCommand, st.integers(1, 10_000))
revokes = st.builds(LeaseRevokeCommand, lease_ids, st.booleans())
lease_commands = st.one_of(grants, grants, revokes)

commands: st.SearchStrategy[Command] = st.one_of(
    puts, leased_puts, deletes, cas, batches, txns, lease_commands
)

client_ids = st.sampled_from([b"c1", b"c2", 3, 4])


@st.composite
def entries(draw: st.DrawFn) -> bytes:
    """Entry data as the log would carry it: commands, with or without a
    session, Raft no-ops, and the odd malformed entry."""
    kind = draw(st.sampled_from(["plain", "session", "session", "noop", "garbage"]))
    if kind == "noop":
        return b""
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=8))
    cmd = draw(commands)
    if kind == "plain":
        return encode_command(cmd)
    return encode_command(cmd, draw(client_ids), draw(st.integers(0, 6)))


_RELATIONS = {
    CompareOp.EQUAL: operator.eq,
    CompareOp.NOT_EQUAL: operator.ne,
    CompareOp.LESS: operator.lt,
    CompareOp.GREATER: operator.gt,
}


@dataclass
class Model:
    """A naive reference for the KV rules (no sessions; limits only max_leases).

    It restates the rules of results.py and kv.py as plainly as possible, so
    the machine is checked against the definition, not against itself:
    records are ``(value, version, mod_revision, create_revision, lease)``,
    a lease is just its TTL, and the keys of a lease are found by looking at
    every record.
    """

    partition: int = 0
    max_leases: int = 100_000
    data: dict[bytes, tuple[bytes, int, int, int, int]] = field(default_factory=dict)
    leases: dict[int, int] = field(default_factory=dict)

    def version(self, key: bytes) -> int:
        return self.data[key][1] if key in self.data else 0

    def put(self, index: int, key: bytes, value: bytes, lease: int = 0) -> tuple[int, int]:
        prev = self.version(key)
        create = self.data[key][3] if key in self.data else index
        self.data[key] = (value, prev + 1, index, create, lease)
        return prev + 1, prev

    def delete(self, key: bytes) -> tuple[int, int]:
        prev = self.version(key)
        self.data.pop(key, None)
        return 0, prev

    def holds(self, c: Compare) -> bool:
        record = self.data.get(c.key)
        if c.target == CompareTarget.VALUE:
            return record is not None and _RELATIONS[c.op](record[0], c.operand)
        if record is None:
            field_value = 0
        else:
            _, version, mod, create, lease = record
            field_value = {
                CompareTarget.VERSION: version,
                CompareTarget.CREATE_REVISION: create,
                CompareTarget.MOD_REVISION: mod,
                CompareTarget.LEASE: lease,
            }[c.target]
        return _RELATIONS[c.op](field_value, c.operand)

    def run(self, index: int, ops: tuple) -> tuple[OpResult, ...] | None:
        """Run ops; None (and no change) if a put names an unknown lease."""
        if any(isinstance(op, PutCommand) and op.lease and op.lease not in self.leases
               for op in ops):
            return None
        out = []
        for op in ops:
            if isinstance(op, PutCommand):
                out.append(OpResult(*self.put(index, op.key, op.value, op.lease)))
            elif isinstance(op, DeleteCommand):
                out.append(OpResult(*self.delete(op.key)))
            else:
                r = self.data.get(op.key)
                out.append(OpResult(0, 0) if r is None else OpResult(r[1], r[1], r[0], r[2],
                                                                          r[3], r[4]))
        return tuple(out)

    def expect(self, index: int, cmd: Command) -> WriteResult:
        """The result ``cmd`` must give at ``index``; messages are compared only when OK."""
        code_nf = WriteResult(ResultCode.LEASE_NOT_FOUND, index)
        if isinstance(cmd, PutCommand):
            if cmd.lease and cmd.lease not in self.leases:
                return code_nf
            v, p = self.put(index, cmd.key, cmd.value, cmd.lease)
            return WriteResult(ResultCode.OK, index, v, p)
        if isinstance(cmd, DeleteCommand):
            return WriteResult(ResultCode.OK, index, *self.delete(cmd.key))
        if isinstance(cmd, CompareAndSetCommand):
            if cmd.expected_value is UNCHECKED and cmd.expected_version is None:
                return WriteResult(ResultCode.INVALID_COMMAND, index)
            cur = self.data.get(cmd.key)
            holds = True
            if cmd.expected_value is not UNCHECKED:
                holds = (cur is None) if cmd.expected_value is None else (
                    cur is not None and cur[0] == cmd.expected_value
                )
            if cmd.expected_version is not None:
                holds = holds and self.version(cmd.key) == cmd.expected_version
            if not holds:
                v = self.version(cmd.key)
                return WriteResult(ResultCode.CAS_FAILED, index, v, v)
            if cmd.new_value is None:
                return WriteResult(ResultCode.OK, index, *self.delete(cmd.key))
            return WriteResult(ResultCode.OK, index, *self.put(index, cmd.key, cmd.new_value))
        if isinstance(cmd, BatchCommand):
            ops = self.run(index, cmd.ops)
            return code_nf if ops is None else WriteResult(ResultCode.OK, index, ops=ops)
        if isinstance(cmd, TxnCommand):
            succeeded = all(self.holds(c) for c in cmd.compares)
            ops = self.run(index, cmd.success if succeeded else cmd.failure)
            if ops is None:
                return code_nf
            return WriteResult(ResultCode.OK, index, ops=ops, succeeded=succeeded)
        if isinstance(cmd, LeaseGrantCommand):
            if len(self.leases) >= self.max_leases:
                return WriteResult(ResultCode.LEASE_LIMIT, index)
            lease_id = index << 16 | self.partition
            self.leases[lease_id] = cmd.ttl_ms
            return WriteResult(ResultCode.OK, index, lease_id=lease_id)
        assert isinstance(cmd, LeaseRevokeCommand)
        if cmd.lease_id not in self.leases:
            return code_nf
        del self.leases[cmd.lease_id]
        doomed = sorted(k for k, r in self.data.items() if r[4] == cmd.lease_id)
        for k in doomed:
            del self.data[k]
        return WriteResult(ResultCode.OK, index, version=len(doomed))

    def lease_keys(self, lease_id: int) -> list[bytes]:
        return sorted(k for k, r in self.data.items() if r[4] == lease_id)
