"""Hypothesis strategies and a reference model shared by the state tests.

Keys come from a tiny alphabet so that random sequences hit the same keys
often (versions grow, CAS conditions sometimes hold, deletes hit live keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from prkdb.state import (
    UNCHECKED,
    BatchCommand,
    Command,
    CompareAndSetCommand,
    DeleteCommand,
    PutCommand,
    encode_command,
)

keys = st.sampled_from([b"a", b"b", b"c", b"d"])
values = st.binary(max_size=6)

puts = st.builds(PutCommand, keys, values)
deletes = st.builds(DeleteCommand, keys)
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
commands: st.SearchStrategy[Command] = st.one_of(puts, deletes, cas, batches)

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


@dataclass
class Model:
    """A naive reference for the KV rules (no sessions, no limits).

    It restates results.py's version rules as plainly as possible, so the
    machine is checked against the definition, not against itself.
    """

    data: dict[bytes, tuple[bytes, int, int]] = field(default_factory=dict)

    def version(self, key: bytes) -> int:
        return self.data[key][1] if key in self.data else 0

    def put(self, index: int, key: bytes, value: bytes) -> tuple[int, int]:
        prev = self.version(key)
        self.data[key] = (value, prev + 1, index)
        return prev + 1, prev

    def delete(self, key: bytes) -> tuple[int, int]:
        prev = self.version(key)
        self.data.pop(key, None)
        return 0, prev

    def apply(self, index: int, cmd: Command) -> tuple[bool, object]:
        """Return (ok, detail) where detail is (version, prev) or per-op list."""
        if isinstance(cmd, PutCommand):
            return True, self.put(index, cmd.key, cmd.value)
        if isinstance(cmd, DeleteCommand):
            return True, self.delete(cmd.key)
        if isinstance(cmd, CompareAndSetCommand):
            if cmd.expected_value is UNCHECKED and cmd.expected_version is None:
                return False, (0, 0)  # invalid: no condition
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
                return False, (v, v)
            if cmd.new_value is None:
                return True, self.delete(cmd.key)
            return True, self.put(index, cmd.key, cmd.new_value)
        assert isinstance(cmd, BatchCommand)
        out = []
        for op in cmd.ops:
            out.append(self.put(index, op.key, op.value) if isinstance(op, PutCommand)
                       else self.delete(op.key))
        return True, out
