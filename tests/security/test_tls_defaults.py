"""Safe defaults: `prkdb serve` refuses a non-loopback listener without TLS and auth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from prkdb.config import NodeConfig
from prkdb.server.listen import exposure, exposure_refusal


def _cfg(client: str, peer: str = "127.0.0.1:7101", **sections: dict) -> NodeConfig:
    return NodeConfig.from_dict({
        "peers": [{"id": 1, "client": client, "peer": peer}], **sections})


@pytest.mark.parametrize("addr", ["127.0.0.1:7001", "localhost:7001", "[::1]:7001"])
def test_loopback_needs_nothing(addr: str) -> None:
    assert exposure(_cfg(addr)) == [] and exposure_refusal(_cfg(addr)) is None


def test_a_reachable_listener_needs_tls_and_auth_or_insecure(tmp_path: Path) -> None:
    bare = _cfg("0.0.0.0:7001")
    why = exposure_refusal(bare)
    assert why is not None
    assert "0.0.0.0:7001" in why and "without TLS ([tls]) and auth ([auth] enabled)" in why
    assert exposure(_cfg("127.0.0.1:7001", peer="0.0.0.0:7101"))  # the peer port counts
    tls = {"cert_file": "n.crt", "key_file": "n.key"}
    only_tls = _cfg("0.0.0.0:7001", tls=tls)
    assert "without auth ([auth] enabled)" in (exposure_refusal(only_tls) or "")
    assert exposure_refusal(_cfg("0.0.0.0:7001", tls=tls, auth={"enabled": True})) is None
    assert exposure_refusal(_cfg("0.0.0.0:7001", node={"insecure": True})) is None


def test_serve_refuses_before_touching_anything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = subprocess.run(
        [sys.executable, "-m", "prkdb", "serve", "--client-listen", "0.0.0.0:7999",
         "--data-dir", str(data)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "refused to start: it would listen on 0.0.0.0:7999" in out.stderr
    assert "[node] insecure = true" in out.stderr
    assert not data.exists()
