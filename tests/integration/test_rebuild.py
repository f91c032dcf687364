"""Rebuilding a node that lost its disk: `prkdb serve --rebuild` (real processes on 127.0.0.1).

The interface under test (docs/operations.md, "Backups and rebuilding a node"):

- `--rebuild` needs an absent or empty data dir; otherwise exit code 2, an
  error on stderr naming "--rebuild" and the data dir, and the dir untouched;
- the node writes `<data_dir>/REBUILDING`, asks every other node for each
  partition's term and commit (Status over their client ports) and, until all
  answered, logs `rebuild_waiting_for_peers missing=[ids]` every ~2 s while
  its client port answers only Status (empty: term and commit 0) and refuses
  everything else as UNAVAILABLE; then `rebuild_prepared`, then it starts normally
  except that no partition votes or campaigns before it caught up to the
  highest commit the peers reported (`partition_rebuilt`); when every
  partition did, `rebuild_complete` and the marker is deleted;
- a node started without the flag on an empty data dir whose peers have Raft
  state logs `rebuild_detected` and behaves as if the flag was given.

What "has the data" means here: before node 3 comes back, one write per
partition is acknowledged by the surviving leaders (a "fence"); a leader's
commit index then covers every write acknowledged before it in that
partition, including those acknowledged by node 3 when it led. The highest
commit index nodes 1 and 2 report afterwards is a per-partition target no
lower than any acknowledged write's index; once node 3's applied index
reaches it, every acknowledged key must read back from node 3's own state
machine. The logs are read by event name only (the harness's default log
format; the regexes accept console `key=value` and JSON `"key": value`).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prkdb.client import OutcomeUnknown, ReadConsistency, SyncClient
from prkdb.errors import ErrorCode, PrkdbError
from prkdb.partitioning import partition_for
from prkdb.storage import dump
from prkdb.storage.record import RecordKind
from prkdb.wire.messages import Error, Get, GetOk, HelloOk, Status, StatusOk
from tests.integration.cluster import CLUSTER_ID, LocalCluster, WireConn
from tests.prkctl.helpers import invoke

pytestmark = pytest.mark.slow

# Generous: a shared 2-core machine running three nodes and the test.
EVENT_TIMEOUT = 30.0
MARKER = "REBUILDING"

# What a key may read as: the last acknowledged value, plus the value of any
# later write whose outcome is unknown (None: the key may be absent).
Expected = dict[bytes, set[bytes | None]]


# --- writing ---------------------------------------------------------------------------


def _client(c: LocalCluster) -> SyncClient:
    return SyncClient(c.seeds, cluster_id=CLUSTER_ID, timeout=15)


def _key_in(partition: int, partitions: int, prefix: bytes) -> bytes:
    for i in range(100_000):
        k = prefix + b"-%d" % i
        if partition_for(k, partitions) == partition:
            return k
    raise AssertionError("no key found")


def _put(client: SyncClient, expected: Expected, key: bytes, value: bytes) -> None:
    try:
        client.put(key, value)
    except OutcomeUnknown:
        expected[key] = expected.get(key, {None}) | {value}
    else:
        expected[key] = {value}


def _populate(client: SyncClient, c: LocalCluster, expected: Expected, prefix: bytes,
              n: int) -> None:
    """n keys over every partition, then every 7th overwritten (the last acknowledged wins)."""
    keys = [prefix + b"-%03d" % i for i in range(n)]
    covered = {partition_for(k, c.partitions) for k in keys}
    assert covered == set(range(c.partitions)), f"keys miss partitions: {covered}"
    for i, k in enumerate(keys):
        _put(client, expected, k, b"v1-%d" % i)
    for k in keys[::7]:
        _put(client, expected, k, b"v2-" + k)


def _fence(client: SyncClient, c: LocalCluster, expected: Expected, tag: bytes) -> None:
    """One acknowledged write per partition (see the module docstring)."""
    for p in range(c.partitions):
        _put(client, expected, _key_in(p, c.partitions, b"fence-" + tag), b"f-" + tag)


def _commit_targets(c: LocalCluster, nodes: list[int]) -> dict[int, int]:
    views = [c.status(i) for i in nodes]
    return {p: max(v.partitions[p].commit for v in views) for p in range(c.partitions)}


# --- reading node 3's own state --------------------------------------------------------


def _stale_reads(c: LocalCluster, node: int, keys: list[bytes]) -> dict[bytes, bytes | None]:
    """Each key as `node` itself has it.

    The SDK cannot pin a read to a node: STALE reads round-robin over every
    known node (`PrkDbClient._route`), and a client seeded with one address
    learns the others from its first Status; `GetResult` does not say which
    node answered. So this speaks the protocol directly on the node's client
    port (`WireConn`): the HelloOk names the node we are talking to, and the
    server answers a STALE Get from its local state machine without
    forwarding it (prkdb/server/client_service.py).
    """
    conn = WireConn(c.client_ports[node - 1], timeout=10)
    try:
        assert isinstance(conn.hello, HelloOk) and conn.hello.node_id == node, conn.hello
        out: dict[bytes, bytes | None] = {}
        for rid, key in enumerate(keys, 1):
            reply = conn.call(Get(rid, key, ReadConsistency.STALE,
                                  partition_for(key, c.partitions)))
            assert isinstance(reply, GetOk), (key, reply)
            out[key] = reply.value
        return out
    finally:
        conn.close()


def _wait_applied(c: LocalCluster, node: int, targets: dict[int, int],
                  timeout: float = EVENT_TIMEOUT) -> None:
    """Until `node`'s applied index reaches `targets` in every partition."""
    deadline = time.monotonic() + timeout
    behind: object = "no status answer"
    while time.monotonic() < deadline:
        try:
            st = c.status(node)
        except (OSError, ConnectionError) as e:
            behind = f"no status answer: {e!r}"
        else:
            behind = {p: (st.partitions[p].applied, t) for p, t in targets.items()
                      if st.partitions[p].applied < t}
            if not behind:
                return
        time.sleep(0.1)
    raise AssertionError(
        f"node {node} did not apply up to the peers' commit index within {timeout}s "
        f"(partition: (applied, target)): {behind}\n{c.log(node)[-3000:]}")


