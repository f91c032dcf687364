"""A lock contender as its own process, for tests/fault/test_lock_fencing.py.

``python -m tests.fault.lock_worker --seeds A,B,C --name NAME --worker W``
loops: take the SDK's `Lock` (prkdb.client.recipes), then append up to
``--appends`` entries to the shared log, each with a *fenced* txn::

    if create_revision(our lock key) == our lock revision      (lock.guard())
    then put {NAME}:log/w<W>-<n> = b"w=<W> rev=<rev> n=<n>"
    else get our lock key                                       (why it failed)

then release and contend again. The log keys share the lock's hash tag, so
the guard and the append are in one partition (one txn). The worker never
looks at ``lock.lost`` before an append, on purpose: a holder that was
paused (SIGSTOP) cannot know it lost the lock, and the test is that the
*server* refuses its late writes.

Every step is a JSON line on stdout (times are ``time.monotonic()``, which is
one clock for every process of the machine, so the test can order them
against its own SIGSTOP/SIGCONT):

- ``{"ev": "acquired", "rev": R, "t": T}``
- ``{"ev": "invoke", "n": N, "rev": R, "t": T}`` before each append, then
  ``{"ev": "append", "n": N, "rev": R, "t": T, "out": "ok"|"fenced"|"info",
  "txn_rev": M, "err": "..."}`` (``fenced``: the guard failed; ``info``: an
  error, the append may or may not have happened)
- ``{"ev": "released", "rev": R, "t": T}``; ``{"ev": "error", ...}`` otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import trio

from prkdb.client import PrkDbClient
from prkdb.client.recipes import Lock
from prkdb.client.txn import Get, Put
from prkdb.errors import PrkdbError


def log_key(name: bytes, worker: int, n: int) -> bytes:
    """Entry n of worker `worker`: under the lock's hash tag, outside its queue prefix."""
    return b"{%s}:log/w%d-%d" % (name, worker, n)


def log_prefix(name: bytes) -> bytes:
    return b"{%s}:log/" % name


def emit(ev: str, **fields: object) -> None:
    print(json.dumps({"ev": ev, "t": time.monotonic(), **fields}), flush=True)


async def run(args: argparse.Namespace) -> None:
    name = args.name.encode()
    rng = random.Random(args.worker)
    n = 0
    async with PrkDbClient.connect(args.seeds.split(","), cluster_id=args.cluster_id,
                                   timeout=args.timeout, attempt_timeout=0.5) as client:
        emit("connected")
        while True:
            lock = Lock(client, name, ttl=args.ttl, value=b"w%d" % args.worker)
            try:
                rev = await lock.acquire(timeout=10.0)
            except PrkdbError as e:
                emit("error", where="acquire", err=repr(e)[:200])
                await trio.sleep(rng.uniform(0.05, 0.2))
                continue
            emit("acquired", rev=rev)
            for _ in range(args.appends):
                n += 1
                value = b"w=%d rev=%d n=%d" % (args.worker, rev, n)
                emit("invoke", n=n, rev=rev)
                try:
                    append = Put(log_key(name, args.worker, n), value)
                    r = await client.txn([lock.guard()], [append], [Get(lock.key)],
                                         timeout=args.timeout)
                except PrkdbError as e:
                    emit("append", n=n, rev=rev, out="info", err=repr(e)[:200])
                    continue
                if not r.succeeded:
                    seen = r.results[0].create_revision
                    emit("append", n=n, rev=rev, out="fenced", txn_rev=r.revision,
                         err=f"lock key create_revision {seen}, ours {rev}")
                    break
                emit("append", n=n, rev=rev, out="ok", txn_rev=r.revision)
                await trio.sleep(args.gap)
            try:
                await lock.release()
            except PrkdbError as e:
                emit("error", where="release", err=repr(e)[:200])
            emit("released", rev=rev)
            await trio.sleep(rng.uniform(0.0, 0.1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", required=True)
    p.add_argument("--cluster-id", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--ttl", type=float, default=1.5)
    p.add_argument("--appends", type=int, default=8)
    p.add_argument("--gap", type=float, default=0.1)
    p.add_argument("--timeout", type=float, default=2.0)
    args = p.parse_args()
    try:
        trio.run(run, args)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
