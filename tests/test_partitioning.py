"""Hash tags: which bytes of a key choose its partition, and the rule a data dir records."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prkdb.backupfile import BackupFileError, Manifest, PartitionEntry, member_name
from prkdb.config import ConfigError, NodeConfig
from prkdb.logging import get_logger
from prkdb.partitioning import hash_slice, partition_for
from prkdb.server.datadir import ensure_identity
from prkdb.storage.identity import (
    DataDirIdentity,
    IdentityError,
    IdentityMismatch,
    read_identity,
    write_identity,
)


@pytest.mark.parametrize(
    ("key", "hashed"),
    [
        (b"user:{42}:name", b"42"),
        (b"{42}", b"42"),
        (b"{a}{b}", b"a"),  # the first braces only
        (b"x{}y{z}", b"x{}y{z}"),  # an empty first tag: the whole key (Redis's rule)
        (b"a{b", b"a{b"),  # never closed
        (b"a}b{c", b"a}b{c"),  # a '}' before the '{' does not close it
        (b"a}b{c}", b"c"),
        (b"{{x}}", b"{x"),  # from after the first '{' to the first '}'
        (b"plain", b"plain"),
    ],
)
def test_hash_slice_follows_redis_cluster(key: bytes, hashed: bytes) -> None:
    assert hash_slice(key) == hashed


def test_tagged_keys_share_a_partition_and_untagged_keys_do_not_move() -> None:
    assert partition_for(b"user:{42}:name", 8) == partition_for(b"user:{42}:mail", 8) \
        == zlib.crc32(b"42") % 8
    # The old rule hashes the whole key, braces and all.
    assert partition_for(b"user:{42}:name", 8, "crc32") == zlib.crc32(b"user:{42}:name") % 8


@given(st.binary(max_size=40).filter(lambda k: b"{" not in k), st.integers(1, 1024))
def test_both_rules_agree_on_keys_without_a_tag(key: bytes, partitions: int) -> None:
    assert partition_for(key, partitions, "hashtag") == partition_for(key, partitions, "crc32")


def test_unknown_rule_and_bad_count_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown key rule 'md5'"):
        partition_for(b"k", 8, "md5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="partitions"):
        partition_for(b"k", 0)


# -- the rule a data dir records ------------------------------------------------------


def _cfg(tmp_path: Path, **kw: object) -> NodeConfig:
    return NodeConfig(data_dir=tmp_path / "data", **kw)  # type: ignore[arg-type]


def test_new_data_dir_records_hashtag(tmp_path: Path) -> None:
    ident = ensure_identity(_cfg(tmp_path), get_logger())
    assert ident.key_rule == "hashtag" and ident.rule == "hashtag"
    again = read_identity(tmp_path / "data")
    assert again is not None and again.rule == "hashtag"


def test_data_dir_from_before_hash_tags_keeps_the_whole_key_rule(tmp_path: Path) -> None:
    # An IDENTITY as the previous release wrote it: no key_rule field, CRC over the rest.
    old = DataDirIdentity("prkdb", 1, 8, 2, "ab" * 16, "0.6")
    doc = {k: v for k, v in vars(old).items() if k != "key_rule"}
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "IDENTITY").write_text(
        json.dumps({**doc, "crc32": zlib.crc32(body.encode())}))
    ident = ensure_identity(_cfg(tmp_path), get_logger())
    assert ident.key_rule == "" and ident.rule == "crc32"
    # Saying so in the configuration is fine; asking for the other rule is refused.
    assert ensure_identity(_cfg(tmp_path, key_rule="crc32"), get_logger()).rule == "crc32"
    with pytest.raises(IdentityMismatch, match=r"cluster.key_rule is 'crc32' in the data dir "
                                               r"but 'hashtag' in the configuration"):
        ensure_identity(_cfg(tmp_path, key_rule="hashtag"), get_logger())


def test_recorded_rule_is_covered_by_the_checksum(tmp_path: Path) -> None:
    write_identity(tmp_path, DataDirIdentity.new("c", 1, 8, key_rule="hashtag"))
    raw = (tmp_path / "IDENTITY").read_text().replace('"hashtag"', '"crc32"')
    (tmp_path / "IDENTITY").write_text(raw)
    with pytest.raises(IdentityError, match="checksum"):
        read_identity(tmp_path)


def test_config_refuses_an_unknown_rule() -> None:
    with pytest.raises(ConfigError, match=r"cluster.key_rule = 'tags' must be one of"):
        NodeConfig.from_dict({"cluster": {"key_rule": "tags"}})
    assert NodeConfig.from_dict({"cluster": {"key_rule": "crc32"}}).key_rule == "crc32"
    assert NodeConfig.from_dict({}).key_rule == ""


def test_backup_manifest_records_the_rule_and_old_backups_read_as_crc32() -> None:
    entry = PartitionEntry(0, member_name(0), 5, 1, 4096, "0" * 64)
    m = Manifest("c", 1, "1", "2026-01-01T00:00:00Z", (entry,), key_rule="hashtag")
    doc = m.to_json()
    assert doc["key_rule"] == "hashtag"
    assert Manifest.from_json(doc) == m
    del doc["key_rule"]  # as a backup from before hash tags
    assert Manifest.from_json(doc).key_rule == "crc32"
    with pytest.raises(BackupFileError, match="key_rule 'x' is not one of"):
        Manifest.from_json({**doc, "key_rule": "x"})