def _assert_commit_reached(c: LocalCluster, node: int, targets: dict[int, int]) -> None:
    """No waiting: right after rebuild_complete, every partition's commit index is at
    least the highest commit the peers reported, which is at least `targets`."""
    deadline = time.monotonic() + 10
    while True:
        try:
            st = c.status(node)
            break
        except (OSError, ConnectionError) as e:
            assert time.monotonic() < deadline, f"node {node} answers no Status: {e!r}"
            time.sleep(0.1)
    behind = {p: (st.partitions[p].commit, t) for p, t in targets.items()
              if st.partitions[p].commit < t}
    assert not behind, (
        f"node {node} logged rebuild_complete below the peers' commit index "
        f"(partition: (commit, target)): {behind}\n{c.log(node)[-3000:]}")


def _assert_serves(c: LocalCluster, node: int, expected: Expected) -> None:
    got = _stale_reads(c, node, list(expected))
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] not in expected[k]}
    assert not wrong, (
        f"node {node} lacks {len(wrong)} of {len(expected)} acknowledged keys "
        f"(key: (read, acknowledged)), e.g. {list(wrong.items())[:5]}")


# --- logs and files --------------------------------------------------------------------


def _lines(text: str, event: str) -> list[str]:
    pattern = re.compile(rf"\b{re.escape(event)}\b")
    return [line for line in text.splitlines() if pattern.search(line)]


