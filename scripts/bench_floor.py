#!/usr/bin/env python3
"""What a minimal Python+trio 3-replica quorum write costs on this machine.

Our database cannot be faster than this. The script builds a *replication
skeleton* -- the thinnest honest "replicated write" in Python with trio, with
no Raft, no CBOR, no state machine -- and measures it with the same closed-loop
workloads as scripts/bench_compare.py, next to the physical floor of the box.
It is evidence for design decisions: if the skeleton itself misses a target,
no design of PrkDB in Python+trio on this machine can meet it.

Skeleton (three processes spawned by this script, all on 127.0.0.1):
  * each replica appends to its own preallocated 64 MiB log file with
    os.pwrite and makes it durable with os.fdatasync (the same durable work a
    real quorum write needs);
  * replica 1 is the leader; clients send it frames (4-byte big-endian length +
    8-byte request id + 16-byte key + 100-byte value);
  * per pass of its loop the leader takes every request that arrived, appends
    the batch to its log, sends ONE frame per follower (one persistent TCP
    connection each), then fdatasyncs its own file;
  * a follower appends every batch it has read, fdatasyncs, and acks the
    highest sequence number;
  * a request is answered only once the leader's own fdatasync AND at least
    one follower's ack cover it (a majority of 3).
  trio everywhere: a reader task per connection and one loop task that does
  the batching. `--loop selectors` runs the same replicas on the stdlib
  `selectors` module instead, to show what trio itself costs (`both` runs the
  two alternately; the load generator is trio in all cases).

Workloads (closed loop: each client sends one request, waits for the reply):
  W1  = 1 client;  W64 = 64 clients in 2 load-generator processes of 32 trio
  tasks, each client with its own TCP connection. 1 s warm-up, then a measured
  window of --duration seconds; ops/s, exact p50/p99 latency, and server CPU
  µs per op (utime+stime of the 3 replicas from /proc/PID/stat over the window).

Physical floor (same run, same temp dir): p50 of ~1000 x (128-byte pwrite +
fdatasync) on a preallocated file, plus 2 x the p50 of a 64-byte loopback TCP
ping-pong with plain blocking sockets between two processes.

Correctness is checked at the end of every cluster: replies counted by the
clients == requests the leader acknowledged, each acknowledged request covered
by the leader's fdatasync and a follower's durable ack, and each follower's
log a byte-for-byte prefix of the leader's.

Everything it starts is killed (by PID) and its temp dir removed on exit, on
error and on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

LOG_SIZE = 64 * 1024 * 1024
KEY_SIZE = 16
VALUE_SIZE = 100
RECV_SIZE = 256 * 1024
LEN = struct.Struct(">I")  # frame header: payload length
U64 = struct.Struct(">Q")  # request ids and sequence numbers
REQUEST_SIZE = U64.size + KEY_SIZE + VALUE_SIZE  # request id + key + value
RECORD_SIZE = U64.size + KEY_SIZE + VALUE_SIZE  # log record: seq + key + value


# --------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------


def split_frames(buf: bytearray) -> list[bytes]:
    """Remove and return every complete frame's payload at the front of buf."""
    out = []
    pos = 0
    end = len(buf)
    while end - pos >= LEN.size:
        (size,) = LEN.unpack_from(buf, pos)
        if end - pos - LEN.size < size:
            break
        out.append(bytes(buf[pos + LEN.size : pos + LEN.size + size]))
        pos += LEN.size + size
    if pos:
        del buf[:pos]
    return out


class PreallocatedLog:
    """An append-only log in a file preallocated with posix_fallocate.

    Appends are pwrites at the current end; when a batch does not fit the file
    it starts again at offset 0 (a ring, so long runs never grow the file; the
    leader and the followers wrap at the same batches, so their files stay
    identical).
    """

    def __init__(self, path: Path, size: int = LOG_SIZE) -> None:
        self.path = path
        self.size = size
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.posix_fallocate(self.fd, 0, size)
        os.fsync(self.fd)  # the allocation itself is not part of any measured write
        self.offset = 0
        self.wraps = 0

    def append(self, data: bytes | memoryview) -> None:
        """Write data after the last append (no durability yet)."""
        if self.offset + len(data) > self.size:
            self.offset = 0
            self.wraps += 1
        written = os.pwrite(self.fd, data, self.offset)
        if written != len(data):
            raise OSError(f"short pwrite: {written} of {len(data)} bytes")
        self.offset += written

    def sync(self) -> None:
        """Make every append so far durable."""
        os.fdatasync(self.fd)

    def close(self) -> None:
        """Close the file (it stays on disk for the parent's prefix check)."""
        os.close(self.fd)


