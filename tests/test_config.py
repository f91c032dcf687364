"""Config parsing: every error names the file, the key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from prkdb.config import ConfigError, NodeConfig

PEERS3 = """
[[peers]]
id = 1
client = "127.0.0.1:8080"
peer = "127.0.0.1:8180"
[[peers]]
id = 2
client = "127.0.0.1:8081"
peer = "127.0.0.1:8181"
[[peers]]
id = 3
client = "127.0.0.1:8082"
peer = "127.0.0.1:8182"
"""


def _load(tmp_path: Path, text: str) -> NodeConfig:
    p = tmp_path / "node.toml"
    p.write_text(text)
    return NodeConfig.from_toml(p)


def test_defaults_are_a_single_node_cluster() -> None:
    cfg = NodeConfig.default().validate()
    assert cfg.me.client_addr == "127.0.0.1:8080"
    assert cfg.partitions == 8
    assert (cfg.raft.tick_ms, cfg.raft.heartbeat_ticks, cfg.raft.election_ticks) == (50, 2, 10)
    assert cfg.raft.snapshot_entries == 10_000
    assert not cfg.storage.unsafe_no_fsync


def test_three_node_config_parses(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[node]\nid = 2\ncluster_id = "c"\n[raft]\ntick_ms = 20\n' + PEERS3)
    assert cfg.node_id == 2 and cfg.voter_ids == (1, 2, 3)
    assert cfg.me.peer_addr == "127.0.0.1:8181"
    assert cfg.raft.tick_ms == 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[raft]\nelection_ticks = 2\nheartbeat_ticks = 2\n",
         "raft.election_ticks = 2 must be > raft.heartbeat_ticks = 2"),
        ("[raft]\ntick_ms = 0\n", "raft.tick_ms = 0 must be > 0"),
        ("[raft]\ntick_ms = \"fast\"\n", "raft.tick_ms = 'fast' must be of type int"),
        ("[raft]\nbogus = 1\n", "unknown key raft.bogus"),
        ("[nodee]\nid = 1\n", "unknown key nodee"),
        ("[node]\nid = 0\n", "node.id = 0 must be >= 1"),
        ("[node]\nid = 4\n" + PEERS3, "node.id = 4 is not in [[peers]]"),
        ("[cluster]\npartitions = 0\n", "cluster.partitions = 0 must be >= 1"),
        ("[log]\nformat = \"xml\"\n", "log.format = 'xml' must be json or console"),
        ("[[peers]]\nid = 1\nclient = \"nowhere\"\npeer = \"127.0.0.1:1\"\n",
         "peers[id=1].client = 'nowhere' must be host:port"),
        ("[[peers]]\nid = 1\nclient = \"127.0.0.1:1\"\n", "peers[0].peer is required"),
        (PEERS3.replace("id = 3", "id = 2"), "duplicate ids"),
        (PEERS3.replace("8182", "8181"), "reuse an address"),
        ("[storage]\nsegment_size = 10\n", "storage.segment_size = 10 must be >= 1048576"),
        ("this is = not toml [", "not valid TOML"),
        ("[auth]\nenabled = true\n", "auth.enabled = true needs auth.root_password_file"),
        ("[auth]\ntoken_ttl_s = 0\n", "auth.token_ttl_s = 0 must be in 1..604800"),
        ("[auth]\nfailed_logins_per_minute = 0\n",
         "auth.failed_logins_per_minute = 0 must be >= 1"),
    ],
)
def test_bad_configs_name_file_key_and_value(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert message in str(err.value)
    assert str(tmp_path / "node.toml") in str(err.value)


def test_two_node_cluster_is_refused(tmp_path: Path) -> None:
    two = PEERS3.split("[[peers]]\nid = 3")[0]
    with pytest.raises(ConfigError, match="1, 3, 5 or 7 nodes"):
        _load(tmp_path, two)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        NodeConfig.from_toml(tmp_path / "absent.toml")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "")
    assert cfg.voter_ids == (1,) and cfg.me.client_addr == "127.0.0.1:8080"
