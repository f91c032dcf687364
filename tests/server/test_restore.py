"""The backup file (prkdb/backupfile.py) and `prkdb restore` (prkdb/server/restore.py).

Backups are built here the way `prkctl backup` builds them (snapshot files
written by SnapshotStore.save from a real state machine, then write_backup),
then damaged in one way each; `prkdb restore` must refuse every damaged one
with exit 1 and a message naming the problem, refuse usage problems with
exit 2, and turn a good one into a data dir from which a node recovers
every key.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from prkdb.backupfile import (
    MANIFEST,
    BackupFileError,
    PartitionEntry,
    member_name,
    new_manifest,
    read_manifest,
    verify_backup,
    verify_snapshot_stream,
    write_backup,
)
from prkdb.config import NodeConfig, PeerConfig
from prkdb.logging import get_logger
from prkdb.partitioning import partition_for
from prkdb.raft.types import ConfState, Snapshot, SnapshotMeta
from prkdb.server.clusterconf import write_cluster_configs
from prkdb.server.datadir import ensure_identity, open_storage
from prkdb.server.main import cli
from prkdb.server.recovery import new_state_machine, recover_partition
from prkdb.state import KVStateMachine, LeaseGrantCommand, PutCommand, encode_command
from prkdb.storage import SnapshotStore
from prkdb.storage.identity import read_identity

PARTITIONS = 3
OLD_ID = "prod"
NEW_ID = "prod-restored"


def keys_by_partition() -> dict[int, dict[bytes, bytes]]:
    out: dict[int, dict[bytes, bytes]] = {p: {} for p in range(PARTITIONS)}
    for i in range(60):
        key = f"key-{i}".encode()
        out[partition_for(key, PARTITIONS)][key] = f"value-{i}".encode()
    return out


def make_backup(tmp: Path, *, partitions: int = PARTITIONS) -> tuple[Path, dict[bytes, bytes]]:
    """A good backup of a `partitions`-partition cluster OLD_ID; and every key in it."""
    store = SnapshotStore(tmp / "source-snapshots")
    files, entries, everything = {}, [], {}
    for p, kv in keys_by_partition().items():
        if p >= partitions:
            continue
        sm = KVStateMachine(partition=p)
        # entries 1..4: a no-op and others without data, say; 5 grants a lease
        # (its id names partition p) that the partition's first key is put with.
        index = 5
        lease = sm.apply(index, encode_command(LeaseGrantCommand(60_000))).lease_id
        for key, value in kv.items():
            index += 1
            sm.apply(index, encode_command(PutCommand(key, value, lease=lease), client_id=7,
                                           seq=index))
            lease = 0
        everything.update(kv)
        path = store.save(p, Snapshot(SnapshotMeta(index, 2, ConfState((1, 2, 3))),
                                      sm.snapshot()))
        raw = path.read_bytes()
        files[p] = io.BytesIO(raw)
        entries.append(PartitionEntry(p, member_name(p), index, 2, len(raw),
                                      hashlib.sha256(raw).hexdigest(), 1))
    out = tmp / "backup.tar"
    write_backup(out, new_manifest(OLD_ID, partitions, "test", entries, "hashtag"), files)
    return out, everything


def node_config(tmp: Path, *, cluster_id: str = NEW_ID, partitions: int = PARTITIONS) -> Path:
    peers = [PeerConfig(i, f"127.0.0.1:{18000 + i}", f"127.0.0.1:{19000 + i}") for i in (1, 2, 3)]
    paths = write_cluster_configs(tmp / "conf", peers, cluster_id=cluster_id,
                                  data_dirs={i: tmp / f"data{i}" for i in (1, 2, 3)},
                                  partitions=partitions)
    return paths[1]


def restore(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["restore", *args])
    return result.exit_code, result.output


def rewrite_tar(src: Path, dst: Path, change: dict[str, bytes | None]) -> None:
    """Copy a tar, replacing (or with None dropping) the named members' contents."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for info in tin.getmembers():
            data = tin.extractfile(info).read()  # type: ignore[union-attr]
            if info.name in change:
                new = change[info.name]
                if new is None:
                    continue
                data = new
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def member(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        return tar.extractfile(name).read()  # type: ignore[union-attr]


# --- a good backup ---------------------------------------------------------------------


def test_a_restored_data_dir_recovers_every_key(tmp_path: Path) -> None:
    backup, everything = make_backup(tmp_path)
    assert verify_backup(backup).partitions == PARTITIONS
    config = node_config(tmp_path)
    code, out = restore(str(backup), "--config", str(config))
    assert code == 0, out
    assert f"restored node 1 of cluster {NEW_ID!r}" in out
    cfg = NodeConfig.from_toml(config)
    ident = read_identity(cfg.data_dir)
    assert ident is not None
    assert (ident.cluster_id, ident.node_id, ident.partitions) == (NEW_ID, 1, PARTITIONS)
    # Open it exactly as `prkdb serve` does, and recover every partition.
    log = get_logger(node=1)
    wal, snapshots = open_storage(cfg, ensure_identity(cfg, log), log)
    try:
        found = {}
        for p in range(PARTITIONS):
            r = recover_partition(p, cfg.voter_ids, wal, snapshots, new_state_machine(cfg, p))
            hs = r.storage.hard_state
            assert r.snapshot_index == hs.commit > 0
            assert hs.term == 2 and hs.vote == 0
            assert r.storage.snapshot().meta.conf_state.voters == (1, 2, 3)
            found.update({k: v for k, (v, *_) in r.sm.items()})
            # The lease came along, still holding the partition's first key.
            ((lease_id, ttl_ms),) = r.sm.leases()
            assert lease_id & 0xFFFF == p and ttl_ms == 60_000
            assert r.sm.lease(lease_id) == (60_000, [next(iter(keys_by_partition()[p]))])
    finally:
        wal.close()
    assert found == everything


def test_keep_cluster_id_allows_the_backups_own_id(tmp_path: Path) -> None:
    backup, _ = make_backup(tmp_path)
    config = node_config(tmp_path, cluster_id=OLD_ID)
    code, out = restore(str(backup), "--config", str(config))
    assert code == 2
    assert f"cluster id {OLD_ID!r} is the backup's" in out
    assert "--keep-cluster-id" in out
    assert not (tmp_path / "data1").exists()
    code, out = restore(str(backup), "--config", str(config), "--keep-cluster-id")
    assert code == 0, out


def test_data_dir_override_and_node_id_override(tmp_path: Path) -> None:
    backup, _ = make_backup(tmp_path)
    config = node_config(tmp_path)
    code, out = restore(str(backup), "--config", str(config), "--id", "3",
                        "--data-dir", str(tmp_path / "elsewhere"))
    assert code == 0, out
    ident = read_identity(tmp_path / "elsewhere")
    assert ident is not None and ident.node_id == 3


# --- refused: usage (exit 2) -----------------------------------------------------------


def test_non_empty_data_dir_is_refused(tmp_path: Path) -> None:
    backup, _ = make_backup(tmp_path)
    config = node_config(tmp_path)
    (tmp_path / "data1").mkdir()
    (tmp_path / "data1" / "something").write_text("mine")
    code, out = restore(str(backup), "--config", str(config))
    assert code == 2
    assert "is not empty (holds something)" in out
    assert sorted(p.name for p in (tmp_path / "data1").iterdir()) == ["something"]


def test_an_empty_existing_data_dir_is_fine(tmp_path: Path) -> None:
    backup, _ = make_backup(tmp_path)
    config = node_config(tmp_path)
    (tmp_path / "data1").mkdir()
    code, out = restore(str(backup), "--config", str(config))
    assert code == 0, out


def test_other_partition_count_is_refused(tmp_path: Path) -> None:
    backup, _ = make_backup(tmp_path)
    config = node_config(tmp_path, partitions=PARTITIONS + 1)
    code, out = restore(str(backup), "--config", str(config))
    assert code == 2
    assert (f"the backup has {PARTITIONS} partitions but the configuration says "
            f"cluster.partitions = {PARTITIONS + 1}") in out
    assert not (tmp_path / "data1").exists()


# --- refused: damaged backups (exit 1) -------------------------------------------------


def damaged(tmp_path: Path, how: str) -> Path:
    backup, _ = make_backup(tmp_path)
    bad = tmp_path / f"bad-{how}.tar"
    raw = backup.read_bytes()
    m1 = member(backup, member_name(1))
    doc = json.loads(member(backup, MANIFEST))
    if how == "truncated":  # inside the last member (a tar ends in zero padding)
        m2 = member(backup, member_name(2))
        bad.write_bytes(raw[: raw.index(m2) + len(m2) // 2])
    elif how == "garbage":
        bad.write_bytes(b"this is not a tar archive at all " * 100)
    elif how == "flipped-byte":
        at = raw.index(m1) + len(m1) // 2  # inside partition 1's state
        bad.write_bytes(raw[:at] + bytes([raw[at] ^ 0x40]) + raw[at + 1:])
    elif how == "bad-sha256":
        doc["snapshots"][1]["sha256"] = "0" * 64
        rewrite_tar(backup, bad, {MANIFEST: json.dumps(doc).encode()})
    elif how == "missing-partition":
        doc["snapshots"] = [s for s in doc["snapshots"] if s["partition"] != 2]
        rewrite_tar(backup, bad, {MANIFEST: json.dumps(doc).encode(), member_name(2): None})
    elif how == "missing-member":
        rewrite_tar(backup, bad, {member_name(2): None})
    elif how == "no-manifest":
        rewrite_tar(backup, bad, {MANIFEST: None})
    elif how == "manifest-not-json":
        rewrite_tar(backup, bad, {MANIFEST: b"{nope"})
    elif how == "wrong-format-version":
        doc["format_version"] = 99
        rewrite_tar(backup, bad, {MANIFEST: json.dumps(doc).encode()})
    elif how == "crc-fixed-sha-matching":
        # The member's bytes changed and its manifest entry updated to match:
        # only the snapshot's own CRC can tell.
        at = len(m1) // 2
        new = m1[:at] + bytes([m1[at] ^ 1]) + m1[at + 1:]
        doc["snapshots"][1]["sha256"] = hashlib.sha256(new).hexdigest()
        rewrite_tar(backup, bad, {MANIFEST: json.dumps(doc).encode(), member_name(1): new})
    elif how == "swapped-members":
        m2 = member(backup, member_name(2))
        doc["snapshots"][1]["sha256"] = hashlib.sha256(m2).hexdigest()
        doc["snapshots"][1]["bytes"] = len(m2)
        rewrite_tar(backup, bad, {MANIFEST: json.dumps(doc).encode(), member_name(1): m2})
    elif how == "undecodable-state":
        # A well-formed snapshot file (right CRC, right sha) whose state is not a
        # state machine snapshot: only decoding it tells.
        store = SnapshotStore(tmp_path / "junk")
        e = doc["snapshots"][1]
        path = store.save(1, Snapshot(SnapshotMeta(e["index"], e["term"], ConfState((1,))),
                                      b"\xff\xfe not cbor"))
        new = path.read_bytes()
        e["sha256"], e["bytes"] = hashlib.sha256(new).hexdigest(), len(new)
        rewrite_tar(backup, bad, {MANIFEST: json.dumps(doc).encode(), member_name(1): new})
    else:
        raise AssertionError(how)
    return bad


DAMAGE = {
    "truncated": "",  # either "damaged" or "ended early": checked below
    "garbage": "not a readable tar archive",
    "flipped-byte": "snapshot CRC mismatch",
    "bad-sha256": "does not match the manifest's",
    "missing-partition": "the cluster has 3 partitions but the snapshots cover [0, 1] "
                         "(missing [2])",
    "missing-member": f"{member_name(2)} (partition 2): missing from the archive",
    "no-manifest": "no manifest.json: not a PrkDB backup",
    "manifest-not-json": "manifest.json is not valid JSON",
    "wrong-format-version": "format_version 99",
    "crc-fixed-sha-matching": "snapshot CRC mismatch",
    "swapped-members": "the snapshot holds partition 2",
    "undecodable-state": "the state does not decode",
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_backup_is_refused_naming_the_problem(tmp_path: Path, how: str) -> None:
    bad = damaged(tmp_path, how)
    config = node_config(tmp_path)
    code, out = restore(str(bad), "--config", str(config))
    assert code == 1, out
    assert "restore refused: backup refused:" in out
    if how == "truncated":
        assert any(w in out for w in ("ended early", "damaged", "unreadable")), out
    else:
        assert DAMAGE[how] in out, out
    assert str(bad) in out
    assert not (tmp_path / "data1").exists(), "nothing may be written for a damaged backup"


def test_missing_backup_file(tmp_path: Path) -> None:
    code, out = restore(str(tmp_path / "nope.tar"), "--config", str(node_config(tmp_path)))
    assert code == 1
    assert "no such file" in out


# --- the format module itself --------------------------------------------------------


def test_snapshot_header_matches_the_snapshot_store(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    path = store.save(4, Snapshot(SnapshotMeta(17, 3, ConfState((1, 5))), b"state" * 1000))
    raw = path.read_bytes()
    info = verify_snapshot_stream(io.BytesIO(raw), len(raw), "x")
    assert (info.partition, info.index, info.term, info.voters) == (4, 17, 3, (1, 5))
    assert raw[info.data_offset:info.data_offset + info.data_length] == b"state" * 1000
    assert info.sha256 == hashlib.sha256(raw).hexdigest()
    with pytest.raises(BackupFileError, match="ended early"):
        verify_snapshot_stream(io.BytesIO(raw[:-1]), len(raw), "x")
    with pytest.raises(BackupFileError, match="header says"):
        verify_snapshot_stream(io.BytesIO(raw + b"!"), len(raw) + 1, "x")


def test_write_backup_is_atomic_and_readable(tmp_path: Path) -> None:
    backup, _ = make_backup(tmp_path)
    assert not (tmp_path / "backup.tar.tmp").exists()
    with tarfile.open(backup) as tar:
        assert tar.getnames()[0] == MANIFEST
    m = read_manifest(backup)
    assert (m.cluster_id, m.partitions, m.format_version) == (OLD_ID, PARTITIONS, 1)
    assert [s.partition for s in m.snapshots] == list(range(PARTITIONS))
