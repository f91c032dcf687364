"""Every networked prkctl command against a real 3-node cluster (CliRunner, in-process).

The cluster (tests/prkctl/conftest.py `live`) is shared by the module; the
tests that kill nodes are the last ones.
"""

from __future__ import annotations

import base64
import math

import pytest

import prkdb
from tests.integration.cluster import CLUSTER_ID, LocalCluster, free_ports
from tests.prkctl.helpers import invoke, invoke_json, wait_leaders

pytestmark = pytest.mark.slow


def test_status_table_and_json(live: LocalCluster) -> None:
    res = invoke(live.seeds, "status")
    assert res.exit_code == 0, res.output
    assert "healthy" in res.stdout and "PARTITION" in res.stdout and "LAG" in res.stdout
    # no --cluster-id given: prkctl learned "prkdb-test" from the seeds
    code, data = invoke_json(live.seeds, "status")
    assert code == 0
    assert data["cluster_id"] == CLUSTER_ID and data["healthy"] is True
    assert data["problems"] == []
    assert [n["id"] for n in data["nodes"]] == [1, 2, 3]
    assert all(n["up"] and n["address"] in live.seeds for n in data["nodes"])
    assert all(n["version"] == prkdb.__version__ for n in data["nodes"])
    assert "VERSION" in res.stdout
    assert sum(n["leading"] for n in data["nodes"]) == 4
    assert [p["partition"] for p in data["partitions"]] == [0, 1, 2, 3]
    for p in data["partitions"]:
        assert p["leader"] in (1, 2, 3) and p["term"] >= 1
        assert p["commit"] >= 1 and p["applied"] >= 1
        assert [r["node"] for r in p["replicas"]] == [1, 2, 3]
        for r in p["replicas"]:
            assert set(r) >= {"node", "up", "role", "match", "lag", "applied"}
            assert isinstance(r["lag"], int) and r["lag"] >= 0


def test_explicit_wrong_cluster_id_fails_with_hint(live: LocalCluster) -> None:
    res = invoke(live.seeds, "--cluster-id", "other", "status")
    assert res.exit_code == 1
    assert "--cluster-id" in res.stderr and "Traceback" not in res.output


def test_put_get_delete_round_trip(live: LocalCluster) -> None:
    s = live.seeds
    res = invoke(s, "put", "greeting", "hello")
    assert res.exit_code == 0 and res.stdout.startswith("OK revision=")
    for level in ("linearizable", "follower", "stale"):
        res = invoke(s, "get", "--consistency", level, "greeting")
        assert res.exit_code == 0 and res.stdout == "hello\n", (level, res.output)
    code, data = invoke_json(s, "get", "greeting")
    assert code == 0
    assert data["found"] is True and data["value"] == "hello" and data["version"] == 1
    assert set(data) >= {"key", "mod_revision", "applied_index", "consistency"}
    code, data = invoke_json(s, "put", "greeting", "again")
    assert code == 0
    assert data == {"key": "greeting", "succeeded": True, "revision": data["revision"],
                    "version": 2, "prev_version": 1}
    code, data = invoke_json(s, "delete", "greeting")
    assert code == 0 and data["existed"] is True and data["version"] == 0
    res = invoke(s, "delete", "greeting")
    assert res.exit_code == 0 and res.stdout.startswith("absent")
    res = invoke(s, "get", "greeting")
    assert res.exit_code == 1 and "not found" in res.stderr and res.stdout == ""
    code, data = invoke_json(s, "get", "greeting")
    assert code == 1 and data["found"] is False and data["value"] is None
    # the `kv` group spells the same commands
    assert invoke(s, "kv", "put", "k2", "v2").exit_code == 0
    assert invoke(s, "kv", "get", "k2").stdout == "v2\n"


