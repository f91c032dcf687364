"""`prkctl txn`: a transaction read from stdin, as JSON or as etcdctl-style lines.

Two input formats, told apart by the first character that is not blank:
``{`` (or ``[``) starts JSON, anything else is the line format.

JSON::

    {"compare": [["value", "k", "==", "v"], ["version", "k", ">", 0], ["exists", "k2"]],
     "success": [["put", "k", "v"], ["put", "k", "v", LEASE_ID], ["delete", "k2"], ["get", "k"]],
     "failure": [["get", "k"]]}

Lines (etcdctl's `txn` input): the compares, a blank line, the success ops,
a blank line, the failure ops. Each blank line ends a section, so a txn
without compares starts with a blank line. Lines starting with ``#`` are
comments. Words are quoted as in a shell::

    value("k") == "v"
    version("k") > 0
    exists("k2")

    put k v
    put k "a value" --lease LEASE_ID
    del k2
    get k

    get k

Compare targets: value (val), version (ver), create (create_revision, c),
mod (mod_revision, m), lease; ops ==, =, !=, <, >; ``exists(k)`` and
``absent(k)`` are ``version(k) > 0`` and ``version(k) == 0``. A value
operand is text (or --hex/--base64 as every key and value); the others are
ints >= 0. The parsers are pure (text in, `TxnSpec` or a `BadInputError`
naming the line or element out) so tests need no cluster.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from prkctl.context import CtlContext, pass_ctl, translate_errors
from prkctl.errors import BadInputError, PrkctlError
from prkctl.output import decode_arg, encode_bytes, encoding_options
from prkdb.client.txn import Compare, CompareOp, CompareTarget, Delete, Get, Put
from prkdb.errors import InvalidRequest

__all__ = ["TxnSpec", "parse_json", "parse_lines", "parse_txn", "txn"]

TARGETS: dict[str, CompareTarget] = {
    "value": CompareTarget.VALUE, "val": CompareTarget.VALUE,
    "version": CompareTarget.VERSION, "ver": CompareTarget.VERSION,
    "create": CompareTarget.CREATE_REVISION, "create_revision": CompareTarget.CREATE_REVISION,
    "c": CompareTarget.CREATE_REVISION,
    "mod": CompareTarget.MOD_REVISION, "mod_revision": CompareTarget.MOD_REVISION,
    "m": CompareTarget.MOD_REVISION,
    "lease": CompareTarget.LEASE,
}
OPS: dict[str, CompareOp] = {"==": CompareOp.EQUAL, "=": CompareOp.EQUAL,
                             "!=": CompareOp.NOT_EQUAL, "<": CompareOp.LESS,
                             ">": CompareOp.GREATER}
CHECKS = ("exists", "absent")  # the two compares that take no operand
_TARGET_NAMES = "value, version, create, mod, lease (or exists(k) / absent(k))"
_OP_FORMS = "put KEY VALUE [--lease ID], del KEY, get KEY"
_U64_MAX = (1 << 64) - 1

Op = Put | Delete | Get


@dataclass
class TxnSpec:
    """A parsed transaction: what `client.txn` takes."""

    compares: list[Compare] = field(default_factory=list)
    success: list[Op] = field(default_factory=list)
    failure: list[Op] = field(default_factory=list)


# --- building blocks shared by both formats -------------------------------------------


def _bytes(text: str, encoding: str, where: str, what: str) -> bytes:
    try:
        return decode_arg(text, encoding, what)
    except click.BadParameter as e:
        raise BadInputError(f"{where}: {e.message}") from None


def _key(text: str, encoding: str, where: str) -> bytes:
    key = _bytes(text, encoding, where, "key")
    if not key:
        raise BadInputError(f"{where}: a key must not be empty")
    return key


def _number(value: Any, where: str) -> int:
    """An int operand or lease id; digits in a string are accepted (etcdctl quotes them)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise BadInputError(f"{where}: {value!r} is not an int >= 0")
    return value


def _compare(target_name: str, key: bytes, op_name: str | None, operand: Any,
             encoding: str, where: str) -> Compare:
    name = target_name.lower()
    if name in CHECKS:
        if op_name is not None:
            raise BadInputError(f"{where}: {name}(KEY) takes no operator or operand")
        return Compare(key, CompareTarget.VERSION,
                       CompareOp.GREATER if name == "exists" else CompareOp.EQUAL, 0)
    target = TARGETS.get(name)
    if target is None:
        raise BadInputError(f"{where}: unknown compare target {target_name!r} "
                            f"(known: {_TARGET_NAMES})")
    if op_name is None:
        raise BadInputError(f"{where}: {target_name}(KEY) needs an operator and an operand")
    op = OPS.get(op_name)
    if op is None:
        raise BadInputError(f"{where}: unknown operator {op_name!r} (known: ==, !=, <, >)")
    if target == CompareTarget.VALUE:
        if not isinstance(operand, str):
            raise BadInputError(f"{where}: a value compare needs a string operand, "
                                f"not {operand!r}")
        value: bytes | int = _bytes(operand, encoding, where, "operand")
    else:
        value = _number(operand, f"{where}: {target_name} operand")
    try:
        return Compare(key, target, op, value)
    except InvalidRequest as e:
        raise BadInputError(f"{where}: {e.message or e}") from None


