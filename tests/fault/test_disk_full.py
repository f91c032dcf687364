"""Scenario 5: every node's data directory on a small tmpfs that fills up.

Writes must fail with a clear error (or the node must stop with a clear
message: fail-stop), the WAL must still verify, and once space returns and
the nodes restart, every acknowledged write is there.
"""

from __future__ import annotations

import hashlib
import subprocess
import time

import pytest
import trio

from prkdb.storage import verify
from tests.fault.workload import connect

pytestmark = pytest.mark.slow

TMPFS_SIZE = "8m"
VALUE = 48 * 1024
MAX_WRITES = 600  # 28 MiB: well past the 8 MiB of disk
STORAGE = "\n[storage]\nsegment_size = 1048576\n"


def _value(n: int) -> bytes:
    return hashlib.sha256(b"%d" % n).digest() * (VALUE // 32)


@pytest.fixture
def tmpfs_dirs(netns_ok, tmp_path):
    mounted = []
    dirs = {}
    try:
        for i in (1, 2, 3):
            d = tmp_path / f"tmpfs{i}"
            d.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(d)],
                           check=True, capture_output=True)
            mounted.append(d)
            dirs[i] = d / "data"
        yield dirs
    finally:
        for d in mounted:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


WRITERS = 6


async def _fill(c):
    """Write big values concurrently until the disks are full; returns (acked, errors)."""
    acked: dict[bytes, int] = {}
    errors: dict[str, int] = {}
    first: list[str] = []
    counter = iter(range(MAX_WRITES))

    async def writer(client) -> None:
        for n in counter:
            if sum(errors.values()) >= 5:
                return
            key = b"big-%d" % n
            try:
                await client.put(key, _value(n))
                acked[key] = n
            except Exception as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                first.append(repr(e))

    t0 = time.monotonic()
    async with connect(c.seeds, timeout=3.0, attempt=1.0) as client, trio.open_nursery() as n:
        for _ in range(WRITERS):
            n.start_soon(writer, client)
    stopped = [i for i in c.ids if not c.alive(i)]
    messages = {
        i: [ln for ln in c.log(i).splitlines() if "storage_failed" in ln][:1] for i in c.ids
    }
    print(f"\n{len(acked)} acked writes of {VALUE} B in {time.monotonic() - t0:.1f}s, "
          f"errors {errors}, first: {(first or [''])[0][:200]}\n"
          f"stopped nodes {stopped}; messages {messages}")
    assert errors, "the disk never filled up"
    assert any(messages.values()), "no node said why it stopped writing"
    for i in c.ids:
        if c.alive(i):
            c.kill(i)
    for i in c.ids:
        report = verify(c.data_dirs[i] / "wal")
        assert report.ok, f"node {i}: WAL damaged after disk full: {report}"
    return acked


async def test_disk_full_fail_stops_with_a_clear_message(make_cluster, tmpfs_dirs) -> None:
    """The node stops (storage_failed ... No space left on device); the WAL verifies."""
    c = make_cluster(3, partitions=2, extra=STORAGE, data_dirs=tmpfs_dirs)
    await _fill(c)


async def test_disk_full_then_space_returns_loses_nothing(make_cluster, tmpfs_dirs) -> None:
    c = make_cluster(3, partitions=2, extra=STORAGE, data_dirs=tmpfs_dirs)
    acked = await _fill(c)
    for i in c.ids:
        await trio.run_process(["mount", "-o", "remount,size=256m", str(tmpfs_dirs[i].parent)])
    c.start_all()
    await trio.to_thread.run_sync(c.wait_ready)
    async with connect(c.seeds, timeout=5.0) as client:
        for key, n in acked.items():
            assert await client.get(key) == _value(n), f"acknowledged {key!r} lost"
        await client.put(b"after", b"space returned")