class Wakeup:
    """A level-triggered wake-up for one waiting task (trio has no auto-reset event)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        """Wake the waiter, now or at its next wait()."""
        self._event.set()

    async def wait(self) -> None:
        """Wait until set() was called since the last wait() returned."""
        await self._event.wait()
        self._event = trio.Event()


class FrameReader:
    """Reads length-prefixed frames from a trio stream, all complete ones at a time."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def frames(self) -> list[bytes]:
        """At least one frame; [] at end of stream."""
        while True:
            out = split_frames(self._buf)
            if out:
                return out
            data = await self._stream.receive_some(RECV_SIZE)
            if not data:
                return []
            self._buf += data


def frame(payload: bytes) -> bytes:
    """One frame on the wire: 4-byte big-endian length + payload."""
    return LEN.pack(len(payload)) + payload


def log_path(root: Path, replica_id: int) -> Path:
    """Where replica N keeps its log."""
    return root / f"replica-{replica_id}.log"


def ports(base: int) -> tuple[int, list[int]]:
    """The leader's client port and the followers' peer ports."""
    return base, [base + 1, base + 2]


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout, read by the parent."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------
# replicas, trio
# --------------------------------------------------------------------------


class TrioLeader:
    """The leader's state; the loop task is the only writer to every socket."""

    def __init__(self, log: PreallocatedLog, n_followers: int) -> None:
        self.log = log
        self.pending: list[tuple[trio.SocketStream, bytes]] = []
        self.inflight: deque[tuple[int, trio.SocketStream, bytes]] = deque()
        self.followers: list[trio.SocketStream] = []
        self.follower_acked = [0] * n_followers
        self.wakeup = Wakeup()
        self.next_seq = 1
        self.synced = 0
        self.stats = {
            "requests_received": 0,
            "requests_acked": 0,
            "last_acked_seq": 0,
            "batches": 0,
            "fsyncs": 0,
            "passes": 0,
            "max_batch": 0,
            "reply_sends": 0,
        }

    async def client_reader(self, stream: trio.SocketStream) -> None:
        """One task per client connection: queue its requests for the loop."""
        reader = FrameReader(stream)
        try:
            while frames := await reader.frames():
                for payload in frames:
                    if len(payload) != REQUEST_SIZE:
                        raise ValueError(f"bad request size {len(payload)}")
                    self.pending.append((stream, payload))
                self.stats["requests_received"] += len(frames)
                self.wakeup.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def follower_reader(self, index: int, stream: trio.SocketStream) -> None:
        """One task per follower connection: record its durable acks."""
        reader = FrameReader(stream)
        while frames := await reader.frames():
            for payload in frames:
                (seq,) = U64.unpack(payload)
                if seq > self.follower_acked[index]:
                    self.follower_acked[index] = seq
            self.wakeup.set()
        raise ConnectionError(f"follower {index + 2} closed its connection")

    async def run_loop(self) -> None:
        """Per pass: batch what arrived, replicate it, sync it, answer what is committed."""
        while True:
            await self.wakeup.wait()
            self.stats["passes"] += 1
            batch, self.pending = self.pending, []
            if batch:
                records = []
                for stream, payload in batch:
                    seq = self.next_seq
                    self.next_seq += 1
                    records.append(U64.pack(seq) + payload[U64.size :])
                    self.inflight.append((seq, stream, payload[: U64.size]))
                last = self.next_seq - 1
                blob = b"".join(records)
                self.log.append(blob)
                out = frame(U64.pack(last) + blob)
                for follower in self.followers:  # before our own sync: in parallel with it
                    await follower.send_all(out)
                self.log.sync()
                self.synced = last
                self.stats["batches"] += 1
                self.stats["fsyncs"] += 1
                self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))
            await self.reply_committed()

    async def reply_committed(self) -> None:
        """Answer every request covered by our sync and at least one follower's ack."""
        commit = min(self.synced, max(self.follower_acked))
        replies: dict[trio.SocketStream, list[bytes]] = {}
        while self.inflight and self.inflight[0][0] <= commit:
            seq, stream, request_id = self.inflight.popleft()
            # the invariant this benchmark is about, checked on every reply
            if seq > self.synced or not any(a >= seq for a in self.follower_acked):
                raise AssertionError(f"seq {seq} answered before it was durable on 2 of 3")
            replies.setdefault(stream, []).append(frame(request_id))
            self.stats["requests_acked"] += 1
            self.stats["last_acked_seq"] = seq
        for stream, frames in replies.items():
            self.stats["reply_sends"] += 1
            # a client that went away has nothing to be answered
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(b"".join(frames))

    def snapshot(self) -> dict[str, Any]:
        """Counters for the parent's checks."""
        return {
            **self.stats,
            "synced_seq": self.synced,
            "follower_acked": list(self.follower_acked),
            "inflight": len(self.inflight),
            "pending": len(self.pending),
            "log_offset": self.log.offset,
            "log_wraps": self.log.wraps,
        }


