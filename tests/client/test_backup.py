"""`PrkDbClient.backup_partition`: routing, chunking, starting over when the file is gone."""

from __future__ import annotations

import io
from typing import Any

import pytest

from prkdb.client import BackupFailed, InvalidRequest
from prkdb.errors import ErrorCode
from prkdb.wire.messages import BackupBegin, BackupRead
from tests.client.fake import FakeCluster, FakeNode, connect, error

FILE = bytes(range(256)) * 40 + b"tail"  # 10244 bytes


def sent(cluster: FakeCluster, kind: type) -> list[tuple[int, Any]]:
    return [(n, m) for n, m in cluster.received if isinstance(m, kind)]


async def test_copies_the_file_in_chunks_from_the_leader(cluster: FakeCluster) -> None:
    cluster.backup_files[2] = FILE
    out = io.BytesIO(b"keep")
    out.seek(4)
    async with await connect(cluster) as client:
        got = await client.backup_partition(2, out, chunk_size=3000)
    assert out.getvalue() == b"keep" + FILE
    assert (got.partition, got.node_id, got.index, got.size) == (2, cluster.leaders[2], 10,
                                                                 len(FILE))
    reads = sent(cluster, BackupRead)
    assert [m.offset for _, m in reads] == [0, 3000, 6000, 9000]
    assert [m.length for _, m in reads] == [3000, 3000, 3000, len(FILE) - 9000]
    assert {n for n, _ in reads} == {got.node_id}


async def test_reads_go_to_the_node_that_answered_begin(cluster: FakeCluster) -> None:
    cluster.backup_files[1] = FILE
    async with await connect(cluster) as client:
        await client.refresh_topology()
        old = cluster.leaders[1]
        cluster.leaders[1] = new = old % 3 + 1  # the client's cache is now stale
        got = await client.backup_partition(1, io.BytesIO())
    assert got.node_id == new
    assert [n for n, _ in sent(cluster, BackupBegin)] == [old, new]  # followed NOT_LEADER
    assert {n for n, _ in sent(cluster, BackupRead)} == {new}


async def test_a_gone_file_starts_the_partition_over(cluster: FakeCluster) -> None:
    cluster.backup_files[0] = FILE
    failures = iter([True])

    async def hook(node: FakeNode, msg: Any) -> Any:
        if isinstance(msg, BackupRead) and msg.offset > 0 and next(failures, False):
            return error(ErrorCode.BAD_REQUEST, "snapshot gone", backup_gone=True)
        return None

    cluster.hook = hook
    out = io.BytesIO()
    async with await connect(cluster) as client:
        await client.backup_partition(0, out, chunk_size=4096)
    assert out.getvalue() == FILE  # the first attempt's bytes were rewound away
    assert len(sent(cluster, BackupBegin)) == 2


async def test_gives_up_after_its_attempts(cluster: FakeCluster) -> None:
    cluster.backup_files[0] = FILE

    async def hook(node: FakeNode, msg: Any) -> Any:
        if isinstance(msg, BackupRead):
            return error(ErrorCode.BAD_REQUEST, "snapshot gone", backup_gone=True)
        return None

    cluster.hook = hook
    out = io.BytesIO()
    async with await connect(cluster) as client:
        with pytest.raises(BackupFailed, match="failed 2 times; last: snapshot gone"):
            await client.backup_partition(0, out, attempts=2)
    assert out.getvalue() == b""
    assert len(sent(cluster, BackupBegin)) == 2


async def test_other_errors_are_not_retried(cluster: FakeCluster) -> None:
    cluster.backup_files[0] = FILE

    async def hook(node: FakeNode, msg: Any) -> Any:
        if isinstance(msg, BackupRead):
            return error(ErrorCode.BAD_REQUEST, "no such partition")
        return None

    cluster.hook = hook
    async with await connect(cluster) as client:
        with pytest.raises(InvalidRequest, match="no such partition"):
            await client.backup_partition(0, io.BytesIO())
    assert len(sent(cluster, BackupBegin)) == 1


async def test_a_changed_file_fails_the_checksum(cluster: FakeCluster) -> None:
    cluster.backup_files[0] = FILE

    async def hook(node: FakeNode, msg: Any) -> Any:
        if isinstance(msg, BackupRead):  # after begin announced FILE's sha256
            cluster.backup_files[0] = FILE[:-4] + b"TAIL"
        elif isinstance(msg, BackupBegin):
            cluster.backup_files[0] = FILE
        return None

    cluster.hook = hook
    async with await connect(cluster) as client:
        with pytest.raises(BackupFailed, match="does not match the one it announced"):
            await client.backup_partition(0, io.BytesIO(), attempts=2)
