"""prkctl's key API commands against a real 3-node cluster: get --prefix, scan, txn,
put --lease and every lease command (CliRunner in-process; `lease keep-alive` as a
real process stopped with Ctrl-C).

The cluster has 4 partitions and a 1 s lease TTL floor (the default 2 s would make
the keep-alive test slower). Each test writes under its own key prefix or hash tag.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import prkctl.commands.scan
from prkdb.partitioning import partition_for
from tests.integration.cluster import LocalCluster, free_ports
from tests.prkctl.helpers import invoke, invoke_json

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
TTL_FLOOR = 1.0  # seconds: [limits] min_lease_ttl_ms (> the 400 ms election timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("keyapi"), 3, partitions=PARTITIONS,
                     extra=f"[limits]\nmin_lease_ttl_ms = {int(TTL_FLOOR * 1000)}\n\n")
    try:
        c.start_all()
        c.wait_ready()
        yield c
    finally:
        c.close()


def test_get_prefix_and_scan_stream_page_by_page(cluster: LocalCluster,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    s = cluster.seeds
    keys = [f"~scan/k{i:02d}" for i in range(40)]
    for i, k in enumerate(keys):
        assert invoke(s, "put", k, f"v{i}").exit_code == 0
    assert invoke(s, "put", "~scan0", "outside").exit_code == 0
    # 3 keys per partition page: 40 keys spread over 4 partitions take many pages each
    monkeypatch.setattr(prkctl.commands.scan, "PAGE_SIZE", 3)

    res = invoke(s, "get", "--prefix", "~scan/")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [x for i, k in enumerate(keys) for x in (k, f"v{i}")]
    res = invoke(s, "get", "--prefix", "~scan/", "--keys-only", "--limit", "5")
    assert res.stdout.splitlines() == keys[:5]
    code, data = invoke_json(s, "get", "--prefix", "~scan/", "--limit", "5")
    assert code == 0 and (data["count"], data["more"]) == (40, True)
    assert [kv["key"] for kv in data["kvs"]] == keys[:5]
    first = data["kvs"][0]
    assert first["value"] == "v0" and first["version"] == 1 and first["lease"] == 0
    assert first["create_revision"] == first["mod_revision"] > 0
    for level in ("linearizable", "follower"):
        res = invoke(s, "get", "--prefix", "~scan/", "--count-only", "--consistency", level)
        assert res.stdout == "40\n", level
    res = invoke(s, "get", "--prefix", "~scan/", "--keys-only", "--consistency", "stale")
    assert res.exit_code == 0 and set(res.stdout.splitlines()) <= set(keys)

    res = invoke(s, "scan", "~scan/k10", "~scan/k20", "--keys-only")
    assert res.stdout.splitlines() == keys[10:20]
    res = invoke(s, "scan", "~scan/k37")  # END omitted: to the last key
    assert res.stdout.splitlines() == ["~scan/k37", "v37", "~scan/k38", "v38", "~scan/k39",
                                       "v39", "~scan0", "outside"]
    code, data = invoke_json(s, "scan", "~scan/", "~scan0")
    assert code == 0 and data["count"] == 40 and data["more"] is False
    assert [kv["key"] for kv in data["kvs"]] == keys
    res = invoke(s, "--hex", "scan", b"~scan/k39".hex(), "--keys-only", "--limit", "2")
    assert res.stdout.splitlines() == [b"~scan/k39".hex(), b"~scan0".hex()]
    res = invoke(s, "kv", "scan", "~scan/", "--count-only")
    assert res.stdout == "41\n"


def two_partitions() -> tuple[str, str]:
    """Two keys of different partitions (no hash tag)."""
    first = "x0"
    other = next(f"x{i}" for i in range(1, 100)
                 if partition_for(f"x{i}".encode(), PARTITIONS)
                 != partition_for(first.encode(), PARTITIONS))
    return first, other


def test_txn_branches_exit_codes_and_errors(cluster: LocalCluster) -> None:
    s = cluster.seeds
    take = 'absent("{t}/lock")\n\nput {t}/lock me\nget {t}/lock\n\nget {t}/lock\n'
    res = invoke(s, "txn", input=take)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("SUCCESS revision=")
    assert lines[1:] == ["put {t}/lock version=1", "get {t}/lock version=1", "me"]
    res = invoke(s, "txn", input=take)  # held now: the failure branch runs, exit 1
    assert res.exit_code == 1
    assert res.stdout.splitlines()[1:] == ["get {t}/lock version=1", "me"]
    assert "the compares did not hold" in res.stderr

    hand_over = {"compare": [["value", "{t}/lock", "==", "me"], ["version", "{t}/lock", "=", 1]],
                 "success": [["put", "{t}/lock", "you"], ["delete", "{t}/gone"],
                             ["get", "{t}/lock"]],
                 "failure": []}
    code, data = invoke_json(s, "txn", input=json.dumps(hand_over))
    assert code == 0 and data["succeeded"] is True
    put, delete, get = data["results"]
    assert put == {"op": "put", "key": "{t}/lock", "version": 2, "prev_version": 1}
    assert delete == {"op": "delete", "key": "{t}/gone", "deleted": False, "prev_version": 0}
    assert get["found"] is True and get["value"] == "you" and get["version"] == 2
    assert get["mod_revision"] == data["revision"] > get["create_revision"] > 0
    code, data = invoke_json(s, "txn", input=json.dumps(hand_over))
    assert code == 1 and data == {"succeeded": False, "revision": data["revision"],
                                  "results": []}

    a, b = two_partitions()
    res = invoke(s, "txn", input=f"\nput {a} 1\nput {b} 2\n")
    assert res.exit_code == 1 and "hash tag" in res.stderr and "partition" in res.stderr
    res = invoke(s, "txn", input='{"success": [["put", "{t}/x"]]}')
    assert res.exit_code == 2 and res.stderr.startswith("prkctl: success[0]: ")
    assert invoke(s, "get", "{t}/x").exit_code == 1  # nothing was sent


def test_lease_lifecycle(cluster: LocalCluster) -> None:
    s = cluster.seeds
    res = invoke(s, "lease", "grant", "30", "--key", "{svc}/a")
    assert res.exit_code == 0 and res.stderr == ""
    lease = res.stdout.strip()
    lid = int(lease)
    assert lid & 0xFFFF == partition_for(b"{svc}/a", PARTITIONS)
    for k in ("{svc}/a", "{svc}/b"):
        code, data = invoke_json(s, "put", "--lease", lease, k, "up")
        assert code == 0 and data["lease"] == lid
    # a leased put in a txn
    res = invoke(s, "txn", input=f"\nput {{svc}}/c up --lease {lease}\n")
    assert res.exit_code == 0, res.output
    # a key of another partition cannot join the lease
    other = next(f"o{i}" for i in range(100)
                 if partition_for(f"o{i}".encode(), PARTITIONS) != lid & 0xFFFF)
    res = invoke(s, "put", "--lease", lease, other, "v")
    assert res.exit_code == 1 and "partition" in res.stderr

    res = invoke(s, "lease", "ttl", lease, "--keys")
    assert res.exit_code == 0
    head, *attached = res.stdout.splitlines()
    assert head.startswith(f"lease {lid} ttl=30s remaining=") and head.endswith("keys=3")
    assert attached == ["{svc}/a", "{svc}/b", "{svc}/c"]
    code, data = invoke_json(s, "lease", "ttl", lease)
    assert code == 0 and data["ttl"] == 30.0 and 0 < data["remaining"] <= 30
    assert "keys" not in data
    code, data = invoke_json(s, "get", "--prefix", "{svc}/")
    assert [kv["lease"] for kv in data["kvs"]] == [lid] * 3
    code, data = invoke_json(s, "lease", "list")
    assert code == 0 and lid in [x["id"] for x in data["leases"]]
    res = invoke(s, "lease", "list")
    assert res.stdout.startswith("ID") and str(lid) in res.stdout
    res = invoke(s, "lease", "keep-alive", "--once", lease)
    assert res.exit_code == 0 and res.stdout.startswith(f"lease {lid} kept alive, remaining 30")

    res = invoke(s, "lease", "revoke", lease)
    assert res.exit_code == 0 and res.stdout == f"lease {lid} revoked, 3 keys deleted\n"
    assert invoke(s, "get", "--prefix", "{svc}/").stdout == ""
    for args in (["lease", "revoke", lease], ["lease", "ttl", lease],
                 ["lease", "keep-alive", "--once", lease],
                 ["put", "--lease", lease, "{svc}/a", "v"]):
        res = invoke(s, *args)
        assert res.exit_code == 1, args
        assert res.stderr.startswith(f"prkctl: lease {lid} ") and "not found" in res.stderr
    code, data = invoke_json(s, "lease", "list")
    assert lid not in [x["id"] for x in data["leases"]]


def test_keep_alive_until_ctrl_c(cluster: LocalCluster) -> None:
    s = cluster.seeds
    res = invoke(s, "lease", "grant", "0.1", "--key", "{ka}/floor")
    assert f"TTL raised to {TTL_FLOOR:g}s" in res.stderr
    # 3 s: a new python process takes about a second before its first renewal
    ttl = 3.0
    lease = invoke(s, "lease", "grant", str(ttl), "--key", "{ka}/k").stdout.strip()
    granted = time.monotonic()
    assert invoke(s, "put", "--lease", lease, "{ka}/k", "alive").exit_code == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "prkctl", "--seeds", ",".join(s), "lease", "keep-alive", lease],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # renewed once: the loop runs
        assert first.startswith(f"lease {lease} kept alive, remaining 3s"), first
        time.sleep(max(0.0, granted + ttl + 1.0 - time.monotonic()))
        # past the TTL since the grant: only the renewals keep the key
        assert invoke(s, "get", "{ka}/k").stdout == "alive\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert (first + out).count("kept alive") >= 3  # every TTL/3
    assert "Traceback" not in err and "Aborted" not in err
    # no more renewals: the lease and its key go within the TTL and an election
    stopped = time.monotonic()
    while invoke(s, "get", "{ka}/k").exit_code == 0:
        assert time.monotonic() < stopped + ttl + 5, "the key outlived its lease"
        time.sleep(0.1)
    assert invoke(s, "lease", "ttl", lease).exit_code == 1


DEAD_COMMANDS = [
    ["get", "--prefix", "k"], ["scan", "a", "--count-only"], ["put", "--lease", "65536", "k", "v"],
    ["lease", "grant", "5"], ["lease", "revoke", "65536"], ["lease", "ttl", "65536"],
    ["lease", "list"], ["lease", "keep-alive", "65536"], ["txn"],
]


@pytest.mark.parametrize("args", DEAD_COMMANDS, ids=" ".join)
def test_dead_cluster_exits_1_with_one_line(args: list[str]) -> None:
    seeds = [f"127.0.0.1:{p}" for p in free_ports(2)]
    res = invoke(seeds, *args, timeout=0.3, input="\nput k v\n")
    assert res.exit_code == 1, res.output
    assert res.stderr.startswith("prkctl: cluster unavailable:")
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output