class TrioFollower:
    """A follower: append, sync, ack, for every chunk of batches read."""

    def __init__(self, log: PreallocatedLog) -> None:
        self.log = log
        self.durable = 0
        self.stats = {"batches": 0, "fsyncs": 0, "records": 0}

    async def serve(self, stream: trio.SocketStream) -> None:
        """The leader's connection; its batches read together share one fdatasync."""
        reader = FrameReader(stream)
        try:
            while frames := await reader.frames():
                last = self.durable
                for payload in frames:
                    (last,) = U64.unpack_from(payload)
                    self.log.append(memoryview(payload)[U64.size :])
                    self.stats["batches"] += 1
                    self.stats["records"] += (len(payload) - U64.size) // RECORD_SIZE
                self.log.sync()
                self.stats["fsyncs"] += 1
                self.durable = last
                await stream.send_all(frame(U64.pack(last)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def snapshot(self) -> dict[str, Any]:
        """Counters for the parent's checks."""
        return {
            **self.stats,
            "durable_seq": self.durable,
            "log_offset": self.log.offset,
            "log_wraps": self.log.wraps,
        }


async def connect_retry(port: int, timeout: float = 10.0) -> trio.SocketStream:
    """Connect to 127.0.0.1:port, retrying while the peer process starts."""
    deadline = trio.current_time() + timeout
    while True:
        try:
            return await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            if trio.current_time() > deadline:
                raise
            await trio.sleep(0.02)


async def exit_when_told(cancel_scope: trio.CancelScope, parent: int) -> None:
    """Stop on SIGTERM/SIGINT, or when the parent is gone (nothing is left behind)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def orphan_watch() -> None:
                while True:
                    await trio.sleep(0.5)
                    if os.getppid() != parent:
                        break
                nursery.cancel_scope.cancel()

            nursery.start_soon(orphan_watch)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    cancel_scope.cancel()


async def serve(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    port: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """trio.serve_tcp on 127.0.0.1 (nursery.start passes no keyword arguments)."""
    await trio.serve_tcp(handler, port, host="127.0.0.1", task_status=task_status)


async def trio_replica(replica_id: int, base_port: int, root: Path, parent: int) -> None:
    """Run replica N until told to stop, then print its counters."""
    client_port, peer_ports = ports(base_port)
    log = PreallocatedLog(log_path(root, replica_id))
    role: TrioLeader | TrioFollower
    async with trio.open_nursery() as nursery:
        nursery.start_soon(exit_when_told, nursery.cancel_scope, parent)
        if replica_id == 1:
            role = TrioLeader(log, len(peer_ports))
            for index, port in enumerate(peer_ports):
                stream = await connect_retry(port)
                role.followers.append(stream)
                nursery.start_soon(role.follower_reader, index, stream)
            nursery.start_soon(role.run_loop)
            await nursery.start(serve, role.client_reader, client_port)
        else:
            role = TrioFollower(log)
            await nursery.start(serve, role.serve, peer_ports[replica_id - 2])
        emit({"ready": replica_id})
    log.close()
    emit({"stats": role.snapshot(), "id": replica_id})


# --------------------------------------------------------------------------
# replicas, stdlib selectors (same algorithm, no trio)
# --------------------------------------------------------------------------


def listen(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:port."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(128)
    return srv


def nodelay(sock: socket.socket) -> socket.socket:
    """Disable Nagle, as trio does for its streams."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def selectors_replica(replica_id: int, base_port: int, root: Path, parent: int) -> None:
    """Replica N on one `selectors` loop (blocking sends: small frames on loopback)."""
    client_port, peer_ports = ports(base_port)
    log = PreallocatedLog(log_path(root, replica_id))
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sel = selectors.DefaultSelector()
    stats: dict[str, Any] = {"batches": 0, "fsyncs": 0}
    buffers: dict[socket.socket, bytearray] = {}

    def read(sock: socket.socket) -> list[bytes] | None:
        data = sock.recv(RECV_SIZE)
        if not data:
            return None
        buf = buffers[sock]
        buf += data
        return split_frames(buf)

    if replica_id == 1:
        followers = []
        for port in peer_ports:
            deadline = time.monotonic() + 10
            while True:
                try:
                    followers.append(nodelay(socket.create_connection(("127.0.0.1", port))))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        acked = [0] * len(followers)
        for index, sock in enumerate(followers):
            buffers[sock] = bytearray()
            sel.register(sock, selectors.EVENT_READ, ("follower", index))
        srv = listen(client_port)
        sel.register(srv, selectors.EVENT_READ, ("accept", 0))
        pending: list[tuple[socket.socket, bytes]] = []
        inflight: deque[tuple[int, socket.socket, bytes]] = deque()
        next_seq, synced = 1, 0
        stats.update(requests_received=0, requests_acked=0, last_acked_seq=0, max_batch=0)
        stats.update(passes=0, reply_sends=0)
        emit({"ready": replica_id})
        while not stop and os.getppid() == parent:
            for key, _mask in sel.select(timeout=0.5):
                kind, index = key.data
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if kind == "accept":
                    conn, _ = sock.accept()
                    buffers[nodelay(conn)] = bytearray()
                    sel.register(conn, selectors.EVENT_READ, ("client", 0))
                    continue
                try:
                    frames = read(sock)
                except OSError:
                    frames = None
                if frames is None:
                    if kind == "follower":
                        raise ConnectionError(f"follower {index + 2} closed its connection")
                    sel.unregister(sock)
                    del buffers[sock]
                    sock.close()
                elif kind == "client":
                    pending.extend((sock, p) for p in frames)
                    stats["requests_received"] += len(frames)
                else:
                    for payload in frames:
                        acked[index] = max(acked[index], U64.unpack(payload)[0])
            stats["passes"] += 1
            if pending:
                records = []
                for sock, payload in pending:
                    records.append(U64.pack(next_seq) + payload[U64.size :])
                    inflight.append((next_seq, sock, payload[: U64.size]))
                    next_seq += 1
                stats["max_batch"] = max(stats["max_batch"], len(pending))
                pending = []
                blob = b"".join(records)
                log.append(blob)
                out = frame(U64.pack(next_seq - 1) + blob)
                for follower in followers:
                    follower.sendall(out)
                log.sync()
                synced = next_seq - 1
                stats["batches"] += 1
                stats["fsyncs"] += 1
            commit = min(synced, max(acked))
            replies: dict[socket.socket, list[bytes]] = {}
            while inflight and inflight[0][0] <= commit:
                seq, sock, request_id = inflight.popleft()
                if seq > synced or not any(a >= seq for a in acked):
                    raise AssertionError(f"seq {seq} answered before it was durable on 2 of 3")
                replies.setdefault(sock, []).append(frame(request_id))
                stats["requests_acked"] += 1
                stats["last_acked_seq"] = seq
            for sock, frames in replies.items():
                stats["reply_sends"] += 1
                with contextlib.suppress(OSError):
                    sock.sendall(b"".join(frames))
        stats.update(synced_seq=synced, follower_acked=acked, inflight=len(inflight))
        stats["pending"] = len(pending)
    else:
        srv = listen(peer_ports[replica_id - 2])
        emit({"ready": replica_id})
        durable = 0
        stats["records"] = 0
        conn = None
        while not stop and os.getppid() == parent:
            if conn is None:
                if not sel.get_map():
                    sel.register(srv, selectors.EVENT_READ)
                if sel.select(timeout=0.5):
                    conn, _ = srv.accept()
                    buffers[nodelay(conn)] = bytearray()
                    sel.unregister(srv)
                    sel.register(conn, selectors.EVENT_READ)
                continue
            if not sel.select(timeout=0.5):
                continue
            frames = read(conn)
            if frames is None:
                break
            if not frames:
                continue
            for payload in frames:
                (durable_next,) = U64.unpack_from(payload)
                log.append(memoryview(payload)[U64.size :])
                stats["batches"] += 1
                stats["records"] += (len(payload) - U64.size) // RECORD_SIZE
            log.sync()
            stats["fsyncs"] += 1
            durable = durable_next
            conn.sendall(frame(U64.pack(durable)))
        stats["durable_seq"] = durable
    stats.update(log_offset=log.offset, log_wraps=log.wraps)
    log.close()
    emit({"stats": stats, "id": replica_id})


# --------------------------------------------------------------------------
# load generator (trio, closed loop)
# --------------------------------------------------------------------------


async def loadgen(
    clients: int, port: int, start: float, warmup: float, duration: float, client_base: int
) -> dict[str, Any]:
    """Closed-loop clients from a shared CLOCK_MONOTONIC instant; latencies in the window."""
    window_start = start + warmup
    window_end = window_start + duration
    latencies: list[int] = []
    totals = [0]
    cpu: dict[str, float] = {}
    streams = [await connect_retry(port) for _ in range(clients)]
    late = time.monotonic() > start

    async def one_client(index: int, stream: trio.SocketStream) -> None:
        reader = FrameReader(stream)
        key = f"key-{client_base + index:012d}".encode()[:KEY_SIZE].ljust(KEY_SIZE, b"k")
        value = bytes([65 + index % 26]) * VALUE_SIZE
        ws, we = int(window_start * 1e9), int(window_end * 1e9)
        request_id = 0
        while time.monotonic() < window_end:
            request_id += 1
            t0 = time.monotonic_ns()
            await stream.send_all(frame(U64.pack(request_id) + key + value))
            replies = await reader.frames()
            t1 = time.monotonic_ns()
            if replies != [U64.pack(request_id)]:
                raise AssertionError(f"replies {replies!r} for request {request_id}")
            totals[0] += 1
            if ws <= t1 < we:
                latencies.append(t1 - t0)
        await stream.aclose()

    async def cpu_probe() -> None:
        await trio.sleep(max(0.0, window_start - time.monotonic()))
        cpu["start"] = time.process_time()
        await trio.sleep(max(0.0, window_end - time.monotonic()))
        cpu["end"] = time.process_time()

    await trio.sleep(max(0.0, start - time.monotonic()))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cpu_probe)
        for index, stream in enumerate(streams):
            nursery.start_soon(one_client, index, stream)
    return {
        "latencies_ns": latencies,
        "total_replies": totals[0],
        "cpu_fraction": (cpu["end"] - cpu["start"]) / duration,
        "late_start": late,
    }


# --------------------------------------------------------------------------
# physical floor
# --------------------------------------------------------------------------


def fsync_floor(root: Path, n: int = 1000) -> float:
    """p50 seconds of one 128-byte pwrite + fdatasync on a preallocated file."""
    log = PreallocatedLog(root / "fsync-probe", size=4 * 1024 * 1024)
    samples = []
    try:
        record = b"x" * 128
        for _ in range(n):
            t0 = time.perf_counter()
            log.append(record)
            log.sync()
            samples.append(time.perf_counter() - t0)
    finally:
        log.close()
        log.path.unlink()
    return statistics.median(samples)


def loopback_rtt(n: int = 2000, cross_core: bool = False) -> float:
    """p50 seconds of a 64-byte TCP ping-pong with another process, blocking sockets.

    Unpinned, the kernel mostly keeps the two on one core (a direct hand-off);
    cross_core pins them to different CPUs, which every wake-up then crosses.
    """
    srv = listen(0)
    mine = os.sched_getaffinity(0)
    cpus = sorted(mine)
    pid = os.fork()
    if pid == 0:  # the echo process
        code = 0
        try:
            if cross_core:
                os.sched_setaffinity(0, {cpus[1]})
            conn, _ = srv.accept()
            nodelay(conn)
            while data := conn.recv(64):
                conn.sendall(data)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    samples = []
    try:
        if cross_core:
            os.sched_setaffinity(0, {cpus[0]})
        port = srv.getsockname()[1]
        srv.close()
        cli = nodelay(socket.create_connection(("127.0.0.1", port)))
        with cli:
            for i in range(n + 100):
                t0 = time.perf_counter()
                cli.sendall(b"p" * 64)
                got = 0
                while got < 64:
                    chunk = cli.recv(64 - got)
                    if not chunk:
                        raise ConnectionError("echo process died")
                    got += len(chunk)
                if i >= 100:  # 100 warm-up round trips
                    samples.append(time.perf_counter() - t0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.sched_setaffinity(0, mine)
    return statistics.median(samples)


# --------------------------------------------------------------------------
# the parent: processes, measurement, checks
# --------------------------------------------------------------------------


def percentile(sorted_values: list[int], p: float) -> float:
    """Exact nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of a process from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def progress(msg: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(msg, file=sys.stderr, flush=True)


class Children:
    """Every process we started, killed by PID in stop()."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, args: list[str]) -> subprocess.Popen[str]:
        """Start `this script ARGS` in its own session (a terminal's Ctrl-C reaches only us)."""
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self, procs: list[subprocess.Popen[str]] | None = None) -> None:
        """SIGTERM, up to 2 s grace each, then SIGKILL; only our own PIDs.

        Newest first, one at a time: the leader (started after its followers)
        stops before them, so it never sees a follower vanish.
        """
        targets = self.procs if procs is None else procs
        for proc in reversed(targets):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for proc in targets:
            if proc.stdout:
                proc.stdout.close()
        self.procs = [p for p in self.procs if p not in targets]


def read_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next JSON line a child prints, or an error if it dies or is silent."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise TimeoutError(f"child {proc.pid} said nothing for {timeout} s")
    finally:
        sel.close()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"child {proc.pid} ({proc.args[4:6]}) exited with {proc.wait()}")
    return json.loads(line)


