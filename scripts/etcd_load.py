"""A minimal etcd v3 client for benchmarks: HTTP/1.1 keep-alive over trio sockets.

etcd serves a JSON gateway (grpc-gateway) on its client port: ``POST
/v3/kv/put``, ``/v3/kv/range``, ``/v3/kv/txn``, ``/v3/maintenance/status``
with base64 keys and values. One `EtcdHttp` is one TCP connection carrying
one request at a time (HTTP/1.1, no pipelining), so a closed-loop client is
one `EtcdHttp`. No dependency beyond trio; used by scripts/bench_compare.py.
With ``ca_file`` it speaks HTTPS, through the same `TlsStream` as the PrkDB
SDK (prkdb/security/stream.py), so both systems' clients pay the same for TLS.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
from typing import Any

import trio

from prkdb.security.stream import TlsStream


class EtcdError(Exception):
    """A failed request: connection trouble, a non-200 answer, or a gateway error body."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.removeprefix("http://").rpartition(":")
    return host, int(port)


class EtcdHttp:
    """One keep-alive HTTP/1.1 connection to one etcd endpoint ("127.0.0.1:2379")."""

    def __init__(self, endpoint: str, ca_file: str = "") -> None:
        self.endpoint = endpoint
        self.host, self.port = split_endpoint(endpoint)
        self._stream: trio.abc.Stream | None = None
        self._socket: trio.SocketStream | None = None
        self._buf = bytearray()
        self._tls = ssl.create_default_context(cafile=ca_file) if ca_file else None

    async def connect(self) -> None:
        if self._stream is None:
            try:
                stream = await trio.open_tcp_stream(self.host, self.port)
            except OSError as e:
                raise EtcdError(f"connect {self.endpoint}: {e}") from e
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socket = stream
            self._stream = stream
            if self._tls is not None:
                tls = TlsStream(stream, self._tls, server_side=False, server_hostname=self.host)
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as e:
                    stream.socket.close()
                    self._stream = self._socket = None
                    raise EtcdError(f"TLS with {self.endpoint}: {e}") from e
                self._stream = tls
            self._buf.clear()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.socket.close()
            self._stream = self._socket = None

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream, self._socket = self._stream, None, None
            await stream.aclose()

    async def _fill(self) -> None:
        assert self._stream is not None
        data = await self._stream.receive_some(65536)
        if not data:
            raise EtcdError(f"{self.endpoint} closed the connection")
        self._buf += data

    async def post(self, path: str, body: dict) -> dict:
        """POST a JSON body, return the decoded JSON answer (EtcdError unless 200)."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.endpoint}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        await self.connect()
        assert self._stream is not None
        try:
            await self._stream.send_all(head + payload)
            status, data = await self._read_response()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, EtcdError) as e:
            self.close()
            raise EtcdError(f"{self.endpoint}: {e}") from e
        if status != 200:
            raise EtcdError(f"{self.endpoint}{path}: HTTP {status}: {data[:200]!r}")
        answer = json.loads(data)
        if "error" in answer:  # older gateways answer 200 with an error body
            raise EtcdError(f"{self.endpoint}{path}: {answer['error']}")
        return answer

    async def _read_response(self) -> tuple[int, bytes]:
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        header = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        status = int(header[0].split(" ", 2)[1])
        fields = {}
        for line in header[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if fields.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                while (eol := self._buf.find(b"\r\n")) < 0:
                    await self._fill()
                size = int(bytes(self._buf[:eol]).split(b";")[0], 16)
                del self._buf[: eol + 2]
                while len(self._buf) < size + 2:
                    await self._fill()
                body += self._buf[:size]
                del self._buf[: size + 2]
                if size == 0:
                    return status, bytes(body)
        length = int(fields.get("content-length", "0"))
        while len(self._buf) < length:
            await self._fill()
        body = bytes(self._buf[:length])
        del self._buf[:length]
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, body

    # --- the etcd calls the benchmark uses ----------------------------------------------

    async def put(self, key: bytes, value: bytes) -> None:
        await self.post("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    async def get(self, key: bytes, *, serializable: bool = False) -> bytes | None:
        body: dict = {"key": b64(key)}
        if serializable:
            body["serializable"] = True
        answer = await self.post("/v3/kv/range", body)
        kvs = answer.get("kvs")
        if not kvs:
            return None
        return base64.b64decode(kvs[0].get("value", ""))

    async def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """Several puts in one transaction (etcd's default --max-txn-ops is 128)."""
        ops = [{"requestPut": {"key": b64(k), "value": b64(v)}} for k, v in items]
        await self.post("/v3/kv/txn", {"success": ops})

    async def range(self, start: bytes, end: bytes) -> list[tuple[bytes, bytes]]:
        """Every key in [start, end) with its value (linearizable), decoded as a client would."""
        answer = await self.post("/v3/kv/range", {"key": b64(start), "range_end": b64(end)})
        return [(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", "")))
                for kv in answer.get("kvs", ())]

    async def lease_grant(self, ttl: int) -> int:
        answer = await self.post("/v3/lease/grant", {"TTL": ttl})
        return int(answer["ID"])

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew one lease (the gateway's keepalive: one id per request); the TTL left."""
        answer = await self.post("/v3/lease/keepalive", {"ID": lease_id})
        result = answer.get("result", answer)
        if "TTL" not in result:
            raise EtcdError(f"{self.endpoint}: lease {lease_id} not found: {answer}")
        return int(result["TTL"])

    async def watch_events(self, start: bytes, end: bytes, on_events: Any) -> None:
        """Watch [start, end) until cancelled: ``on_events(n)`` per message with n events.

        The gateway's /v3/watch answers one chunked HTTP response carrying one
        JSON object per line for as long as the watch lives; this connection
        is used for nothing else afterwards.
        """
        body = {"create_request": {"key": b64(start), "range_end": b64(end)}}
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"POST /v3/watch HTTP/1.1\r\nHost: {self.endpoint}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        await self.connect()
        assert self._stream is not None
        await self._stream.send_all(head + payload)
        while (end_of_head := self._buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        del self._buf[: end_of_head + 4]
        pending = bytearray()
        while True:  # chunked: "<hex size>\r\n<data>\r\n", JSON objects split by newlines
            while (eol := self._buf.find(b"\r\n")) < 0:
                await self._fill()
            size = int(bytes(self._buf[:eol]).split(b";")[0], 16)
            del self._buf[: eol + 2]
            while len(self._buf) < size + 2:
                await self._fill()
            pending += self._buf[:size]
            del self._buf[: size + 2]
            if size == 0:
                raise EtcdError(f"{self.endpoint}: the watch stream ended")
            *lines, rest = pending.split(b"\n")
            pending = bytearray(rest)
            for line in lines:
                if line.strip():
                    msg = json.loads(line)
                    on_events(len(msg.get("result", {}).get("events", ())))

    async def status(self) -> dict:
        """/v3/maintenance/status: header.member_id, leader, raftIndex, ... (ids as strings)."""
        return await self.post("/v3/maintenance/status", {})
