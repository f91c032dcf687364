"""A node refuses to start on bad config or a corrupt WAL, naming the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from prkdb.raft import Entry, HardState
from prkdb.server.main import cli
from prkdb.storage import WriteAheadLog
from tests.integration.cluster import free_ports


def test_bad_config_is_refused_with_the_key_named(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[raft]\nelection_ticks = 1\n")
    result = CliRunner().invoke(cli, ["serve", "--config", str(cfg)])
    assert result.exit_code == 1
    assert "raft.election_ticks = 1 must be > raft.heartbeat_ticks = 2" in result.output
    assert str(cfg) in result.output


def test_bad_override_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "--client-listen", "nonsense"])
    assert result.exit_code == 1
    assert "--client-listen = 'nonsense' must be host:port" in result.output


def test_corrupt_wal_stops_the_node_naming_file_and_offset(tmp_path: Path) -> None:
    data = tmp_path / "data"
    wal = WriteAheadLog.open(data / "wal", segment_size=1 << 20)
    payload = b"x" * 1000
    for i in range(1, 3001):  # ~3 MB: several 1 MiB segments
        wal.append_entries(0, [Entry(1, i, data=payload)])
    wal.append_hard_state(0, HardState(1, 1, 3000))
    wal.sync()
    wal.close()
    first = sorted((data / "wal").iterdir())[0]
    raw = bytearray(first.read_bytes())
    raw[5000] ^= 0x40  # a bit flip well inside a non-last segment
    first.write_bytes(bytes(raw))
    cfg = tmp_path / "node.toml"
    cport, pport = free_ports(2)
    cfg.write_text(
        f'[node]\ndata_dir = "{data}"\n[storage]\nsegment_size = 1048576\n'
        f'[[peers]]\nid = 1\nclient = "127.0.0.1:{cport}"\npeer = "127.0.0.1:{pport}"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "prkdb", "serve", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert first.name in proc.stderr
    assert "offset" in proc.stderr
