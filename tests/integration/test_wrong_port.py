"""Port mix-ups say what they are: a seed that speaks HTTP, an HTTP client at a
PrkDB port, a listen address that is taken."""

from __future__ import annotations

import http.client
import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from prkdb.config import NodeConfig
from prkdb.server.listen import ListenError, bind_addresses, open_listeners
from tests.integration.cluster import LocalCluster
from tests.prkctl.helpers import invoke


class _StrictHttp(http.server.BaseHTTPRequestHandler):
    """An HTTP server that answers 400 at once to bytes that cannot start a request.

    nginx and Node's parser do this on the first byte that is not a method
    character; Python's http.server would wait for a whole line, which a PrkDB
    hello never holds, and the client would only see a timeout.
    """

    def handle_one_request(self) -> None:
        first = self.rfile.peek(1)[:1]
        if first and not first.isalpha():
            self.wfile.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
            self.close_connection = True
            return
        super().handle_one_request()

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StrictHttp)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


@pytest.mark.parametrize("args", [["status"], ["get", "k"], ["put", "k", "v"]])
def test_seed_that_speaks_http_is_named(http_port: int, args: list[str]) -> None:
    # Was: "RemoteProtocolError: frame length 1213486160 exceeds max_frame (16777216)".
    addr = f"127.0.0.1:{http_port}"
    res = invoke([addr], *args, timeout=3.0)
    assert res.exit_code == 1, res.output
    assert res.stderr.count("\n") == 1, res.stderr
    assert addr in res.stderr and "answered HTTP, not the PrkDB protocol" in res.stderr
    assert "1213486160" not in res.stderr


@pytest.mark.slow
def test_http_request_at_prkdb_ports_gets_a_400_and_one_warning(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, 1, partitions=1)
    try:
        c.start_all()
        c.wait_ready()
        for port, kind in ((c.client_ports[0], "client"), (c.peer_ports[0], "peer")):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v3/kv/range")
            local = conn.sock.getsockname()[1]
            resp = conn.getresponse()
            body = resp.read().decode()
            conn.close()
            assert resp.status == 400
            assert f"This is a PrkDB {kind} port" in body and "not HTTP" in body
            assert c.wait_for_log(1, f"http_on_{kind}_port", timeout=5), c.log(1)[-2000:]
            line = next(x for x in c.log(1).splitlines() if f"http_on_{kind}_port" in x)
            assert f"127.0.0.1:{local}" in line
        assert c.status(1).node_id == 1  # still serving
    finally:
        c.close()


@pytest.mark.parametrize("kind", ["client", "peer"])
def test_serve_with_a_taken_port_fails_first_in_one_line(tmp_path: Path, kind: str) -> None:
    # Was: ~25 log lines, a data dir and a 64 MiB WAL, then "[Errno 98] Address
    # already in use" without the address or the setting.
    c = LocalCluster(tmp_path, 1, partitions=1)
    port = (c.client_ports if kind == "client" else c.peer_ports)[0]
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        conf = tmp_path / "node1.toml"
        res = subprocess.run([sys.executable, "-m", "prkdb", "serve", "--config", str(conf)],
                             capture_output=True, text=True, timeout=60)
    finally:
        holder.close()
    assert res.returncode == 2, res
    assert res.stdout == ""
    assert res.stderr == (
        f"prkdb: node 1 refused to start: cannot listen on 127.0.0.1:{port} "
        f"(peers[id=1].{kind} in {conf} / --{kind}-listen): address already in use; "
        "is another prkdb running?\n"
    )
    assert not (tmp_path / "data1").exists()


def test_two_nodes_binding_at_once_the_second_fails_at_listen(tmp_path: Path) -> None:
    # SO_REUSEADDR lets two sockets bind one address while neither listens;
    # the loser of that race gets the same one-line error at listen().
    LocalCluster(tmp_path, 1, partitions=1)
    cfg = NodeConfig.from_toml(tmp_path / "node1.toml")
    first, second = bind_addresses(cfg), bind_addresses(cfg)

    async def main() -> None:
        listeners = open_listeners(first.client, first.client_what)
        with pytest.raises(ListenError, match=r"on 127\.0\.0\.1:\d+ .*already in use"):
            open_listeners(second.client, second.client_what)
        for lst in listeners:
            await lst.aclose()

    try:
        trio.run(main)
    finally:
        first.close()
        second.close()