def test_stdin_hex_and_base64(live: LocalCluster) -> None:
    s = live.seeds
    blob = bytes(range(256))
    assert invoke(s, "put", "blob", "-", input=blob).exit_code == 0
    assert invoke(s, "get", "--hex", blob.hex().encode().hex()).exit_code == 1  # other key
    res = invoke(s, "get", "--base64", base64.b64encode(b"blob").decode())
    assert res.exit_code == 0 and base64.b64decode(res.stdout.strip()) == blob
    res = invoke(s, "get", "blob")  # raw bytes on stdout
    assert res.stdout_bytes == blob + b"\n"
    assert invoke(s, "put", "--hex", "00ff", "cafe").exit_code == 0
    res = invoke(s, "get", "--hex", "00ff")
    assert res.stdout == "cafe\n"
    code, data = invoke_json(s, "get", "--base64", "AP8=")
    assert code == 0 and data["value"] == base64.b64encode(b"\xca\xfe").decode()
    res = invoke(s, "put", "--hex", "zz", "00")
    assert res.exit_code == 2 and "not valid hex" in res.stderr
    # the root form, as prkctl --help shows it, and with --json
    assert invoke(s, "--hex", "put", "01fe", "beef").exit_code == 0
    assert invoke(s, "--hex", "get", "01fe").stdout == "beef\n"
    code, data = invoke_json(s, "--hex", "get", "01fe")
    assert code == 0 and (data["key"], data["value"]) == ("01fe", "beef")
    assert invoke(s, "get", "--base64", base64.b64encode(b"\x01\xfe").decode()).exit_code == 0
    res = invoke(s, "--hex", "put", "", "beef")
    assert res.exit_code == 2 and "must not be empty" in res.stderr


def test_cas_exit_codes(live: LocalCluster) -> None:
    s = live.seeds
    assert invoke(s, "cas", "lock", "--expect-absent", "me").exit_code == 0
    res = invoke(s, "cas", "lock", "--expect-absent", "you")
    assert res.exit_code == 1 and "cas failed" in res.stderr and "version 1" in res.stderr
    res = invoke(s, "cas", "lock", "--expect", "nobody", "you")
    assert res.exit_code == 1
    code, data = invoke_json(s, "cas", "lock", "--expect", "me", "you")
    assert code == 0 and data["succeeded"] is True and data["version"] == 2
    code, data = invoke_json(s, "cas", "lock", "--expect-version", "1", "x")
    assert code == 1 and data["succeeded"] is False and data["version"] == 2
    assert invoke(s, "cas", "lock", "--expect-version", "2", "x").exit_code == 0
    assert invoke(s, "get", "lock").stdout == "x\n"
    assert invoke(s, "cas", "lock", "y").exit_code == 2  # no expectation
    assert invoke(s, "cas", "lock", "--expect", "a", "--expect-absent", "y").exit_code == 2


def test_snapshot(live: LocalCluster) -> None:
    code, data = invoke_json(live.seeds, "snapshot")
    assert code == 0 and sorted(data["snapshots"]) == ["0", "1", "2", "3"]
    assert all(isinstance(i, int) for i in data["snapshots"].values())
    code, data = invoke_json(live.seeds, "snapshot", "2", "--node", "3")
    assert code == 0 and list(data["snapshots"]) == ["2"] and data["node"] == 3
    res = invoke(live.seeds, "snapshot", "1")
    assert res.exit_code == 0 and res.stdout.startswith("partition 1: snapshot at index")
    res = invoke(live.seeds, "snapshot", "9")
    assert res.exit_code == 2 and "partition 9 is not in 0..3" in res.stderr
    assert invoke(live.seeds, "snapshot", "--node", "8").exit_code == 2


def test_leader_transfer(live: LocalCluster) -> None:
    leaders = live.wait_ready()
    p, old = 0, leaders[0]
    to = old % 3 + 1
    code, data = invoke_json(live.seeds, "leader", "transfer", str(p), str(to))
    assert code == 0, data
    assert data == {"partition": p, "from": old, "to": to, "leader": to}
    assert live.wait_ready()[p] == to
    res = invoke(live.seeds, "leader", "transfer", "9", "1")
    assert res.exit_code == 2 and "partition 9" in res.stderr
    res = invoke(live.seeds, "leader", "transfer", "0", "7")
    assert res.exit_code == 2 and "node 7" in res.stderr


