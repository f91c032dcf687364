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
    auth = {"enabled": True, "root_password_file": "root.pw"}
    assert exposure_refusal(_cfg("0.0.0.0:7001", tls=tls, auth=auth)) is None
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


# -- prkdb dev --secure ---------------------------------------------------------------

def test_secure_dev_files_are_made_once_and_configs_validate(tmp_path: Path) -> None:
    from prkdb.security.devsecure import secure_dev_cluster
    from prkdb.server.main import dev_configs

    data = tmp_path / "data"
    paths = dict(enumerate(dev_configs(3, 18400, data, 4), start=1))
    made = secure_dev_cluster(data, paths)
    for i, path in paths.items():
        cfg = NodeConfig.from_toml(path)
        assert cfg.tls.enabled and cfg.auth.enabled
        assert Path(cfg.tls.cert_file) == made.node_certs[i].cert_file
        assert exposure_refusal(cfg) is None
    assert made.password_file.stat().st_mode & 0o777 == 0o600
    assert (made.node_certs[1].key_file.stat().st_mode & 0o777) == 0o600
    password, ca = made.password_file.read_text(), made.ca_file.read_bytes()
    cmd = made.prkctl_command("127.0.0.1:18400")
    assert f"--cacert {made.ca_file}" in cmd and "--user root" in cmd
    assert f"--password-file {made.password_file}" in cmd
    # A restart keeps them (the printed command stays valid) ...
    again = secure_dev_cluster(data, dict(enumerate(dev_configs(3, 18400, data, 4), start=1)))
    assert again.password_file.read_text() == password and again.ca_file.read_bytes() == ca
    # ... unless one is gone: then the certificates are made anew (the password is kept).
    made.node_certs[2].key_file.unlink()
    third = secure_dev_cluster(data, dict(enumerate(dev_configs(3, 18400, data, 4), start=1)))
    assert third.ca_file.read_bytes() != ca and third.password_file.read_text() == password


@pytest.mark.slow
def test_dev_secure_serves_tls_only(tmp_path: Path) -> None:
    import signal
    import time

    from prkdb.client import SyncClient
    from prkdb.client.security import TlsOptions
    from prkdb.errors import TlsError
    from tests.integration.cluster import free_ports

    port = free_ports(1)[0]
    data = tmp_path / "data"
    out = (tmp_path / "out.txt").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "prkdb", "dev", "--secure", "--nodes", "1",
                             "--port", str(port), "--data-dir", str(data),
                             "--restart-delay", "0"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "try:" not in (tmp_path / "out.txt").read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        banner = (tmp_path / "out.txt").read_text()
        assert f"--cacert {data / 'secure' / 'ca.crt'}" in banner
        seeds = [f"127.0.0.1:{port}"]
        tls = TlsOptions(str(data / "secure" / "ca.crt"))
        while True:  # the node is up once its Status answers over TLS
            try:
                with SyncClient(seeds, tls=tls, timeout=2):
                    break
            except TlsError:
                raise
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        with pytest.raises(TlsError, match="the server expects TLS"):
            SyncClient(seeds, timeout=2)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        out.close()


def test_serve_names_an_unusable_certificate(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\ndata_dir = "data"\n\n[tls]\ncert_file = "missing.crt"\n'
                   'key_file = "missing.key"\n')
    from tests.integration.cluster import free_ports

    client, peer = free_ports(2)
    out = subprocess.run([sys.executable, "-m", "prkdb", "serve", "--config", str(cfg),
                          "--client-listen", f"127.0.0.1:{client}",
                          "--peer-listen", f"127.0.0.1:{peer}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert "refused to start" in out.stderr and "no such file" in out.stderr
    assert "missing.crt" in out.stderr
