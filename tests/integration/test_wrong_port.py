"""Port mix-ups say what they are: a seed that speaks HTTP, an HTTP client at a
PrkDB port, a listen address that is taken."""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

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
