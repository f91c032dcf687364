"""The file `prkctl backup` writes and `prkdb restore` reads.

Theory of operation
-------------------
A backup is an uncompressed tar (stdlib `tarfile`, PAX format) holding, in
this order:

``manifest.json``
    ``{"format": "prkdb-backup", "format_version": 1, "cluster_id": ...,
    "partitions": N, "key_rule": "hashtag" | "crc32", "prkdb_version": ...,
    "created": "<ISO 8601 UTC>",
    "snapshots": [{"partition", "member", "index", "term", "bytes",
    "sha256", "node_id"}, ...]}``, one entry per partition 0..N-1.
``partitions/p<partition:05d>.snap``
    The partition's snapshot file exactly as the node that took it stored it
    (prkdb/storage/snapshots.py: header, voters, state, CRC32), so it carries
    two independent checks: the manifest's SHA-256 of the member and the
    file's own CRC.

Each snapshot is of one partition at one committed index (`index`, `term`);
there is no cross-partition point in time (revisions are per partition).

The writer (`write_backup`) writes ``FILE.tmp``, fsyncs it, renames it to
FILE and fsyncs the directory, so FILE is either absent or complete. The
reader (`verify_backup`) checks everything before anyone trusts a byte: the
tar structure, the manifest's shape, that partitions 0..N-1 each appear once,
every member's size and SHA-256, and every snapshot's header (magic, version,
partition, index, term, lengths) and CRC. Any failure raises
`BackupFileError` naming the member and what is wrong.

Stdlib only, plus the snapshot file constants; used by prkctl (writer) and
prkdb.server.restore (reader).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import tarfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Final

from prkdb.partitioning import KEY_RULES
from prkdb.storage.snapshots import MAGIC as SNAPSHOT_MAGIC
from prkdb.storage.snapshots import parse_head

FORMAT: Final = "prkdb-backup"
FORMAT_VERSION: Final = 1
MANIFEST: Final = "manifest.json"
MANIFEST_MAX: Final = 16 * 1024 * 1024  # a manifest larger than this is not ours
READ_CHUNK: Final = 1024 * 1024

# The snapshot file's header (prkdb/storage/snapshots.py; tests check the two agree):
# magic, version, partition, index, term, data length, number of voters.
_HEAD_V1_SIZE = struct.calcsize("<8sIIQQQI")  # a snapshot header's common part
_HEAD_MAX = struct.calcsize("<8sIIQQQI16s")  # with version 2's data dir id
_CRC = struct.Struct("<I")


class BackupFileError(Exception):
    """The backup file is damaged or not a PrkDB backup; the message says where and what."""


def member_name(partition: int) -> str:
    return f"partitions/p{partition:05d}.snap"


@dataclass(frozen=True)
class PartitionEntry:
    """One partition's snapshot in a backup.

    Attributes:
        index, term: the snapshot's last included log entry (committed).
        bytes: size of the snapshot file (the tar member).
        sha256: hex SHA-256 of the member.
        node_id: the node whose snapshot file it is (informational).
    """

    partition: int
    member: str
    index: int
    term: int
    bytes: int
    sha256: str
    node_id: int = 0


@dataclass(frozen=True)
class Manifest:
    cluster_id: str
    partitions: int
    prkdb_version: str
    created: str  # ISO 8601, UTC
    snapshots: tuple[PartitionEntry, ...]
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    # How the cluster maps keys to partitions (prkdb.partitioning); a backup
    # written before hash tags has none and comes from a "crc32" cluster.
    key_rule: str = "crc32"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "cluster_id": self.cluster_id,
            "partitions": self.partitions,
            "key_rule": self.key_rule,
            "prkdb_version": self.prkdb_version,
            "created": self.created,
            "snapshots": [asdict(s) for s in self.snapshots],
        }

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.snapshots)

    @classmethod
    def from_json(cls, doc: Any) -> Manifest:
        """Parse and check a manifest document.

        Raises:
            BackupFileError: wrong format, version or shape; partitions not
                exactly 0..N-1.
        """
        where = MANIFEST
        if not isinstance(doc, dict):
            raise BackupFileError(f"{where}: not a JSON object")
        if doc.get("format") != FORMAT:
            raise BackupFileError(
                f"{where}: format is {doc.get('format')!r}, not {FORMAT!r}: not a PrkDB backup")
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise BackupFileError(
                f"{where}: format_version {version!r}; this prkdb reads version {FORMAT_VERSION}")
        cluster_id = _field(doc, "cluster_id", str, where)
        partitions = _field(doc, "partitions", int, where)
        if not 1 <= partitions <= 1 << 20:
            raise BackupFileError(f"{where}: partitions = {partitions} is out of range")
        key_rule = doc.get("key_rule", "crc32")
        if key_rule not in KEY_RULES:
            raise BackupFileError(f"{where}: key_rule {key_rule!r:.40} is not one of {KEY_RULES}")
        raw = _field(doc, "snapshots", list, where)
        entries = []
        for i, item in enumerate(raw):
            w = f"{where}: snapshots[{i}]"
            if not isinstance(item, dict):
                raise BackupFileError(f"{w}: not a JSON object")
            e = PartitionEntry(
                partition=_field(item, "partition", int, w),
                member=_field(item, "member", str, w),
                index=_field(item, "index", int, w),
                term=_field(item, "term", int, w),
                bytes=_field(item, "bytes", int, w),
                sha256=_field(item, "sha256", str, w),
                node_id=item.get("node_id", 0) if isinstance(item.get("node_id", 0), int) else 0,
            )
            if e.index < 1 or e.term < 1 or e.bytes < _HEAD_V1_SIZE + _CRC.size:
                raise BackupFileError(f"{w}: index, term or bytes out of range ({e})")
            if len(e.sha256) != 64 or any(c not in "0123456789abcdef" for c in e.sha256):
                raise BackupFileError(f"{w}: sha256 {e.sha256!r:.80} is not 64 hex digits")
            if e.member != member_name(e.partition):
                raise BackupFileError(
                    f"{w}: member {e.member!r} should be {member_name(e.partition)!r}")
            entries.append(e)
        got = sorted(e.partition for e in entries)
        if got != list(range(partitions)):
            missing = sorted(set(range(partitions)) - set(got))
            extra = sorted({p for p in got if not 0 <= p < partitions or got.count(p) > 1})
            raise BackupFileError(
                f"{where}: the cluster has {partitions} partitions but the snapshots cover "
                f"{got}" + (f" (missing {missing})" if missing else "")
                + (f" (unexpected or repeated {extra})" if extra else ""))
        entries.sort(key=lambda e: e.partition)
        return cls(cluster_id, partitions, _field(doc, "prkdb_version", str, where),
                   _field(doc, "created", str, where), tuple(entries), key_rule=key_rule)


def _field(doc: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BackupFileError(f"{where}: {name} must be a {kind.__name__}, got {value!r:.80}")
    return value


# -- snapshot files ---------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotInfo:
    """What a verified snapshot file says about itself."""

    partition: int
    index: int
    term: int
    voters: tuple[int, ...]
    data_offset: int  # where the state bytes start in the file
    data_length: int
    size: int  # the whole file
    sha256: str  # hex, of the whole file


def verify_snapshot_stream(f: IO[bytes], size: int, what: str) -> SnapshotInfo:
    """Read a snapshot file of `size` bytes from `f` and check its header and CRC.

    Also computes its SHA-256 on the way (one pass, bounded memory).

    Raises:
        BackupFileError: too short, bad magic/version, inconsistent lengths,
            CRC mismatch or a short read; the message starts with `what`.
    """
    sha = hashlib.sha256()
    if size < _HEAD_V1_SIZE + _CRC.size:
        raise BackupFileError(f"{what}: {size} bytes is too short for a snapshot file")
    head = _read_exact(f, _HEAD_V1_SIZE, what)
    if head[:8] == SNAPSHOT_MAGIC and head[8:12] != b"\x01\0\0\0":
        head += _read_exact(f, min(size - _CRC.size, _HEAD_MAX) - _HEAD_V1_SIZE, what)
    parsed = parse_head(head)
    if parsed is None:
        raise BackupFileError(f"{what}: not a PrkDB snapshot file (bad magic or version)")
    head = head[: parsed.size]
    partition, index, term = parsed.partition, parsed.index, parsed.term
    dlen, nvoters = parsed.data_length, parsed.n_voters
    expected = parsed.size + 8 * nvoters + dlen + _CRC.size
    if expected != size:
        raise BackupFileError(
            f"{what}: the snapshot header says {expected} bytes but the file has {size}")
    crc = zlib.crc32(head)
    sha.update(head)
    raw_voters = _read_exact(f, 8 * nvoters, what)
    crc = zlib.crc32(raw_voters, crc)
    sha.update(raw_voters)
    left = dlen
    while left:
        chunk = _read_exact(f, min(left, READ_CHUNK), what)
        crc = zlib.crc32(chunk, crc)
        sha.update(chunk)
        left -= len(chunk)
    tail = _read_exact(f, _CRC.size, what)
    sha.update(tail)
    (stored,) = _CRC.unpack(tail)
    if stored != crc:
        raise BackupFileError(
            f"{what}: snapshot CRC mismatch (stored {stored:#010x}, computed {crc:#010x})")
    voters = struct.unpack(f"<{nvoters}Q", raw_voters)
    return SnapshotInfo(partition, index, term, voters, parsed.size + 8 * nvoters, dlen, size,
                        sha.hexdigest())


def snapshot_data(raw: bytes, info: SnapshotInfo) -> bytes:
    """The state bytes of a verified snapshot file's contents."""
    return raw[info.data_offset : info.data_offset + info.data_length]


