"""prkctl's key API commands without a cluster: the txn input formats (good and bad
input, exit 2 naming the line or element), usage errors, and the output shapes of
get --prefix / scan / txn / lease with a fake SDK injected through CtlContext."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from prkctl.cli import CtlContext
from prkctl.commands.txn import TxnSpec, parse_txn
from prkctl.errors import BadInputError
from prkdb.client import KeyValue, LeaseNotFound, LeaseStatus, Timeout, TxnOpResult, TxnResult
from prkdb.client.results import Lease
from prkdb.client.txn import Compare, CompareOp, CompareTarget, Delete, Get, Put, absent, exists
from tests.prkctl.helpers import invoke

SEEDS = ["127.0.0.1:1"]

# --- txn input: the two formats ---------------------------------------------------------

LINES = """\
# take the lock if nobody holds it
value("{a}/k") == "v"
ver({a}/k) > 0
exists("{a}/k")
absent('{a}/lock')
mod("{a}/k") != "3"
create("{a}/k") < 9
lease("{a}/k") = 0

put {a}/lock "me and you" --lease 65539
put {a}/n 1 --lease=65539
del {a}/old
get {a}/k

get "{a}/lock"
"""

EXPECTED = TxnSpec(
    compares=[
        Compare.value(b"{a}/k") == b"v",
        Compare.version(b"{a}/k") > 0,
        exists(b"{a}/k"),
        absent(b"{a}/lock"),
        Compare.mod_revision(b"{a}/k") != 3,
        Compare.create_revision(b"{a}/k") < 9,
        Compare.lease(b"{a}/k") == 0,
    ],
    success=[Put(b"{a}/lock", b"me and you", 65539), Put(b"{a}/n", b"1", 65539),
             Delete(b"{a}/old"), Get(b"{a}/k")],
    failure=[Get(b"{a}/lock")],
)

JSON = json.dumps({
    "compare": [["value", "{a}/k", "==", "v"], ["version", "{a}/k", ">", 0],
                ["exists", "{a}/k"], ["absent", "{a}/lock"], ["mod", "{a}/k", "!=", "3"],
                ["create_revision", "{a}/k", "<", 9], ["lease", "{a}/k", "=", 0]],
    "success": [["put", "{a}/lock", "me and you", 65539], ["put", "{a}/n", "1", 65539],
                ["del", "{a}/old"], ["get", "{a}/k"]],
    "failure": [["get", "{a}/lock"]],
}, indent=1)


@pytest.mark.parametrize("text", [LINES, JSON], ids=["lines", "json"])
def test_both_formats_parse_to_the_same_txn(text: str) -> None:
    assert parse_txn(text.encode(), "utf8") == EXPECTED


def test_sections_and_encodings() -> None:
    # no compares: the input starts with the blank line that ends them
    assert parse_txn(b"\nput k v\n", "utf8") == TxnSpec(success=[Put(b"k", b"v")])
    # only compares: a check of several keys at once
    assert parse_txn(b'exists("k")\n', "utf8") == TxnSpec(compares=[exists(b"k")])
    # only failure ops; trailing blank lines are fine
    assert parse_txn(b"\n\nget k\n\n\n", "utf8") == TxnSpec(failure=[Get(b"k")])
    # --hex: keys, values and value operands are hex, in both formats
    hexed = TxnSpec(compares=[Compare.value(b"\x00") == b"\xff"],
                    success=[Put(b"\x00\xff", b"\xca\xfe")])
    assert parse_txn(b'value("00") == "ff"\n\nput 00ff cafe\n', "hex") == hexed
    assert parse_txn(b'{"compare": [["value", "00", "==", "ff"]], '
                     b'"success": [["put", "00ff", "cafe"]]}', "hex") == hexed
    # shell quoting in compares: escapes, single quotes, parentheses inside quotes
    spec = parse_txn(b'value("a\\"(b)") == \'x == y\'\n', "utf8")
    assert spec.compares == [Compare(b'a"(b)', CompareTarget.VALUE, CompareOp.EQUAL,
                                     b"x == y")]
    assert parse_txn(b'value("k") == ""\n', "utf8").compares == [Compare.value(b"k") == b""]


@pytest.mark.parametrize(("text", "message"), [
    ("put k v\n", "stdin line 1: put is an op, but the compares are not ended"),
    ('value("k") == "v"\nput k v\n', "stdin line 2: put is an op"),
    ('vale("k") == "v"\n', "stdin line 1: unknown compare target 'vale'"),
    ('value("k") <= "v"\n', "stdin line 1: not a compare"),
    ('value("k") ! "v"\n', "stdin line 1: '!' must be followed by '='"),
    ('value("k) == "v"\n', "stdin line 1: no closing quotation"),
    ("# c\nversion(k) > x\n", "stdin line 2: version operand: 'x' is not an int >= 0"),
    ("version(k) > -1\n", "stdin line 1: version operand"),
    ('value("k")\n', "stdin line 1: value(KEY) needs an operator and an operand"),
    ('exists("k") == 1\n', "stdin line 1: exists(KEY) takes no operator"),
    ('value("") == "v"\n', "stdin line 1: a key must not be empty"),
    ("\nputt k v\n", "stdin line 2: not an op: expected put KEY VALUE"),
    ('\nversion("k") > 0\n', "(a compare? compares come first"),
    ("\nput k\n", "stdin line 2: put takes KEY VALUE [--lease ID], got 1 word"),
    ("\nput k v --lease\n", "stdin line 2: --lease needs a lease id"),
    ("\nput k v --lease abc\n", "stdin line 2: lease: 'abc' is not an int"),
    ("\nget a b\n", "stdin line 2: get takes one KEY, got 2 words"),
    ('\nput k "v\n', "stdin line 2: No closing quotation"),
    ("\n\n\nput k v\n", "stdin line 4: text after the failure ops"),
    ("", "the txn is empty"),
    ("\n\n# nothing\n", "the txn is empty"),
    ('{"compare": [["value", "k", "==", "v"],\n ["version", "k", ">", 0],]}',
     "stdin line 2 column 27: invalid JSON"),
    ("[]", "the JSON txn must be an object with compare, success, failure, not []"),
    ("{", "stdin line 1 column 2: invalid JSON"),
    ('{"compare": [], "sucess": []}', "unknown field 'sucess'"),
    ('{"compare": {"a": 1}}', "compare must be a list"),
    ('{"compare": [["version", "k", ">"]]}', "compare[0]: [\"version\", \"k\", \">\"] has 3"),
    ('{"compare": [["vers", "k", ">", 1]]}', "compare[0]: unknown compare target 'vers'"),
    ('{"compare": [["version", "k", ">=", 1]]}', "compare[0]: unknown operator '>='"),
    ('{"compare": [["version", "k", ">", 1.5]]}', "compare[0]: version operand: 1.5"),
    ('{"compare": [["value", "k", "==", 3]]}', "compare[0]: a value compare needs a string"),
    ('{"compare": [["exists", 7]]}', "compare[0] key: 7 is not a string"),
    ('{"compare": ["exists k"]}', "compare[0]: \"exists k\" is not [target, key, op"),
    ('{"success": [["put", "k"]]}', "success[0]: [\"put\", \"k\"]: put takes a key, a value"),
    ('{"success": [["get", "a"], ["put", "k", 3]]}', "success[1] value: 3 is not a string"),
    ('{"failure": [["upsert", "k", "v"]]}', "failure[0]: unknown op 'upsert'"),
    ('{"success": [["put", "k", "v", -1]]}', "success[0] lease: -1 is not an int >= 0"),
    ('{"success": [["put", "", "v"]]}', "success[0] key: a key must not be empty"),
    ('{"success": [["put", "k", "v", true]]}', "success[0] lease: True"),
    ('{}', "the txn is empty"),
], ids=lambda v: v[:40] if isinstance(v, str) else None)
def test_bad_txn_input_names_the_spot(text: str, message: str) -> None:
    with pytest.raises(BadInputError) as info:
        parse_txn(text.encode(), "utf8")
    assert message in info.value.format_message()
    assert info.value.exit_code == 2


def test_bad_encoding_in_txn_input() -> None:
    with pytest.raises(BadInputError, match=r"success\[0\] value: 'zz' is not valid hex"):
        parse_txn(b'{"success": [["put", "00", "zz"]]}', "hex")
    with pytest.raises(BadInputError, match="stdin line 2: 'zz' is not valid hex"):
        parse_txn(b"\nput zz 00\n", "hex")
    with pytest.raises(BadInputError, match=r"stdin line 2 is not UTF-8 text \(byte 7\)"):
        parse_txn(b"\nput k \xff\n", "utf8")


# --- the commands, with a fake SDK -------------------------------------------------------


def kv(key: bytes, value: bytes = b"v", version: int = 1) -> KeyValue:
    return KeyValue(key, value, version, 10, 9, 0)


class FakeKeyApi:
    """Scans over a sorted dict, txn answers set by the test, leases in a dict."""

    def __init__(self, keys: dict[bytes, bytes] | None = None) -> None:
        self.keys = dict(sorted((keys or {}).items()))
        self.calls: list[tuple[str, Any]] = []
        self.txn_result: TxnResult | None = None
        self.yielded = 0
        self.shown: Callable[[bytes], bytes] = lambda key: key  # a key as stdout holds it

    def _range(self, prefix: bytes | None, start: bytes | None,
               end: bytes | None) -> list[bytes]:
        if prefix is not None:
            return [k for k in self.keys if k.startswith(prefix)]
        return [k for k in self.keys if k >= (start or b"") and (end is None or k < end)]

    async def scan_iter(self, prefix: bytes | None = None, *, start: bytes | None = None,
                        end: bytes | None = None, limit: int = 0, keys_only: bool = False,
                        consistency: Any = None, page_size: int = 1000,
                        timeout: float | None = None) -> AsyncIterator[KeyValue]:
        self.calls.append(("scan_iter", dict(prefix=prefix, start=start, end=end, limit=limit,
                                             keys_only=keys_only, consistency=int(consistency))))
        keys = self._range(prefix, start, end)
        for i, k in enumerate(keys[:limit] if limit else keys):
            if i:  # the key before this one is already printed: the output streams
                sys.stdout.flush()
                out = sys.stdout.buffer.getvalue()  # type: ignore[attr-defined]
                assert self.shown(keys[i - 1]) in out
            self.yielded += 1
            yield kv(k, b"" if keys_only else self.keys[k])

    async def count(self, prefix: bytes | None = None, *, start: bytes | None = None,
                    end: bytes | None = None, consistency: Any = None,
                    timeout: float | None = None) -> int:
        self.calls.append(("count", dict(prefix=prefix, start=start, end=end)))
        return len(self._range(prefix, start, end))

    async def txn(self, compares: Any, success: Any, failure: Any) -> TxnResult:
        self.calls.append(("txn", (list(compares), list(success), list(failure))))
        assert self.txn_result is not None
        return self.txn_result

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> Any:
        from prkdb.client import WriteResult

        self.calls.append(("put", (key, value, lease)))
        return WriteResult(True, 7, 1, 0)

    async def grant_lease(self, ttl: float, *, key: bytes = b"") -> Lease:
        self.calls.append(("grant_lease", (ttl, key)))
        return Lease((5 << 16) | 3, max(ttl, 2.0), 3)

    async def lease_ttl(self, lease_id: int, *, keys: bool = False) -> LeaseStatus:
        if lease_id != (5 << 16) | 3:
            raise LeaseNotFound(f"lease {lease_id} not found (expired or revoked)")
        return LeaseStatus(lease_id, 10.0, 7.5, (b"a", b"b") if keys else ())

    async def leases(self) -> list[LeaseStatus]:
        return [LeaseStatus((5 << 16) | 3, 10.0, 7.5), LeaseStatus((9 << 16) | 0, 2.0, 0.25)]

    async def aclose(self) -> None:
        pass


def fake_ctl(client: FakeKeyApi) -> CtlContext:
    async def factory(ctl: CtlContext) -> FakeKeyApi:
        return client

    return CtlContext(client_factory=factory)


KEYS = {b"app/a": b"1", b"app/b": b"2", b"app/c": b"3", b"apq": b"x", b"zz": b"z"}


def test_get_prefix_text_streams_key_and_value_lines() -> None:
    client = FakeKeyApi(KEYS)
    res = invoke(SEEDS, "get", "--prefix", "app/", obj=fake_ctl(client))
    assert res.exit_code == 0, res.output
    assert res.stdout == "app/a\n1\napp/b\n2\napp/c\n3\n"
    assert client.calls == [("scan_iter", dict(prefix=b"app/", start=None, end=None, limit=0,
                                               keys_only=False, consistency=0))]
    res = invoke(SEEDS, "get", "--prefix", "app/", "--keys-only", "--limit", "2",
                 "--consistency", "stale", obj=fake_ctl(client := FakeKeyApi(KEYS)))
    assert res.stdout == "app/a\napp/b\n"
    assert client.calls[0][1]["limit"] == 2 and client.calls[0][1]["consistency"] == 2
    assert client.yielded == 2
    res = invoke(SEEDS, "get", "--prefix", "nothing/", obj=fake_ctl(FakeKeyApi(KEYS)))
    assert res.exit_code == 0 and res.stdout == ""  # an empty listing is not a failure


def test_get_prefix_json_count_and_more() -> None:
    client = FakeKeyApi(KEYS)
    res = invoke(SEEDS, "--json", "get", "--prefix", "app/", "--limit", "2",
                 obj=fake_ctl(client))
    data = json.loads(res.stdout)
    assert data == {"kvs": [
        {"key": "app/a", "value": "1", "version": 1, "mod_revision": 10,
         "create_revision": 9, "lease": 0},
        {"key": "app/b", "value": "2", "version": 1, "mod_revision": 10,
         "create_revision": 9, "lease": 0},
    ], "count": 3, "more": True}
    # one key more was asked to know whether the limit cut the listing; count came after
    assert [c[0] for c in client.calls] == ["scan_iter", "count"]
    assert client.calls[0][1]["limit"] == 3
    client = FakeKeyApi(KEYS)
    res = invoke(SEEDS, "--json", "get", "--prefix", "app/", "--keys-only",
                 obj=fake_ctl(client))
    data = json.loads(res.stdout)
    assert data["count"] == 3 and data["more"] is False and "value" not in data["kvs"][0]
    assert [c[0] for c in client.calls] == ["scan_iter"]  # no count needed
    res = invoke(SEEDS, "--json", "get", "--prefix", "none/", obj=fake_ctl(FakeKeyApi(KEYS)))
    assert json.loads(res.stdout) == {"kvs": [], "count": 0, "more": False}


def test_count_only_and_hex() -> None:
    res = invoke(SEEDS, "get", "--prefix", "app/", "--count-only", obj=fake_ctl(FakeKeyApi(KEYS)))
    assert res.stdout == "3\n"
    res = invoke(SEEDS, "--json", "scan", "a", "--count-only", obj=fake_ctl(FakeKeyApi(KEYS)))
    assert json.loads(res.stdout) == {"count": 5}
    binary = {b"\x00\xff": b"\xca\xfe", b"\x00\xfe": b"\x01"}
    client = FakeKeyApi(binary)
    client.shown = lambda key: key.hex().encode()
    res = invoke(SEEDS, "--hex", "get", "--prefix", "00", obj=fake_ctl(client))
    assert res.stdout == "00fe\n01\n00ff\ncafe\n"
    # --json needs text: a binary key in utf8 mode names --hex
    res = invoke(SEEDS, "--json", "get", "--prefix", "", obj=fake_ctl(FakeKeyApi(binary)))
    assert res.exit_code == 1 and "a key (2 bytes) is not UTF-8 text; use --hex" in res.stderr
    client = FakeKeyApi(binary)
    client.shown = base64.b64encode
    res = invoke(SEEDS, "--json", "--base64", "scan", "", obj=fake_ctl(client))
    assert [k["key"] for k in json.loads(res.stdout)["kvs"]] == ["AP4=", "AP8="]


def test_scan_range_and_end() -> None:
    client = FakeKeyApi(KEYS)
    res = invoke(SEEDS, "scan", "app/b", "apq", "--keys-only", obj=fake_ctl(client))
    assert res.stdout == "app/b\napp/c\n"
    assert client.calls[0][1] == dict(prefix=None, start=b"app/b", end=b"apq", limit=0,
                                      keys_only=True, consistency=0)
    res = invoke(SEEDS, "scan", "apq", obj=fake_ctl(FakeKeyApi(KEYS)))  # END omitted: to the end
    assert res.stdout == "apq\nx\nzz\nz\n"
    res = invoke(SEEDS, "kv", "scan", "", "--limit", "1", obj=fake_ctl(FakeKeyApi(KEYS)))
    assert res.stdout == "app/a\n1\n"


@pytest.mark.parametrize(("args", "text"), [
    (["get", "k", "--limit", "3"], "--limit lists a range: add --prefix"),
    (["get", "k", "--keys-only"], "--keys-only lists a range"),
    (["get", "k", "--count-only"], "--count-only lists a range"),
    (["get", "--prefix", "k", "--count-only", "--keys-only"], "--count-only excludes"),
    (["scan", "a", "--count-only", "--limit", "2"], "--count-only excludes"),
    (["get", "--prefix", "k", "--limit", "-1"], "-1"),
    (["scan", "b", "a"], "END ('a') must come after START ('b')"),
    (["scan", "a", "a"], "must come after START"),
    (["scan"], "Missing argument 'START'"),
    (["scan", "--hex", "zz"], "not valid hex"),
    (["put", "--lease", "abc", "k", "v"], "'abc' is not a lease id"),
    (["put", "--lease", "0", "k", "v"], "ids are > 0"),
    (["lease", "grant", "0"], "0"),
    (["lease", "grant", "ten"], "ten"),
    (["lease", "grant", "5", "--key", ""], "a key must not be empty"),
    (["lease", "revoke", "--", "-5"], "ids are > 0"),
    (["lease", "ttl", "x"], "is not a lease id"),
    (["lease", "keep-alive"], "Missing argument 'ID'"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_usage_errors_exit_2_before_any_request(args: list[str], text: str) -> None:
    client = FakeKeyApi(KEYS)
    res = invoke(SEEDS, *args, obj=fake_ctl(client))
    assert res.exit_code == 2, res.output
    assert text in res.stderr and client.calls == []


def test_txn_bad_input_exits_2_with_one_line() -> None:
    client = FakeKeyApi()
    res = invoke(SEEDS, "txn", input='{"compare": [["vers", "k", ">", 1]]}',
                 obj=fake_ctl(client))
    assert res.exit_code == 2
    assert res.stderr == "prkctl: compare[0]: unknown compare target 'vers' (known: value, " \
        "version, create, mod, lease (or exists(k) / absent(k)))\n"
    res = invoke(SEEDS, "txn", input="put k v\n", obj=fake_ctl(client))
    assert res.exit_code == 2 and res.stderr.startswith("prkctl: stdin line 1: put is an op")
    assert client.calls == []


def test_txn_exit_codes_and_output() -> None:
    client = FakeKeyApi()
    client.txn_result = TxnResult(True, 42, (
        TxnOpResult(2, 1), TxnOpResult(0, 1), TxnOpResult(0, 0),
        TxnOpResult(2, 1, b"me", 42, 40, 0), TxnOpResult(0, 0, None)))
    text = 'absent("lock")\n\nput lock me\ndel old\ndel gone\nget lock\nget nope\n\nget lock\n'
    res = invoke(SEEDS, "txn", input=text, obj=fake_ctl(client))
    assert res.exit_code == 0, res.output
    assert res.stdout == ("SUCCESS revision=42\nput lock version=2\ndelete old deleted\n"
                          "delete gone absent\nget lock version=2\nme\nget nope absent\n")
    assert client.calls == [("txn", ([absent(b"lock")], [
        Put(b"lock", b"me"), Delete(b"old"), Delete(b"gone"), Get(b"lock"), Get(b"nope")],
        [Get(b"lock")]))]
    res = invoke(SEEDS, "--json", "txn", input=text, obj=fake_ctl(client))
    data = json.loads(res.stdout)
    assert data["succeeded"] is True and data["revision"] == 42
    assert data["results"] == [
        {"op": "put", "key": "lock", "version": 2, "prev_version": 1},
        {"op": "delete", "key": "old", "deleted": True, "prev_version": 1},
        {"op": "delete", "key": "gone", "deleted": False, "prev_version": 0},
        {"op": "get", "key": "lock", "found": True, "value": "me", "version": 2,
         "mod_revision": 42, "create_revision": 40, "lease": 0},
        {"op": "get", "key": "nope", "found": False, "value": None, "version": 0,
         "mod_revision": 0, "create_revision": 0, "lease": 0},
    ]
    # the failure branch ran: its results are printed, exit 1
    client.txn_result = TxnResult(False, 43, (TxnOpResult(1, 1, b"you", 40, 40, 0),))
    res = invoke(SEEDS, "txn", input=text, obj=fake_ctl(client))
    assert res.exit_code == 1
    assert res.stdout == "FAILURE revision=43\nget lock version=1\nyou\n"
    assert res.stderr == "prkctl: txn: the compares did not hold; the failure ops ran\n"
    res = invoke(SEEDS, "--json", "txn", input=text, obj=fake_ctl(client))
    assert res.exit_code == 1 and json.loads(res.stdout)["succeeded"] is False


def test_put_lease_and_lease_commands_output() -> None:
    client = FakeKeyApi()
    res = invoke(SEEDS, "--json", "put", "--lease", "0x50003", "k", "v", obj=fake_ctl(client))
    assert res.exit_code == 0 and json.loads(res.stdout)["lease"] == 0x50003
    assert client.calls == [("put", (b"k", b"v", 0x50003))]
    res = invoke(SEEDS, "lease", "grant", "1", "--key", "{svc}/a", obj=fake_ctl(client))
    assert res.stdout == f"{(5 << 16) | 3}\n"  # the id alone: ID=$(prkctl lease grant 10)
    assert "TTL raised to 2s" in res.stderr and client.calls[-1] == ("grant_lease",
                                                                     (1.0, b"{svc}/a"))
    res = invoke(SEEDS, "--json", "lease", "grant", "10", obj=fake_ctl(client))
    assert json.loads(res.stdout) == {"id": (5 << 16) | 3, "partition": 3, "ttl": 10.0}
    assert client.calls[-1] == ("grant_lease", (10.0, b""))
    res = invoke(SEEDS, "lease", "ttl", str((5 << 16) | 3), "--keys", obj=fake_ctl(client))
    assert res.stdout == f"lease {(5 << 16) | 3} ttl=10s remaining=7.5s keys=2\na\nb\n"
    res = invoke(SEEDS, "lease", "ttl", "12345678", obj=fake_ctl(client))
    assert res.exit_code == 1
    assert res.stderr == "prkctl: lease 12345678 not found (expired or revoked)\n"
    res = invoke(SEEDS, "lease", "list", obj=fake_ctl(client))
    assert res.stdout.splitlines() == ["ID      PARTITION  TTL  REMAINING",
                                       "327683  3          10s  7.5s",
                                       "589824  0          2s   0.25s"]
    res = invoke(SEEDS, "--json", "lease", "list", obj=fake_ctl(client))
    assert json.loads(res.stdout)["leases"][1] == {"id": 9 << 16, "partition": 0, "ttl": 2.0,
                                                   "remaining": 0.25}


def test_every_command_is_in_the_operations_table() -> None:
    # docs/operations.md "prkctl in one table": a new command must get a row.
    from pathlib import Path

    from tests.prkctl.test_offline import all_commands

    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    section = doc.split("## prkctl in one table", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    missing = [" ".join(path) for path in all_commands() if path
               and not any(f"{path[-2]} " in row and path[-1] in row if len(path) > 1
                           else f"`{path[0]}" in row for row in rows)]
    assert missing == []


class KeepAliveFake(FakeKeyApi):
    """A lease of `ttl` seconds whose renewals answer from `script` (a float or an error)."""

    def __init__(self, ttl: float, script: list[float | Exception]) -> None:
        super().__init__()
        self.ttl = ttl
        self.script = script
        self.renewals = 0

    async def lease_ttl(self, lease_id: int, *, keys: bool = False) -> LeaseStatus:
        return LeaseStatus(lease_id, self.ttl, self.ttl)

    async def keep_alive_once(self, lease_id: int, *, timeout: float | None = None) -> float:
        self.renewals += 1
        step = self.script.pop(0) if self.script else Timeout("no leader")
        if isinstance(step, Exception):
            raise step
        return step


def test_keep_alive_runs_until_the_lease_is_gone() -> None:
    gone = LeaseNotFound("lease 65536 expired or was revoked")
    client = KeepAliveFake(0.15, [0.15, 0.15, Timeout("electing"), 0.15, gone])
    res = invoke(SEEDS, "--json", "lease", "keep-alive", "65536", obj=fake_ctl(client))
    assert res.exit_code == 1
    # one JSON object per renewal; a failed renewal is retried with a note on stderr
    assert [json.loads(ln) for ln in res.stdout.splitlines()] == [
        {"id": 65536, "remaining": 0.15}] * 3
    assert "keep-alive of lease 65536 failed, retrying: electing" in res.stderr
    assert res.stderr.endswith("prkctl: lease 65536 expired or was revoked\n")
    assert client.renewals == 5


def test_keep_alive_gives_up_after_a_ttl_without_renewal() -> None:
    client = KeepAliveFake(0.15, [0.15])  # then the cluster stays unavailable
    res = invoke(SEEDS, "lease", "keep-alive", "65536", obj=fake_ctl(client))
    assert res.exit_code == 1
    assert res.stdout == "lease 65536 kept alive, remaining 0.15s\n"
    assert res.stderr.splitlines()[-1] == (
        "prkctl: lease 65536: no keep-alive succeeded for its whole TTL (0.15s); it may have "
        "expired (no leader)")
    res = invoke(SEEDS, "lease", "keep-alive", "--once", "65536",
                 obj=fake_ctl(KeepAliveFake(10.0, [9.5])))
    assert res.exit_code == 0 and res.stdout == "lease 65536 kept alive, remaining 9.5s\n"