class Cluster:
    """Three replica processes with their logs in one temp dir."""

    def __init__(self, children: Children, root: Path, port: int, loop: str) -> None:
        self.children = children
        self.root = root
        self.port = port
        self.loop = loop
        self.procs: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        """Followers first, then the leader (which connects to them); wait until ready."""
        common = ["--port", str(self.port), "--dir", str(self.root), "--loop", self.loop]
        for replica_id in (2, 3, 1):
            self.procs.append(
                self.children.spawn(["--role", "replica", "--id", str(replica_id), *common])
            )
        self.procs.sort(key=lambda p: p.args[p.args.index("--id") + 1])
        for proc in self.procs:
            read_line(proc, timeout=20)

    @property
    def pids(self) -> list[int]:
        """The three replica PIDs, leader first."""
        return [p.pid for p in self.procs]

    def stop_and_check(self, client_replies: int) -> dict[str, Any]:
        """Stop the replicas, collect their counters, check the invariants.

        The leader goes first: it treats a follower's connection closing as fatal.
        """
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"replica {proc.pid} died with {proc.returncode}")
        stats = {}
        for proc in self.procs:  # leader first
            proc.terminate()
            msg = read_line(proc, timeout=5)
            stats[msg["id"]] = msg["stats"]
            proc.wait(timeout=5)
        self.children.stop(self.procs)
        leader, f2, f3 = stats[1], stats[2], stats[3]
        problems = []
        if leader["requests_acked"] != client_replies:
            problems.append(
                f"leader acked {leader['requests_acked']}, clients got {client_replies}"
            )
        if leader["inflight"] or leader["pending"]:
            problems.append(f"leader left {leader['inflight']} in flight")
        if leader["last_acked_seq"] > leader["synced_seq"]:
            problems.append("leader answered beyond its own fdatasync")
        if leader["last_acked_seq"] > max(f2["durable_seq"], f3["durable_seq"]):
            problems.append("leader answered beyond every follower's durable seq")
        wrapped = any(s["log_wraps"] for s in stats.values())
        if not wrapped:
            with open(log_path(self.root, 1), "rb") as f:
                leader_bytes = f.read(leader["log_offset"])
            if len(leader_bytes) != leader["last_acked_seq"] * RECORD_SIZE:
                problems.append("leader log length does not match its acked records")
            for replica_id in (2, 3):
                n = stats[replica_id]["log_offset"]
                with open(log_path(self.root, replica_id), "rb") as f:
                    if f.read(n) != leader_bytes[:n]:
                        problems.append(f"replica {replica_id} log is not a prefix of the leader's")
        for replica_id in (1, 2, 3):
            log_path(self.root, replica_id).unlink()
        if problems:
            raise AssertionError("skeleton check failed: " + "; ".join(problems))
        return {"replicas": stats, "logs_compared": not wrapped}