def _wait_event(c: LocalCluster, node: int, event: str, *, since: int,
                timeout: float = EVENT_TIMEOUT) -> str:
    """Poll `node`'s log (from character `since`) for `event`; the log text from `since`.

    Fails at once, with the log's tail, if the process exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = c.alive(node)
        text = c.log(node)[since:]
        if _lines(text, event):
            return text
        if not alive:
            raise AssertionError(
                f"node {node} exited (code {c.procs[node].returncode}) without logging "
                f"{event}:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"node {node} did not log {event} within {timeout}s:\n"
                                 f"{text[-3000:]}")
        time.sleep(0.2)


def _missing(line: str) -> list[int]:
    m = re.search(r'\bmissing"?\s*[=:]\s*\[([^\]]*)\]', line)
    assert m, f"no missing=[...] in {line!r}"
    return [int(x) for x in re.findall(r"\d+", m.group(1))]


def _assert_rebuild_sequence(text: str, partitions: int) -> None:
    """rebuild_prepared, then partition_rebuilt for every partition, then rebuild_complete."""
    lines = text.splitlines()

    def first(event: str) -> int:
        found = [n for n, line in enumerate(lines) if _lines(line, event)]
        assert found, f"no {event} in the log:\n{text[-3000:]}"
        return found[0]

    prepared, complete = first("rebuild_prepared"), first("rebuild_complete")
    rebuilt: dict[int, int] = {}
    for n, line in enumerate(lines):
        if _lines(line, "partition_rebuilt"):
            m = re.search(r'\bpartition"?\s*[=:]\s*(\d+)', line)
            assert m, f"partition_rebuilt without a partition: {line!r}"
            rebuilt.setdefault(int(m.group(1)), n)
    assert set(rebuilt) == set(range(partitions)), (
        f"partition_rebuilt logged for {sorted(rebuilt)}, expected every partition "
        f"0..{partitions - 1}:\n{text[-3000:]}")
    assert prepared < min(rebuilt.values()) and max(rebuilt.values()) < complete, (
        f"events out of order (rebuild_prepared at line {prepared}, partition_rebuilt at "
        f"{rebuilt}, rebuild_complete at {complete}):\n{text[-3000:]}")


def _lose_disk(c: LocalCluster, node: int) -> Path:
    """Move the node's data dir away (kept, for forensics); the node's dir is then absent."""
    data = c.root / f"data{node}"
    lost = c.root / f"data{node}.lost"
    data.rename(lost)
    return lost


def _wait_marker_gone(c: LocalCluster, node: int, timeout: float = 10.0) -> None:
    # `rebuild_complete` may be logged just before the marker is deleted: poll.
    marker = c.root / f"data{node}" / MARKER
    deadline = time.monotonic() + timeout
    while marker.exists():
        assert time.monotonic() < deadline, f"{marker} still there {timeout}s after completion"
        time.sleep(0.1)


def _tree_digest(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(d.rglob("*"))
    }


def _assert_not_serving(c: LocalCluster, node: int) -> None:
    """While its survey waits, the node answers no data request (only Status, empty)."""
    port = c.client_ports[node - 1]
    try:
        conn = WireConn(port, timeout=10)
    except ConnectionRefusedError:
        return  # not even listening yet
    try:
        key = _key_in(0, c.partitions, b"probe")
        reply = conn.call(Get(1, key, ReadConsistency.STALE, 0))
        assert isinstance(reply, Error) and reply.code == ErrorCode.UNAVAILABLE, (
            f"node {node} served {reply!r} while rebuilding:\n{c.log(node)[-3000:]}")
        assert "rebuilding" in reply.message
        status = conn.call(Status(2))
        assert isinstance(status, StatusOk)
        assert all(p.term == 0 and p.commit == 0 for p in status.partitions), status
    finally:
        conn.close()


def _lead(c: LocalCluster, client: SyncClient, partition: int, node: int,
          timeout: float = EVENT_TIMEOUT) -> None:
    """Make `node` the partition's leader (it must campaign when asked to take over)."""
    deadline = time.monotonic() + timeout
    asked = 0.0
    while c.leaders().get(partition) != node:
        now = time.monotonic()
        assert now < deadline, (
            f"node {node} did not become leader of partition {partition} within {timeout}s: "
            f"leaders {c.leaders()}\n{c.log(node)[-3000:]}")
        if now - asked > 3.0:
            asked = now
            # No leader right now, or a transfer under way already: ask again later.
            with contextlib.suppress(PrkdbError):
                client.transfer_leader(partition, node, timeout=5)
        time.sleep(0.1)


@contextlib.contextmanager
def _cluster_with_data(tmp_path: Path, prefix: bytes, n: int,
                       **kw: Any) -> Iterator[tuple[LocalCluster, SyncClient, Expected]]:
    """A started 3-node cluster holding `n` acknowledged keys; killed (by PID) on the way out."""
    c = LocalCluster(tmp_path, 3, **kw)
    try:
        c.start_all()
        c.wait_ready()
        expected: Expected = {}
        with _client(c) as client:
            _populate(client, c, expected, prefix, n)
            yield c, client, expected
    finally:
        c.close()


# --- tests -----------------------------------------------------------------------------


