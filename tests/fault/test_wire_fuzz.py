"""Scenario 6: >= 10,000 random and mutated frames at a live node (127.0.0.1).

The node must stay up, its RSS must stay bounded, and a well-formed client
must keep being served throughout. Both client and peer ports are fuzzed
(a peer connection that says hello as a peer and then sends garbage).
"""

from __future__ import annotations

import random
import socket
import struct
from pathlib import Path

import pytest

from prkdb.client import ReadConsistency, SyncClient
from prkdb.wire import PROTOCOL_VERSION, encode_frame, to_wire
from prkdb.wire.messages import (
    Cas,
    Delete,
    Get,
    Hello,
    Put,
    RaftBatch,
    Status,
)
from prkdb.wire.messages import (
    ReadConsistency as RC,
)
from tests.integration.cluster import CLUSTER_ID, LocalCluster

pytestmark = pytest.mark.slow

FRAMES = 12_000
PER_CONNECTION = (1, 2, 4, 40)  # frames per connection: most get parsed before a close
HEALTH_EVERY = 500  # frames between well-formed client checks
RSS_GROWTH_LIMIT_KIB = 64 * 1024


def _valid_messages(rng: random.Random) -> list[object]:
    key = b"fz-%d" % rng.randrange(100)
    return [
        Hello(PROTOCOL_VERSION, CLUSTER_ID, "client", 0),
        Put(rng.randrange(1 << 20), key, rng.randbytes(rng.randrange(64)), rng.randrange(1, 99), 1),
        Get(rng.randrange(1 << 20), key, RC.STALE, rng.randrange(4)),
        Delete(rng.randrange(1 << 20), key, 5, rng.randrange(1, 9)),
        Cas(rng.randrange(1 << 20), key, b"x", None, b"y", 6, rng.randrange(1, 9)),
        Status(rng.randrange(1 << 20)),
    ]


def _random_cbor(rng: random.Random, depth: int = 0) -> object:
    choices = [
        lambda: rng.randrange(-(1 << 70), 1 << 70),
        lambda: rng.randbytes(rng.randrange(40)),
        lambda: "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(12))),
        lambda: rng.random(),
        lambda: None,
        lambda: rng.choice([True, False]),
    ]
    if depth < 3:
        choices += [
            lambda: [_random_cbor(rng, depth + 1) for _ in range(rng.randrange(6))],
            lambda: {rng.randrange(20): _random_cbor(rng, depth + 1) for _ in range(3)},
        ]
    return rng.choice(choices)()


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        elif op == 3 and len(b) > 1:
            del b[rng.randrange(len(b))]
        elif b:
            del b[rng.randrange(len(b)):]
    return bytes(b)


def _frame(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["valid", "mutated", "mutated", "cbor", "cbor-msg", "bytes", "length"])
    if kind == "valid":
        return kind, encode_frame(to_wire(rng.choice(_valid_messages(rng))))
    if kind == "mutated":
        return kind, _mutate(rng, encode_frame(to_wire(rng.choice(_valid_messages(rng)))))
    if kind == "cbor":
        return kind, encode_frame(_random_cbor(rng))
    if kind == "cbor-msg":  # a known type id with random fields
        body = [rng.randrange(40)] + [_random_cbor(rng) for _ in range(rng.randrange(8))]
        return kind, encode_frame(body)
    if kind == "bytes":
        body = rng.randbytes(rng.randrange(200))
        return kind, struct.pack(">I", len(body)) + body
    length = rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 17 * 1024 * 1024, rng.randrange(1 << 32)])
    return kind, struct.pack(">I", length) + rng.randbytes(rng.randrange(16))


def _blast(port: int, payload: bytes) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(0.5)
            while s.recv(65536):
                pass
    except OSError:
        pass  # reset / closed by the node: expected for garbage


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_wire_fuzzing_keeps_node_up_and_serving(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    c = LocalCluster(tmp_path, 3, partitions=4)
    try:
        c.start_all()
        c.wait_ready()
        target = 1
        pid = c.procs[target].pid
        cport, pport = c.client_ports[target - 1], c.peer_ports[target - 1]
        kinds: dict[str, int] = {}
        with SyncClient(c.seeds, cluster_id=CLUSTER_ID, timeout=10) as db:
            db.put(b"warm", b"up")
            rss_before = _rss_kib(pid)
            sent = 0
            served = 0
            connections = 0
            while sent < FRAMES:
                peer = rng.random() < 0.2
                hello = (
                    Hello(PROTOCOL_VERSION, CLUSTER_ID, "peer", rng.choice([2, 3]))
                    if peer
                    else Hello(PROTOCOL_VERSION, CLUSTER_ID, "client", 0)
                )
                parts = [encode_frame(to_wire(hello))] if rng.random() < 0.8 else []
                count = rng.choice(PER_CONNECTION)
                for _ in range(count):
                    if peer and rng.random() < 0.3:
                        batch = RaftBatch(rng.choice([2, 3]), ())
                        data = _mutate(rng, encode_frame(to_wire(batch)))
                        kind = "raft-mutated"
                    else:
                        kind, data = _frame(rng)
                    kinds[kind] = kinds.get(kind, 0) + 1
                    parts.append(data)
                before, sent = sent, sent + count
                connections += 1
                _blast(pport if peer else cport, b"".join(parts))
                if sent // HEALTH_EVERY != before // HEALTH_EVERY:
                    assert c.alive(target), c.log(target)[-3000:]
                    key = b"alive-%d" % sent
                    db.put(key, b"ok")
                    assert db.get(key) == b"ok"
                    assert c.status(target).node_id == target
                    served += 1
            assert c.alive(target), c.log(target)[-3000:]
            db.put(b"after", b"fuzz")
            assert db.get_with_consistency(b"after", ReadConsistency.FOLLOWER) == b"fuzz"
            rss_after = _rss_kib(pid)
        print(f"\nseed {seed}: {sent} frames on {connections} connections {kinds}; "
              f"{served} health checks; "
              f"RSS {rss_before} -> {rss_after} KiB")
        assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB, (rss_before, rss_after)
    finally:
        c.close()