def _read_exact(f: IO[bytes], n: int, what: str) -> bytes:
    buf = f.read(n)
    if len(buf) != n:
        raise BackupFileError(f"{what}: ended early (wanted {n} more bytes, got {len(buf)})")
    return buf


# -- writing ----------------------------------------------------------------------------


def new_manifest(cluster_id: str, partitions: int, prkdb_version: str,
                 snapshots: Sequence[PartitionEntry], key_rule: str) -> Manifest:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Manifest(cluster_id, partitions, prkdb_version, created,
                    tuple(sorted(snapshots, key=lambda s: s.partition)), key_rule=key_rule)


def write_backup(path: Path, manifest: Manifest, files: dict[int, IO[bytes]]) -> None:
    """Write the backup: ``path.tmp``, fsync, rename to `path`, fsync the directory.

    Args:
        files: partition -> its snapshot file, positioned anywhere (each is
            rewound and must hold exactly the manifest entry's bytes).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    mtime = int(time.time())
    try:
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                body = (json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n").encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mtime, info.mode = len(body), mtime, 0o644
                tar.addfile(info, io.BytesIO(body))
                for entry in manifest.snapshots:
                    f = files[entry.partition]
                    f.seek(0)
                    info = tarfile.TarInfo(entry.member)
                    info.size, info.mtime, info.mode = entry.bytes, mtime, 0o644
                    tar.addfile(info, f)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- reading ----------------------------------------------------------------------------


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:")
    except FileNotFoundError:
        raise BackupFileError(f"{path}: no such file") from None
    except (tarfile.TarError, EOFError) as e:
        raise BackupFileError(f"{path}: not a readable tar archive ({e})") from None


def _members(tar: tarfile.TarFile, path: Path) -> dict[str, tarfile.TarInfo]:
    try:
        infos = tar.getmembers()
    except (tarfile.TarError, EOFError) as e:
        raise BackupFileError(f"{path}: the tar archive is damaged ({e})") from None
    out: dict[str, tarfile.TarInfo] = {}
    for info in infos:
        if info.name in out:
            raise BackupFileError(f"{path}: member {info.name!r} appears twice")
        out[info.name] = info
    return out


def read_manifest(path: Path) -> Manifest:
    """The manifest only (checked for shape), without verifying the snapshots."""
    with _open_tar(path) as tar:
        return _manifest_of(tar, _members(tar, path), path)


def _manifest_of(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
                 path: Path) -> Manifest:
    info = members.get(MANIFEST)
    if info is None or not info.isfile():
        raise BackupFileError(f"{path}: no {MANIFEST}: not a PrkDB backup")
    if info.size > MANIFEST_MAX:
        raise BackupFileError(f"{path}: {MANIFEST} of {info.size} bytes is too large")
    raw = _extract(tar, info, path).read()
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BackupFileError(f"{path}: {MANIFEST} is not valid JSON ({e})") from None
    try:
        return Manifest.from_json(doc)
    except BackupFileError as e:
        raise BackupFileError(f"{path}: {e}") from None


def _extract(tar: tarfile.TarFile, info: tarfile.TarInfo, path: Path) -> IO[bytes]:
    try:
        f = tar.extractfile(info)
    except (tarfile.TarError, EOFError) as e:
        raise BackupFileError(f"{path}: member {info.name!r} is damaged ({e})") from None
    if f is None:
        raise BackupFileError(f"{path}: member {info.name!r} is not a regular file")
    return f


def verify_backup(path: Path) -> Manifest:
    """Check the whole backup (module docstring); its manifest if every check passes.

    Raises:
        BackupFileError: the first problem found, naming the member.
    """
    path = Path(path)
    with _open_tar(path) as tar:
        members = _members(tar, path)
        manifest = _manifest_of(tar, members, path)
        expected = {MANIFEST} | {e.member for e in manifest.snapshots}
        extra = sorted(set(members) - expected)
        if extra:
            raise BackupFileError(f"{path}: unexpected members {extra[:5]}")
        for e in manifest.snapshots:
            info = members.get(e.member)
            what = f"{path}: {e.member} (partition {e.partition})"
            if info is None or not info.isfile():
                raise BackupFileError(f"{what}: missing from the archive")
            if info.size != e.bytes:
                raise BackupFileError(
                    f"{what}: {info.size} bytes in the archive, the manifest says {e.bytes}")
            try:
                snap = verify_snapshot_stream(_extract(tar, info, path), info.size, what)
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise BackupFileError(f"{what}: unreadable ({exc})") from None
            if snap.sha256 != e.sha256:
                raise BackupFileError(
                    f"{what}: sha256 {snap.sha256} does not match the manifest's {e.sha256}")
            if (snap.partition, snap.index, snap.term) != (e.partition, e.index, e.term):
                raise BackupFileError(
                    f"{what}: the snapshot holds partition {snap.partition} at index "
                    f"{snap.index} term {snap.term}, the manifest says partition "
                    f"{e.partition} at index {e.index} term {e.term}")
    return manifest


def iter_snapshots(path: Path, manifest: Manifest) -> Iterator[tuple[PartitionEntry, bytes,
                                                                       SnapshotInfo]]:
    """Each partition's snapshot file contents (re-checked), one at a time, in order."""
    with _open_tar(path) as tar:
        members = _members(tar, path)
        for e in manifest.snapshots:
            what = f"{path}: {e.member} (partition {e.partition})"
            info = members.get(e.member)
            if info is None:
                raise BackupFileError(f"{what}: missing from the archive")
            raw = _extract(tar, info, path).read()
            snap = verify_snapshot_stream(io.BytesIO(raw), len(raw), what)
            if snap.sha256 != e.sha256 or (snap.index, snap.term) != (e.index, e.term):
                raise BackupFileError(f"{what}: changed since it was verified")
            yield e, raw, snap