def test_leader_balance_caps_leaders_per_node(live: LocalCluster) -> None:
    # Pile every partition on node 1 first, then balance.
    for p, lead in live.wait_ready().items():
        if lead != 1:
            assert invoke(live.seeds, "leader", "transfer", str(p), "1").exit_code == 0
    assert set(live.wait_ready().values()) == {1}
    res = invoke(live.seeds, "leader", "balance")
    assert res.exit_code == 0, res.output
    assert "before:" in res.stdout and "after:" in res.stdout and "moved partition" in res.stdout
    cap = math.ceil(live.partitions / live.n)
    counts = {i: 0 for i in live.ids}
    for lead in live.wait_ready().values():
        counts[lead] += 1
    assert max(counts.values()) <= cap, counts
    code, data = invoke_json(live.seeds, "leader", "balance")
    assert code == 0 and data["moves"] == [] and data["max_per_node"] == cap
    assert max(data["after"].values()) <= cap and set(data) >= {"before", "after", "dry_run"}


def test_bench_json_and_table(live: LocalCluster) -> None:
    code, data = invoke_json(live.seeds, "bench", "-w", "W1", "-w", "R-STALE", "--duration",
                             "0.3", "--keys", "20", "--concurrency", "4", "--value-size", "16")
    assert code == 0
    assert [w["workload"] for w in data["workloads"]] == ["W1", "R-STALE"]
    for w in data["workloads"]:
        assert w["ops"] > 0 and w["errors"] == 0 and w["ops_per_s"] > 0
        assert 0 < w["p50_ms"] <= w["p90_ms"] <= w["p99_ms"] <= w["max_ms"]
    res = invoke(live.seeds, "bench", "-w", "W64", "-w", "R-FOLLOWER", "-w",
                 "R-LINEARIZABLE", "--duration", "0.3", "--keys", "20", "--concurrency", "8")
    assert res.exit_code == 0, res.output
    assert "P99ms" in res.stdout and "R-LINEARIZABLE" in res.stdout


# --- the tests below kill nodes: keep them last ---------------------------------------


def test_status_with_one_node_down_is_healthy_and_two_down_is_not(live: LocalCluster) -> None:
    live.kill(3)
    wait_leaders(live)  # leaders re-elected among 1 and 2
    code, data = invoke_json(live.seeds, "status", timeout=1)
    assert code == 0, data
    down = [n for n in data["nodes"] if not n["up"]]
    assert [n["id"] for n in down] == [3] and down[0]["error"]
    res = invoke(live.seeds, "status", timeout=1)
    assert "DOWN" in res.stdout and "3:down" in res.stdout
    live.kill(2)
    res = invoke(live.seeds, "status", timeout=1)
    assert res.exit_code == 1 and "unhealthy" in res.stderr
    assert "UNHEALTHY" in res.stdout


DEAD_COMMANDS = [
    ["status"], ["get", "k"], ["put", "k", "v"], ["delete", "k"],
    ["cas", "k", "--expect-absent", "v"], ["leader", "transfer", "0", "1"],
    ["leader", "balance"], ["snapshot"], ["bench", "--duration", "0.2"],
]


@pytest.mark.parametrize("args", DEAD_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_dead_cluster_exits_1_with_one_line(args: list[str]) -> None:
    seeds = [f"127.0.0.1:{p}" for p in free_ports(2)]
    res = invoke(seeds, *args, timeout=0.3)
    assert res.exit_code == 1, res.output
    assert res.stderr.startswith("prkctl: cluster unavailable:")
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output
    assert invoke(seeds, "--json", *args, timeout=0.3).stdout == ""
