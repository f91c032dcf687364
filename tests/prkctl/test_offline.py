"""prkctl without a cluster: help, usage errors (2), error classes -> exit codes via a
fake SDK injected through CtlContext, the offline WAL tools, and balance planning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest

from prkctl.cli import CtlContext, cli
from prkctl.commands.leader import plan_moves
from prkctl.commands.status import ClusterView
from prkdb.client import InvalidRequest, OutcomeUnknown, Timeout, WriteResult, WrongCluster
from prkdb.raft.types import Entry, HardState
from prkdb.storage import WriteAheadLog, dump, verify
from prkdb.storage.identity import DataDirIdentity, write_identity
from prkdb.storage.rebuild_marker import Marker
from prkdb.storage.record import encode_entries
from tests.prkctl.helpers import flip_bit, invoke, segments

SEEDS = ["127.0.0.1:1"]


def all_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += all_commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


@pytest.mark.parametrize("path", all_commands(), ids=lambda p: " ".join(p) or "prkctl")
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    res = invoke(SEEDS, *path, "--help")
    assert res.exit_code == 0
    assert "Example" in res.stdout, f"prkctl {' '.join(path)} --help has no example"


@pytest.mark.parametrize("args", [
    ["nosuchcommand"],
    ["get"],
    ["get", "--consistency", "bogus", "k"],
    ["put", "k"],
    ["leader", "transfer", "x", "1"],
    ["leader", "transfer", "-1", "1"],
    ["bench", "--duration", "0"],
    ["bench", "-w", "W2"],
    ["snapshot", "--node", "0"],
    ["wal", "verify", "/nonexistent/dir"],
    ["put", "--base64", "!!", "v"],
    ["cas", "k", "new"],
], ids=lambda a: " ".join(a))
def test_bad_usage_exits_2(args: list[str]) -> None:
    res = invoke(SEEDS, *args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output


def test_bad_seeds_exit_2() -> None:
    res = invoke(["nonsense"], "status")
    assert res.exit_code == 2 and "host:port" in res.stderr


# --- error classes -> exit codes, with a fake SDK ----------------------------------


class FakeClient:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.closed = False

    async def put(self, key: bytes, value: bytes) -> WriteResult:
        if self.error is not None:
            raise self.error
        return WriteResult(True, 7, 1, 0)

    async def aclose(self) -> None:
        self.closed = True


def fake_ctl(client: FakeClient) -> CtlContext:
    async def factory(ctl: CtlContext) -> FakeClient:
        return client

    return CtlContext(client_factory=factory)


@pytest.mark.parametrize(("error", "code", "text"), [
    (None, 0, ""),
    (OutcomeUnknown("leader lost"), 3, "outcome unknown: leader lost"),
    (Timeout("no leader"), 1, "cluster unavailable: no leader"),
    (InvalidRequest("key too big"), 1, "rejected: key too big"),
    (WrongCluster("belongs to 'x'"), 1, "--cluster-id"),
    (RuntimeError("boom"), 1, "internal error: RuntimeError: boom"),
])
def test_error_classes_map_to_exit_codes(error: Exception | None, code: int, text: str) -> None:
    client = FakeClient(error)
    res = invoke(SEEDS, "put", "k", "v", obj=fake_ctl(client))
    assert res.exit_code == code, res.output
    assert client.closed
    assert text in res.stderr
    assert "Traceback" not in res.output
    if code:
        assert res.stderr.startswith("prkctl: ") and res.stderr.count("\n") == 1


def test_debug_shows_the_traceback() -> None:
    res = invoke(SEEDS, "--debug", "put", "k", "v",
                 obj=fake_ctl(FakeClient(OutcomeUnknown("leader lost"))))
    assert res.exit_code == 3
    assert "Traceback" in res.stderr and "OutcomeUnknown" in res.stderr


@pytest.mark.parametrize("args", [
    ["put", "", "v"],
    ["get", ""],
    ["delete", ""],
    ["cas", "", "new", "--expect-absent"],
    ["kv", "put", "", "v"],
    ["--hex", "put", "", "cafe"],
    ["put", "--base64", "", "v"],
], ids=lambda a: " ".join(a) or "empty")
def test_empty_key_is_bad_usage_exit_2(args: list[str]) -> None:
    # docs/operations.md: exit 2 for bad usage; the SDK is never reached.
    client = FakeClient(RuntimeError("the SDK was called"))
    res = invoke(SEEDS, *args, obj=fake_ctl(client))
    assert res.exit_code == 2, res.output
    assert "KEY: a key must not be empty" in res.stderr


class RecordingClient(FakeClient):
    def __init__(self) -> None:
        super().__init__()
        self.puts: list[tuple[bytes, bytes]] = []

    async def put(self, key: bytes, value: bytes) -> WriteResult:
        self.puts.append((key, value))
        return await super().put(key, value)


@pytest.mark.parametrize(("args", "sent", "shown"), [
    (["--hex", "put", "00ff", "cafe"], (b"\x00\xff", b"\xca\xfe"), "00ff"),
    (["put", "--hex", "00ff", "cafe"], (b"\x00\xff", b"\xca\xfe"), "00ff"),
    (["--base64", "put", "AP8=", "yv4="], (b"\x00\xff", b"\xca\xfe"), "AP8="),
    (["--hex", "put", "--utf8", "00ff", "cafe"], (b"00ff", b"cafe"), "00ff"),  # command wins
    (["put", "00ff", "cafe"], (b"00ff", b"cafe"), "00ff"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_root_encoding_option(args: list[str], sent: tuple[bytes, bytes], shown: str) -> None:
    # `prkctl --hex put 00ff cafe` is the form prkctl --help shows.
    client = RecordingClient()
    res = invoke(SEEDS, "--json", *args, obj=fake_ctl(client))
    assert res.exit_code == 0, res.output
    assert client.puts == [sent]
    assert json.loads(res.stdout)["key"] == shown


def test_root_help_shows_the_encoding_options() -> None:
    res = invoke(SEEDS, "--help")
    assert "--hex" in res.stdout and "prkctl --hex put 00ff cafe" in res.stdout


def test_json_write_shape_from_fake() -> None:
    res = invoke(SEEDS, "--json", "put", "k", "v", obj=fake_ctl(FakeClient()))
    assert json.loads(res.stdout) == {"key": "k", "succeeded": True, "revision": 7,
                                      "version": 1, "prev_version": 0}


# --- wal verify / dump ----------------------------------------------------------------


def make_data_dir(root: Path, n: int = 300) -> Path:
    """A node data dir whose WAL spans several 4 KiB segments (2 partitions)."""
    data = root / "node1"
    with WriteAheadLog.open(data / "wal", segment_size=4096) as wal:
        for i in range(1, n + 1):
            for p in (0, 1):
                wal.append_entries(p, [Entry(1, i, data=bytes([i % 251]) * 20)])
            if i % 50 == 0:
                wal.append_hard_state(0, HardState(1, 1, i))
        wal.sync()
    return data


def test_wal_verify_good_dir(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path)
    res = invoke(SEEDS, "wal", "verify", str(data))
    assert res.exit_code == 0, res.output
    assert "partition 0: entries 1..300" in res.stdout and res.stdout.endswith("ok\n")
    res = invoke(SEEDS, "--json", "wal", "verify", str(data))
    out = json.loads(res.stdout)
    assert out["ok"] is True and out["problem"] is None and len(out["segments"]) >= 3
    assert out["partitions"]["1"]["last_index"] == 300 and out["records"] > 600
    # the wal directory itself is accepted too
    assert invoke(SEEDS, "wal", "verify", str(data / "wal")).exit_code == 0


def test_wal_verify_corruption_names_file_and_offset(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path)
    victim = segments(data / "wal")[1]
    offsets = [r.offset for r in dump(data / "wal") if r.file == str(victim)]
    bad = offsets[len(offsets) // 2]
    flip_bit(victim, bad + 20)
    before = victim.read_bytes()
    res = invoke(SEEDS, "wal", "verify", str(data))
    assert res.exit_code == 1
    assert res.stderr == f"prkctl: corruption in {victim} at offset {bad}: " + \
        res.stderr.split(f"offset {bad}: ", 1)[1]
    assert "CORRUPT" in res.stdout
    res = invoke(SEEDS, "--json", "wal", "verify", str(data))
    assert res.exit_code == 1
    problem = json.loads(res.stdout)["problem"]
    assert (problem["file"], problem["offset"], problem["tail"]) == (str(victim), bad, False)
    assert victim.read_bytes() == before  # read-only


def test_wal_verify_torn_tail_is_a_warning(tmp_path: Path) -> None:
    # A record half-written past the last sync (what a crash leaves) is cut
    # at the next start: a warning, exit 0.
    data = make_data_dir(tmp_path)
    last = segments(data / "wal")[-1]
    end = verify(data / "wal").segments[-1].valid_bytes
    torn = bytearray(encode_entries(0, [Entry(1, 301, data=b"x" * 20)]))
    torn[20] ^= 0xFF
    with open(last, "r+b") as f:
        f.seek(end)
        f.write(torn)
    res = invoke(SEEDS, "wal", "verify", str(data))
    assert res.exit_code == 0, res.output
    assert f"warning: torn tail in {last} at offset {end}" in res.stderr


def test_wal_repair_cuts_and_marks_the_node_for_rebuild(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path)
    write_identity(data, DataDirIdentity.new("c", 4, 2))
    victim = segments(data / "wal")[1]
    offsets = [r.offset for r in dump(data / "wal") if r.file == str(victim)]
    bad = offsets[3]
    flip_bit(victim, bad + 20)
    res = invoke(SEEDS, "wal", "repair", str(data), input="n\n")
    assert res.exit_code == 1 and not (data / "REBUILDING").exists()  # declined: untouched
    res = invoke(SEEDS, "--json", "wal", "repair", str(data), "--yes")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["repaired"] and out["problem"]["offset"] == bad
    assert Path(out["backup"]).exists() and out["discarded_segments"]
    assert Marker.load(data) == Marker(4, None)  # the next start rebuilds from the peers
    assert invoke(SEEDS, "wal", "verify", str(data)).exit_code == 0
    res = invoke(SEEDS, "wal", "repair", str(data), "--yes")
    assert res.exit_code == 0 and "nothing to repair" in res.stdout


def test_wal_verify_and_dump_show_the_identity(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path)
    ident = DataDirIdentity.new("prod", 3, 2)
    write_identity(data, ident)
    res = invoke(SEEDS, "wal", "verify", str(data))
    assert res.exit_code == 0 and f"data dir id {ident.data_dir_id}" in res.stdout
    res = invoke(SEEDS, "--json", "wal", "dump", str(data / "wal"))
    first = json.loads(res.stdout.splitlines()[0])
    assert first["identity"]["cluster_id"] == "prod" and first["identity"]["node_id"] == 3
    (data / "IDENTITY").write_text((data / "IDENTITY").read_text().replace("prod", "prox"))
    res = invoke(SEEDS, "wal", "verify", str(data))
    assert res.exit_code == 1 and "checksum" in res.stderr


def test_wal_dump_filters_and_json_lines(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path)
    res = invoke(SEEDS, "wal", "dump", str(data), "--partition", "1", "--from", "295")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    entries = [ln for ln in lines if " ENTRY " in ln]
    assert len(entries) == 6 and all(" p1 ENTRY " in ln for ln in entries)
    res = invoke(SEEDS, "--json", "wal", "dump", str(data), "--partition", "0")
    recs = [json.loads(ln) for ln in res.stdout.splitlines()]
    kinds = {r["kind"] for r in recs}
    assert {"ENTRY", "HARD_STATE"} <= kinds
    hs = [r for r in recs if r["kind"] == "HARD_STATE"]
    assert hs[-1]["hard_state"] == {"term": 1, "vote": 1, "commit": 300}
    e = next(r for r in recs if r["kind"] == "ENTRY")
    assert set(e) >= {"file", "offset", "partition", "entries"}
    assert e["entries"][0] == {"term": 1, "index": 1, "kind": "NORMAL", "bytes": 20}


def test_wal_commands_reject_a_dir_without_wal(tmp_path: Path) -> None:
    res = invoke(SEEDS, "wal", "dump", str(tmp_path))
    assert res.exit_code == 2 and "holds no WAL" in res.stderr


# --- leader balance planning ----------------------------------------------------------


def view(leaders: list[int], up: tuple[int, ...] = (1, 2, 3)) -> ClusterView:
    nodes = [{"id": i, "up": i in up, "leading": leaders.count(i)} for i in (1, 2, 3)]
    parts: list[dict[str, Any]] = [{"partition": p, "leader": lead}
                                   for p, lead in enumerate(leaders)]
    return ClusterView("c", nodes, parts)


@pytest.mark.parametrize("leaders", [
    [1] * 8, [1, 1, 1, 2, 2, 2, 3, 3], [3] * 4, [1, 2, 3, 1], [2, 2, 0, 2], [1] * 7 + [2],
])
def test_plan_moves_caps_every_node(leaders: list[int]) -> None:
    import math

    moves = plan_moves(view(leaders))
    after = dict(enumerate(leaders))
    for p, src, dst in moves:
        assert after[p] == src
        after[p] = dst
    counts = [list(after.values()).count(i) for i in (1, 2, 3)]
    assert max(counts) <= math.ceil(len(leaders) / 3)
    assert len(moves) == len(set(p for p, _, _ in moves))  # each partition moves once


def test_plan_moves_ignores_down_nodes() -> None:
    moves = plan_moves(view([1, 1, 1, 1], up=(1, 2)))
    assert moves and all(dst == 2 for _, _, dst in moves)
    assert len(moves) == 2