def run_workload(
    children: Children, cluster: Cluster, name: str, procs: int, per_proc: int, args: Any
) -> dict[str, Any]:
    """One closed-loop workload against the running cluster."""
    start = time.monotonic() + 1.5  # time for the generators to start and connect
    window_start = start + args.warmup
    window_end = window_start + args.duration
    gens = []
    outs = []
    for i in range(procs):
        out = cluster.root / f"{name}-{i}.json"
        outs.append(out)
        gens.append(
            children.spawn(
                [
                    "--role", "loadgen", "--port", str(cluster.port), "--clients", str(per_proc),
                    "--start", repr(start), "--warmup", str(args.warmup),
                    "--duration", str(args.duration), "--client-base", str(i * per_proc),
                    "--out", str(out),
                ]
            )
        )  # fmt: skip
    time.sleep(max(0.0, window_start - time.monotonic()))
    cpu0 = sum(proc_cpu_seconds(pid) for pid in cluster.pids)
    time.sleep(max(0.0, window_end - time.monotonic()))
    cpu1 = sum(proc_cpu_seconds(pid) for pid in cluster.pids)
    results = []
    for gen, out in zip(gens, outs):
        code = gen.wait(timeout=args.duration + 30)
        if code != 0:
            raise RuntimeError(f"load generator {gen.pid} exited with {code}")
        results.append(json.loads(out.read_text()))
        out.unlink()
    children.stop(gens)
    latencies = sorted(x for r in results for x in r["latencies_ns"])
    ops = len(latencies)
    return {
        "ops_per_s": ops / args.duration,
        "p50_ms": percentile(latencies, 50) / 1e6,
        "p99_ms": percentile(latencies, 99) / 1e6,
        "server_cpu_us_per_op": (cpu1 - cpu0) / ops * 1e6 if ops else math.nan,
        "ops": ops,
        "total_replies": sum(r["total_replies"] for r in results),
        "loadgen_cpu_max": max(r["cpu_fraction"] for r in results),
        "late_start": any(r["late_start"] for r in results),
    }