def _op(kind: str, key: bytes, value: bytes | None, lease: int) -> Op:
    kind = kind.lower()
    if kind == "put":
        assert value is not None
        return Put(key, value, lease)
    if kind in ("del", "delete"):
        return Delete(key)
    return Get(key)


# --- JSON -----------------------------------------------------------------------------


def parse_json(text: str, encoding: str) -> TxnSpec:
    """`text` as the JSON format; raises BadInputError naming the line or the element."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(f"stdin line {e.lineno} column {e.colno}: invalid JSON: "
                            f"{e.msg}") from None
    if not isinstance(doc, dict):
        raise BadInputError(f"the JSON txn must be an object with compare, success, failure, "
                            f"not {_short(doc)}")
    unknown = sorted(set(doc) - {"compare", "success", "failure"})
    if unknown:
        raise BadInputError(f"unknown field {unknown[0]!r} in the JSON txn (known: compare, "
                            "success, failure)")
    spec = TxnSpec()
    for i, item in enumerate(_json_list(doc, "compare")):
        where = f"compare[{i}]"
        if not isinstance(item, list) or not item or not isinstance(item[0], str):
            raise BadInputError(f"{where}: {_short(item)} is not [target, key, op, operand] "
                                "or [\"exists\"|\"absent\", key]")
        arity = 2 if item[0].lower() in CHECKS else 4
        if len(item) != arity:
            raise BadInputError(f"{where}: {_short(item)} has {len(item)} elements; "
                                + ("[\"exists\"|\"absent\", key] has 2" if arity == 2 else
                                   "[target, key, op, operand] has 4"))
        key = _key(_json_str(item[1], f"{where} key"), encoding, f"{where} key")
        op_name = None if arity == 2 else _json_str(item[2], f"{where} op")
        spec.compares.append(_compare(item[0], key, op_name, None if arity == 2 else item[3],
                                      encoding, where))
    for branch in ("success", "failure"):
        ops = spec.success if branch == "success" else spec.failure
        for i, item in enumerate(_json_list(doc, branch)):
            ops.append(_json_op(item, encoding, f"{branch}[{i}]"))
    return spec


def _json_list(doc: dict[str, Any], name: str) -> list[Any]:
    items = doc.get(name, [])
    if not isinstance(items, list):
        raise BadInputError(f"{name} must be a list, not {_short(items)}")
    return items


def _json_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadInputError(f"{where}: {_short(value)} is not a string")
    return value


def _json_op(item: Any, encoding: str, where: str) -> Op:
    if not isinstance(item, list) or not item or not isinstance(item[0], str):
        raise BadInputError(f"{where}: {_short(item)} is not an op: [\"put\", key, value"
                            "(, lease)], [\"delete\", key] or [\"get\", key]")
    kind = item[0].lower()
    sizes = {"put": (3, 4), "delete": (2,), "del": (2,), "get": (2,)}.get(kind)
    if sizes is None:
        raise BadInputError(f"{where}: unknown op {item[0]!r} (known: put, delete, get)")
    if len(item) not in sizes:
        raise BadInputError(f"{where}: {_short(item)}: {kind} takes "
                            + ("a key, a value and optionally a lease id" if kind == "put"
                               else "one key"))
    key = _key(_json_str(item[1], f"{where} key"), encoding, f"{where} key")
    value = None
    lease = 0
    if kind == "put":
        value = _bytes(_json_str(item[2], f"{where} value"), encoding, f"{where} value",
                       "value")
        if len(item) == 4:
            lease = _number(item[3], f"{where} lease")
    return _op(kind, key, value, lease)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- lines ----------------------------------------------------------------------------

_SPECIAL = "()=!<>"


def _lex_compare(line: str, where: str) -> list[tuple[str, str]]:
    """A compare line as tokens: ("word", text) with shell quoting, or ("punct", text)."""
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c.isspace():
            i += 1
        elif c in "()":
            tokens.append(("punct", c))
            i += 1
        elif c in "=!<>":
            two = line[i:i + 2]
            if two in ("==", "!="):
                tokens.append(("punct", two))
                i += 2
            elif c == "!":
                raise BadInputError(f"{where}: '!' must be followed by '=' (!=)")
            else:
                tokens.append(("punct", c))
                i += 1
        else:
            word: list[str] = []
            while i < n and not line[i].isspace() and line[i] not in _SPECIAL:
                c = line[i]
                if c == "'":
                    end = line.find("'", i + 1)
                    if end < 0:
                        raise BadInputError(f"{where}: no closing quotation (')")
                    word.append(line[i + 1:end])
                    i = end + 1
                elif c == '"':
                    i += 1
                    while i < n and line[i] != '"':
                        if line[i] == "\\" and i + 1 < n and line[i + 1] in '"\\$`':
                            i += 1
                        word.append(line[i])
                        i += 1
                    if i >= n:
                        raise BadInputError(f'{where}: no closing quotation (")')
                    i += 1
                elif c == "\\" and i + 1 < n:
                    word.append(line[i + 1])
                    i += 2
                else:
                    word.append(c)
                    i += 1
            tokens.append(("word", "".join(word)))
    return tokens


def _line_compare(line: str, encoding: str, where: str) -> Compare:
    toks = _lex_compare(line, where)
    shape = "".join("w" if kind == "word" else text for kind, text in toks)
    form = 'TARGET("KEY") OP OPERAND, e.g. value("k") == "v" or version("k") > 0'
    if len(toks) < 4 or shape[:4] != "w(w)":
        raise BadInputError(f"{where}: not a compare: expected {form}")
    target, key_text = toks[0][1], toks[2][1]
    key = _key(key_text, encoding, where)
    rest = toks[4:]
    if not rest:
        return _compare(target, key, None, None, encoding, where)
    if len(rest) != 2 or rest[0][0] != "punct" or rest[1][0] != "word":
        raise BadInputError(f"{where}: not a compare: expected {form}")
    return _compare(target, key, rest[0][1], rest[1][1], encoding, where)


def _line_op(line: str, encoding: str, where: str) -> Op:
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise BadInputError(f"{where}: {e}") from None
    kind = words[0].lower()
    if kind not in ("put", "del", "delete", "get"):
        hint = (" (a compare? compares come first, before the first blank line)"
                if "(" in words[0] else "")
        raise BadInputError(f"{where}: not an op: expected {_OP_FORMS}{hint}")
    args, lease = words[1:], 0
    if kind == "put":
        rest: list[str] = []
        j = 0
        while j < len(args):
            a = args[j]
            if a == "--lease" or a.startswith("--lease="):
                if a == "--lease":
                    if j + 1 >= len(args):
                        raise BadInputError(f"{where}: --lease needs a lease id")
                    text, j = args[j + 1], j + 2
                else:
                    text, j = a.partition("=")[2], j + 1
                lease = _number(text, f"{where}: lease")
            else:
                rest.append(a)
                j += 1
        if len(rest) != 2:
            raise BadInputError(f"{where}: put takes KEY VALUE [--lease ID], got "
                                f"{len(rest)} word{'' if len(rest) == 1 else 's'}")
        return _op(kind, _key(rest[0], encoding, where),
                   _bytes(rest[1], encoding, where, "value"), lease)
    if len(args) != 1:
        raise BadInputError(f"{where}: {kind} takes one KEY, got {len(args)} "
                            f"word{'' if len(args) == 1 else 's'}")
    return _op(kind, _key(args[0], encoding, where), None, 0)


def parse_lines(text: str, encoding: str) -> TxnSpec:
    """`text` as the line format; raises BadInputError naming the line."""
    spec = TxnSpec()
    sections: Sequence[list[Any]] = (spec.compares, spec.success, spec.failure)
    section = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"stdin line {number}"
        if line.startswith("#"):
            continue
        if not line:
            section += 1  # a blank line ends the section (also an empty one)
            continue
        if section > 2:
            raise BadInputError(f"{where}: text after the failure ops: a txn is compares, "
                                "blank line, success ops, blank line, failure ops")
        if section == 0:
            first = line.split(None, 1)[0].lower()
            if first in ("put", "del", "delete", "get"):
                raise BadInputError(f"{where}: {first} is an op, but the compares are not "
                                    "ended: put a blank line after them (no compares: "
                                    "start with a blank line)")
            spec.compares.append(_line_compare(line, encoding, where))
        else:
            sections[section].append(_line_op(line, encoding, where))
    return spec


def parse_txn(data: bytes, encoding: str) -> TxnSpec:
    """stdin's bytes as a txn: JSON if it starts with '{' (or '['), else the line format."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise BadInputError(f"stdin line {line} is not UTF-8 text (byte {e.start}); write "
                            "binary keys and values with --hex or --base64") from None
    # A line of the line format starts with a word: '{' or '[' can only be JSON.
    is_json = text.lstrip()[:1] in ("{", "[")
    spec = parse_json(text, encoding) if is_json else parse_lines(text, encoding)
    if not (spec.compares or spec.success or spec.failure):
        raise BadInputError("the txn is empty: no compares and no ops on stdin")
    return spec


# --- the command ----------------------------------------------------------------------


def _shown(data: bytes, encoding: str) -> bytes:
    """How a key or value appears in a text line (raw with utf8, as `get` prints values)."""
    return data if encoding == "utf8" else encode_bytes(data, encoding).encode("ascii")


def _result_json(op: Op, res: Any, encoding: str) -> dict[str, Any]:
    key = encode_bytes(op.key, encoding, "a key")
    match op:
        case Put():
            return {"op": "put", "key": key, "version": res.version,
                    "prev_version": res.prev_version}
        case Delete():
            return {"op": "delete", "key": key, "deleted": res.prev_version != 0,
                    "prev_version": res.prev_version}
        case Get():
            found = res.value is not None
            return {"op": "get", "key": key, "found": found,
                    "value": encode_bytes(res.value, encoding) if found else None,
                    "version": res.version, "mod_revision": res.mod_revision,
                    "create_revision": res.create_revision, "lease": res.lease}
    raise AssertionError(op)


def _echo_result(op: Op, res: Any, encoding: str) -> None:
    key = _shown(op.key, encoding)
    match op:
        case Put():
            click.echo(b"put " + key + f" version={res.version}".encode())
        case Delete():
            click.echo(b"delete " + key + (b" deleted" if res.prev_version else b" absent"))
        case Get():
            if res.value is None:
                click.echo(b"get " + key + b" absent")
            else:
                click.echo(b"get " + key + f" version={res.version}".encode())
                click.echo(_shown(res.value, encoding))


@click.command()
@encoding_options
@pass_ctl
@translate_errors
def txn(ctl: CtlContext, encoding: str) -> None:
    """Run a transaction read from stdin: if every compare holds, the success
    ops, else the failure ops; atomically, at one revision.

    Every key (compares and ops) must be in one partition: give related keys
    a hash tag, the part in {braces} ({acct:7}/balance, {acct:7}/owner).

    stdin is JSON if it starts with '{':

    \b
      {"compare": [["value", "k", "==", "v"], ["version", "k", ">", 0]],
       "success": [["put", "k", "v2"], ["delete", "k2"], ["get", "k"]],
       "failure": [["get", "k"]]}

    else lines, as etcdctl's txn: compares, a blank line, success ops, a
    blank line, failure ops (no compares: start with a blank line; '#'
    starts a comment; words are quoted as in a shell):

    \b
      value("k") == "v"
      version("k") > 0
    \b
      put k v2
      del k2
    \b
      get k

    Compare targets: value, version, create, mod, lease (ops ==, !=, <, >),
    exists(k), absent(k). A leased put: ["put", k, v, ID] / put k v --lease
    ID. Output: SUCCESS or FAILURE with the revision, then one line per op
    (a get adds the value's line); --json: {"succeeded", "revision",
    "results": [...]}.

    Exit 0 if the success ops ran, 1 if the failure ops ran (the compares
    did not hold; their results are printed), 2 for bad input (the message
    names the line or element), 3 if the outcome is unknown.

    \b
    Example:
      printf 'absent("lock")\\n\\nput lock me\\n\\nget lock\\n' | prkctl txn
      prkctl --json txn < transfer.json
    """
    if sys.stdin.isatty():
        click.echo("prkctl: reading the txn from stdin; end it with Ctrl-D", err=True)
    spec = parse_txn(sys.stdin.buffer.read(), encoding)

    async def body(client: Any) -> Any:
        return await client.txn(spec.compares, spec.success, spec.failure)

    res = ctl.run_client(body)
    ops = spec.success if res.succeeded else spec.failure
    if len(res.results) != len(ops):
        raise PrkctlError(f"the cluster answered {len(res.results)} results for "
                          f"{len(ops)} ops")
    if ctl.json:
        ctl.emit({"succeeded": res.succeeded, "revision": res.revision,
                  "results": [_result_json(op, r, encoding) for op, r in zip(ops, res.results)]},
                 "")
    else:
        click.echo(f"{'SUCCESS' if res.succeeded else 'FAILURE'} revision={res.revision}")
        for op, r in zip(ops, res.results):
            _echo_result(op, r, encoding)
    if not res.succeeded:
        raise PrkctlError("txn: the compares did not hold; the failure ops ran")