def test_rebuilt_node_gets_every_acknowledged_write_back(tmp_path: Path) -> None:
    with _cluster_with_data(tmp_path, b"a", 300, partitions=4) as (c, client, expected):
        c.kill(3)
        _lose_disk(c, 3)
        # Writes node 3 never saw, then the fence (module docstring).
        _populate(client, c, expected, b"b", 40)
        _fence(client, c, expected, b"1")
        targets = _commit_targets(c, [1, 2])

        since = len(c.log(3))
        c.start(3, ["--rebuild"])
        text = _wait_event(c, 3, "rebuild_complete", since=since)
        _assert_rebuild_sequence(text, c.partitions)
        _assert_commit_reached(c, 3, targets)
        _wait_marker_gone(c, 3)
        _wait_applied(c, 3, targets)  # applying may trail the commit index a moment
        _assert_serves(c, 3, expected)

        # A full member again: new writes commit, and node 3 campaigns
        # (it takes over a partition when asked) and serves as its leader.
        c.wait_ready()
        _fence(client, c, expected, b"2")
        _lead(c, client, 0, 3)
        key = _key_in(0, c.partitions, b"after")
        client.put(key, b"led-by-3")
        expected[key] = {b"led-by-3"}
        assert client.get(key) == b"led-by-3"
        _wait_applied(c, 3, _commit_targets(c, [1, 2]))
        _assert_serves(c, 3, expected)


def test_rebuild_refuses_a_data_dir_that_has_data(tmp_path: Path) -> None:
    with _cluster_with_data(tmp_path, b"k", 40) as (c, _, expected):
        assert c.terminate(3) == 0
        data = c.root / "data3"
        assert any(data.glob("wal/*.wal")), f"no WAL in {data}: {sorted(data.rglob('*'))}"
        before = _tree_digest(data)

        # Nodes 1 and 2 are up: a node that went on would find its peers.
        cmd = [*c._command(3), "--rebuild"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=c._env())
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"`{' '.join(cmd)}` on a data dir with a WAL did not exit within 60s "
                        f"(it must refuse at once); output: {e.stdout!r} {e.stderr!r}")
        out = f"exit code {r.returncode}\nstderr:\n{r.stderr}\nstdout:\n{r.stdout}"
        assert r.returncode == 2, out
        assert "--rebuild" in r.stderr, out
        assert str(data) in r.stderr or str(data.resolve()) in r.stderr, (
            f"stderr does not name the data dir {data}:\n{out}")
        assert _tree_digest(data) == before, f"{data} changed:\n{out}"

        # Untouched also means usable: the node starts from it as before.
        c.start(3)
        c.wait_ready()
        _wait_applied(c, 3, _commit_targets(c, [1, 2]))
        _assert_serves(c, 3, expected)


def test_rebuild_waits_for_every_peer(tmp_path: Path) -> None:
    with _cluster_with_data(tmp_path, b"w", 120) as (c, _, expected):
        assert c.terminate(2) == 0
        assert c.terminate(3) == 0
        _lose_disk(c, 3)
        (c.root / "data3").mkdir()  # an empty data dir is as good as an absent one

        since = len(c.log(3))
        c.start(3, ["--rebuild"])
        # Node 1 answers, node 2 is down: node 3 names node 2 and keeps waiting.
        deadline = time.monotonic() + EVENT_TIMEOUT
        while True:
            text = _wait_event(c, 3, "rebuild_waiting_for_peers", since=since)
            waits = _lines(text, "rebuild_waiting_for_peers")
            if any(_missing(line) == [2] for line in waits):
                break
            assert time.monotonic() < deadline, (
                f"no rebuild_waiting_for_peers with missing=[2] within {EVENT_TIMEOUT}s:\n"
                + "\n".join(waits[-5:]))
            time.sleep(0.2)
        assert (c.root / "data3" / MARKER).exists(), "no REBUILDING marker while rebuilding"
        _assert_not_serving(c, 3)
        # Still waiting a report later (they come every ~2 s), still not serving.
        n_waits = len(waits)
        deadline = time.monotonic() + EVENT_TIMEOUT
        while len(_lines(c.log(3)[since:], "rebuild_waiting_for_peers")) <= n_waits:
            assert c.alive(3), f"node 3 exited while waiting for node 2:\n{c.log(3)[since:]}"
            assert time.monotonic() < deadline, (
                f"node 3 stopped reporting rebuild_waiting_for_peers:\n{c.log(3)[since:][-3000:]}")
            time.sleep(0.2)
        text = c.log(3)[since:]
        assert not _lines(text, "rebuild_prepared"), f"prepared without node 2:\n{text[-3000:]}"
        assert all(_missing(line) == [2] for line in _lines(text, "rebuild_waiting_for_peers")
                   [n_waits:]), text[-3000:]
        _assert_not_serving(c, 3)
        assert c.alive(3)

        c.start(2)
        text = _wait_event(c, 3, "rebuild_complete", since=since)
        _assert_rebuild_sequence(text, c.partitions)
        _wait_marker_gone(c, 3)
        c.wait_ready()
        with _client(c) as client:
            _fence(client, c, expected, b"1")
        _wait_applied(c, 3, _commit_targets(c, [1, 2]))
        _assert_serves(c, 3, expected)