def run_rep(children: Children, root: Path, args: Any, loop: str) -> dict[str, Any]:
    """A fresh cluster, W1 then W64, then the checks."""
    cluster = Cluster(children, root, args.port, loop)
    cluster.start()
    w1 = run_workload(children, cluster, "w1", 1, 1, args)
    progress(f"  [{loop}] W1  {w1['ops_per_s']:8.0f} ops/s  p50 {w1['p50_ms']:.3f} ms")
    w64 = run_workload(children, cluster, "w64", 2, 32, args)
    progress(f"  [{loop}] W64 {w64['ops_per_s']:8.0f} ops/s  p50 {w64['p50_ms']:.3f} ms")
    check = cluster.stop_and_check(w1["total_replies"] + w64["total_replies"])
    return {"W1": w1, "W64": w64, "check": check}


def med(values: list[float], fmt: str) -> str:
    """'median [min–max]' (just the value for a single rep)."""
    m = statistics.median(values)
    if len(values) == 1:
        return format(m, fmt)
    return f"{format(m, fmt)} [{format(min(values), fmt)}–{format(max(values), fmt)}]"


def render(reps: dict[str, list[dict[str, Any]]], floors: list[dict[str, float]]) -> str:
    """The markdown table of the run."""
    loops = list(reps)
    floor_ms = [f["floor_ms"] for f in floors]
    rows: list[tuple[str, Callable[[list[dict[str, Any]]], str]]] = []
    metrics = [
        ("W1", "ops/s", "ops_per_s", ",.0f"),
        ("W1", "p50 (ms)", "p50_ms", ".3f"),
        ("W1", "p99 (ms)", "p99_ms", ".3f"),
        ("W64", "ops/s", "ops_per_s", ",.0f"),
        ("W64", "p50 (ms)", "p50_ms", ".3f"),
        ("W64", "p99 (ms)", "p99_ms", ".3f"),
    ]
    for wl, label, key, fmt in metrics:
        rows.append((f"{wl} {label}", lambda r, w=wl, k=key, f=fmt: med([x[w][k] for x in r], f)))
    for wl in ("W1", "W64"):
        rows.append(
            (
                f"server CPU {wl} (µs/op, 3 replicas)",
                lambda r, w=wl: med([x[w]["server_cpu_us_per_op"] for x in r], ",.0f"),
            )
        )
    rows.append(
        (
            "W1 p50 / physical floor",
            lambda r: med([x["W1"]["p50_ms"] / f for x, f in zip(r, floor_ms)], ".2f") + "×",
        )
    )
    lines = [
        "| metric | " + " | ".join(f"skeleton ({lp})" for lp in loops) + " |",
        "|---|" + "---|" * len(loops),
    ]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(reps[lp]) for lp in loops) + " |")
    fs = med([f["fsync_ms"] for f in floors], ".3f")
    rtt = med([f["rtt_ms"] for f in floors], ".3f")
    lines.append(
        f"| physical floor (ms) | {med(floor_ms, '.3f')}"
        + " |" * len(loops)
        + f"\n\nphysical floor = fdatasync {fs} ms + 2 × loopback RTT {rtt} ms "
        f"(p50s, measured once per rep in this run; the ping-pong unpinned, as the skeleton "
        f"runs). The same ping-pong pinned to two different cores: RTT "
        f"{med([f['rtt_cross_ms'] for f in floors], '.3f')} ms."
    )
    return "\n".join(lines)


