"""The deployment files in conf/: they parse, they say what the code does."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from prkdb.config import (
    AuthSettings,
    LimitSettings,
    NodeConfig,
    RaftSettings,
    StorageSettings,
    TlsSettings,
)

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_prkdb_toml_is_exactly_the_defaults() -> None:
    cfg = NodeConfig.from_toml(CONF / "prkdb.toml")
    assert cfg.replace(source="<defaults>") == NodeConfig.default()


def test_prkdb_toml_lists_and_comments_every_setting() -> None:
    text = (CONF / "prkdb.toml").read_text()
    raw = tomllib.loads(text)
    sections = {"raft": RaftSettings, "storage": StorageSettings, "limits": LimitSettings,
                "tls": TlsSettings, "auth": AuthSettings}
    for name, cls in sections.items():
        assert set(raw[name]) == {f.name for f in dataclasses.fields(cls)}, name
    assert set(raw["node"]) == {"id", "cluster_id", "data_dir", "insecure"}
    assert set(raw["cluster"]) == {"partitions"} and set(raw["log"]) == {"format", "level"}
    assert raw["peers"] and set(raw["peers"][0]) == {"id", "client", "peer"}
    in_peers = False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("["):
            in_peers = line == "[[peers]]"  # peer entries are explained once, above them
        elif "=" in line and not line.startswith("#") and not in_peers:
            assert lines[i - 1].startswith("#"), f"conf/prkdb.toml:{i + 1} {line!r} uncommented"


def test_cluster_3_configs() -> None:
    cfgs = [NodeConfig.from_toml(CONF / "cluster-3" / f"node{i}.toml") for i in (1, 2, 3)]
    assert [c.node_id for c in cfgs] == [1, 2, 3]
    assert len({c.peers for c in cfgs}) == 1 and len({c.cluster_id for c in cfgs}) == 1
    assert len({c.data_dir for c in cfgs}) == 3
    peers = cfgs[0].peers
    assert [p.client_addr for p in peers] == [f"127.0.0.1:{8080 + i}" for i in range(3)]
    assert [p.peer_addr for p in peers] == [f"127.0.0.1:{8180 + i}" for i in range(3)]


UNIT = CONF / "prkdb@.service"


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_unit_has_the_required_settings() -> None:
    s = unit_settings()
    expect = {
        "Type": "notify",
        "ExecStart": "/usr/local/bin/prkdb serve --config /etc/prkdb/%i.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",  # reloads the TLS certificates
        "Restart": "on-failure",
        "TimeoutStopSec": "30",
        "LimitNOFILE": "65536",
        "User": "prkdb",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/prkdb",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }
    for key, value in expect.items():
        assert s.get(key) == [value], key


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed in this environment")
    # verify insists that ExecStart exists; point it at a stand-in executable.
    exe = tmp_path / "prkdb"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    unit = tmp_path / "prkdb@.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/prkdb", str(exe)))
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and "Failed to" in r.stderr and "bus" in r.stderr.lower():
        pytest.skip(f"systemd-analyze cannot run here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr
    assert "prkdb@" not in r.stderr, r.stderr  # no warnings about our unit
