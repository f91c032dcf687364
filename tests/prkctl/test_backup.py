"""`prkctl backup FILE` against a fake SDK client: the file, the output, the exit codes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import IO, Any

from click.testing import CliRunner

from prkctl.cli import CtlContext, cli
from prkdb.backupfile import verify_backup
from prkdb.errors import Unavailable
from prkdb.raft.types import ConfState, Role, Snapshot, SnapshotMeta
from prkdb.state import KVStateMachine
from prkdb.storage import SnapshotStore
from prkdb.wire.messages import BackupBeginOk, NodeInfo, PartitionStatus, StatusOk


class FakeClient:
    """Serves `status` and `backup_partition` from snapshot files made here."""

    def __init__(self, tmp: Path, partitions: int = 2, *, fail: int | None = None,
                 corrupt: int | None = None) -> None:
        self.partitions = partitions
        self.fail, self.corrupt = fail, corrupt
        store = SnapshotStore(tmp / "node-snapshots")
        self.files = {}
        for p in range(partitions):
            meta = SnapshotMeta(10 + p, 3, ConfState((1, 2, 3)))
            self.files[p] = store.save(p, Snapshot(meta, KVStateMachine().snapshot())).read_bytes()

    async def status(self) -> StatusOk:
        return StatusOk(1, 1, "live", (NodeInfo(1, "h:1", "h:2"),),
                        tuple(PartitionStatus(p, 1, 3, 10, 10, Role.LEADER)
                              for p in range(self.partitions)))

    async def backup_partition(self, p: int, out: IO[bytes], **kw: Any) -> BackupBeginOk:
        if p == self.fail:
            raise Unavailable(f"partition {p}: no leader")
        raw = self.files[p]
        if p == self.corrupt:
            raw = raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:]
        out.write(raw)
        return BackupBeginOk(1, p, 2, 10 + p, 3, len(raw), hashlib.sha256(raw).digest())

    async def aclose(self) -> None:
        pass


def run(tmp: Path, client: FakeClient, *args: str) -> Any:
    async def factory(ctl: CtlContext) -> FakeClient:
        return client

    return CliRunner().invoke(cli, list(args), obj=CtlContext(client_factory=factory))


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_backup_writes_a_verified_file_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "b.tar"
    res = run(tmp_path, FakeClient(tmp_path), "--json", "backup", str(out))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["cluster_id"], summary["partitions"]) == ("live", 2)
    assert [(s["partition"], s["index"], s["node_id"]) for s in summary["snapshots"]] == \
        [(0, 10, 2), (1, 11, 2)]
    assert "partition 1/2 (p0): index 10 term 3 from node 2" in res.stderr
    assert "partition 2/2 (p1): index 11 term 3 from node 2" in res.stderr
    m = verify_backup(out)
    assert (m.cluster_id, m.partitions) == ("live", 2)
    assert leftovers(tmp_path) == []


def test_a_failed_partition_exits_1_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "b.tar"
    res = run(tmp_path, FakeClient(tmp_path, fail=1), "backup", str(out))
    assert res.exit_code == 1
    assert "cluster unavailable: partition 1: no leader" in res.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_copy_failing_its_crc_is_not_written(tmp_path: Path) -> None:
    out = tmp_path / "b.tar"
    res = run(tmp_path, FakeClient(tmp_path, corrupt=0), "backup", str(out))
    assert res.exit_code == 1
    assert "backup not written: partition 0: snapshot CRC mismatch" in res.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_an_existing_file_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "b.tar"
    out.write_text("precious")
    res = run(tmp_path, FakeClient(tmp_path), "backup", str(out))
    assert res.exit_code == 2
    assert "exists (pass --force to replace it)" in res.stderr
    assert out.read_text() == "precious"
    res = run(tmp_path, FakeClient(tmp_path), "backup", "--force", str(out))
    assert res.exit_code == 0, res.output
    assert verify_backup(out).partitions == 2