def parent_main(args: Any) -> int:
    """Run the reps, print the table; everything started is stopped in `finally`."""
    if args.quick:
        args.reps, args.duration = 1, 2.0
    loops = ["trio", "selectors"] if args.loop == "both" else [args.loop]
    for p in (args.port, args.port + 1, args.port + 2):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", p))
            except OSError as e:
                progress(f"port {p} is busy ({e}); pick another base with --port")
                return 2

    def on_sigterm(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    children = Children()
    root = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    reps: dict[str, list[dict[str, Any]]] = {lp: [] for lp in loops}
    floors = []
    try:
        for rep in range(args.reps):
            fs, rtt = fsync_floor(root), loopback_rtt()
            cross = loopback_rtt(cross_core=True) if len(os.sched_getaffinity(0)) > 1 else rtt
            floors.append({"fsync_ms": fs * 1e3, "rtt_ms": rtt * 1e3, "rtt_cross_ms": cross * 1e3})
            floors[-1]["floor_ms"] = (fs + 2 * rtt) * 1e3
            progress(
                f"rep {rep + 1}/{args.reps}: floor fdatasync {fs * 1e3:.3f} ms, "
                f"RTT {rtt * 1e3:.3f} ms (pinned to 2 cores {cross * 1e3:.3f} ms)"
            )
            order = loops if rep % 2 == 0 else loops[::-1]
            for loop in order:
                reps[loop].append(run_rep(children, root, args, loop))
    except KeyboardInterrupt:
        progress("interrupted; stopping everything we started")
        return 130
    finally:
        children.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(render(reps, floors))
    print()
    print(
        f"Medians over {args.reps} rep(s) [min–max]; each rep a fresh 3-replica cluster, "
        f"{args.warmup:g} s warm-up + {args.duration:g} s measured per workload."
    )
    for loop in loops:
        counters = []
        for i, r in enumerate(reps[loop]):
            s = r["check"]["replicas"]
            counters.append(
                f"rep {i + 1}: acked {s[1]['requests_acked']:,} = clients' replies, "
                f"leader {s[1]['batches']:,} batches/fsyncs "
                f"({s[1]['requests_acked'] / max(1, s[1]['batches']):.1f} req/batch, "
                f"max {s[1]['max_batch']}), followers {s[2]['fsyncs']:,}/{s[3]['fsyncs']:,} "
                f"fsyncs, logs {'identical prefixes' if r['check']['logs_compared'] else 'wrapped'}"
            )
        gen = max(x[w]["loadgen_cpu_max"] for x in reps[loop] for w in ("W1", "W64"))
        print(f"Checks ({loop}): " + "; ".join(counters) + ".")
        print(f"Busiest load-generator process ({loop}): {gen:.0%} of one core.")
        if any(x[w]["late_start"] for x in reps[loop] for w in ("W1", "W64")):
            print("WARNING: a load generator connected after the shared start instant.")
    if args.json:
        print(json.dumps({"floors": floors, "reps": reps}, indent=1))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line (the replica and loadgen roles are internal)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (default 1)")
    p.add_argument("--reps", type=int, default=3, help="repetitions, medians [min–max] (3)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 rep x 2 s")
    p.add_argument("--json", action="store_true", help="also print the raw numbers as JSON")
    p.add_argument(
        "--loop",
        choices=["trio", "selectors", "both"],
        default="trio",
        help="event loop of the replicas (default trio; `both` alternates them per rep)",
    )
    p.add_argument(
        "--port", type=int, default=20400, help="base port: leader P, followers P+1, P+2"
    )
    p.add_argument("--role", choices=["parent", "replica", "loadgen"], default="parent",
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--id", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--clients", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--client-base", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--start", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Dispatch on --role."""
    args = parse_args(argv)
    if args.role == "replica":
        if args.loop == "selectors":
            selectors_replica(args.id, args.port, args.dir, os.getppid())
        else:
            trio.run(trio_replica, args.id, args.port, args.dir, os.getppid())
        return 0
    if args.role == "loadgen":
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        result = trio.run(
            loadgen, args.clients, args.port, args.start, args.warmup, args.duration,
            args.client_base,
        )  # fmt: skip
        args.out.write_text(json.dumps(result))
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