def test_wiped_node_without_flag_is_detected(tmp_path: Path) -> None:
    # Unlike the first test, node 3 can only catch up from snapshots here: both
    # peers snapshot (and compact their logs) while it is gone.
    with _cluster_with_data(tmp_path, b"d", 300, snapshot_entries=100) as (
            c, client, expected):
        c.kill(3)
        _lose_disk(c, 3)
        _fence(client, c, expected, b"1")
        for node in (1, 2):
            client.snapshot(node_id=node)
        targets = _commit_targets(c, [1, 2])

        since = len(c.log(3))
        c.start(3)  # no --rebuild: an operator who forgot it
        text = _wait_event(c, 3, "rebuild_detected", since=since)
        text = _wait_event(c, 3, "rebuild_complete", since=since)
        detected = text.find(_lines(text, "rebuild_detected")[0])
        prepared = text.find(_lines(text, "rebuild_prepared")[0]) if _lines(
            text, "rebuild_prepared") else -1
        assert 0 <= detected < prepared, (
            f"expected rebuild_detected, then rebuild_prepared:\n{text[-3000:]}")
        _assert_rebuild_sequence(text, c.partitions)
        assert _lines(text, "installed_snapshot"), (
            f"node 3 caught up without a snapshot although its peers compacted:\n"
            f"{text[-3000:]}")
        _assert_commit_reached(c, 3, targets)
        _wait_marker_gone(c, 3)
        _wait_applied(c, 3, targets)
        _assert_serves(c, 3, expected)
        c.wait_ready()
        _fence(client, c, expected, b"2")
        _wait_applied(c, 3, _commit_targets(c, [1, 2]))
        _assert_serves(c, 3, expected)


def test_a_corrupt_wal_refuses_to_start_and_a_repaired_one_rebuilds(tmp_path: Path) -> None:
    # Issue 13: one flipped byte in a synced record must not be cut as a
    # "torn tail" (the node would come back as a voter that forgot its
    # acks); the node refuses, `prkctl wal repair` cuts there and marks
    # it REBUILDING, and it votes again only once it caught up.
    with _cluster_with_data(tmp_path, b"r", 200, partitions=4) as (c, client, expected):
        assert c.terminate(3) == 0
        data = c.root / "data3"
        seg = sorted((data / "wal").glob("*.wal"))[0]
        offsets = [r.offset for r in dump(data / "wal")
                   if r.file == str(seg) and r.kind == RecordKind.ENTRY]
        bad = offsets[len(offsets) // 2]
        with open(seg, "r+b") as f:
            f.seek(bad + 30)
            byte = f.read(1)[0]
            f.seek(bad + 30)
            f.write(bytes([byte ^ 0x40]))
        r = subprocess.run(c._command(3), capture_output=True, text=True, timeout=60,
                           env=c._env())
        out = f"exit code {r.returncode}\nstderr:\n{r.stderr}"
        assert r.returncode == 1, out
        assert str(seg) in r.stderr and f"offset {bad}" in r.stderr, out
        assert "prkctl wal repair" in r.stderr, out

        _populate(client, c, expected, b"s", 40)  # writes node 3 never saw
        _fence(client, c, expected, b"1")
        targets = _commit_targets(c, [1, 2])
        res = invoke(c.seeds, "wal", "repair", str(data), "--yes")
        assert res.exit_code == 0, res.output
        assert (data / MARKER).exists()

        since = len(c.log(3))
        c.start(3)  # no flag: the marker makes it rebuild
        text = _wait_event(c, 3, "rebuild_complete", since=since)
        _assert_rebuild_sequence(text, c.partitions)
        _assert_commit_reached(c, 3, targets)
        _wait_marker_gone(c, 3)
        _wait_applied(c, 3, targets)
        _assert_serves(c, 3, expected)
