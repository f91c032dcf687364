"""The issue-16 limits in the node config: defaults, TOML keys, and the lease TTL floor."""

from __future__ import annotations

import pytest

from prkdb.config import ConfigError, NodeConfig


def test_defaults() -> None:
    lim = NodeConfig.default().limits
    assert (lim.max_scan_page, lim.max_scan_bytes, lim.max_leases, lim.min_lease_ttl_ms) == (
        1000, 4 * 1024 * 1024, 100_000, 2000)


def test_read_from_toml() -> None:
    cfg = NodeConfig.from_dict({"limits": {"max_scan_page": 10, "max_scan_bytes": 4096,
                                           "max_leases": 3, "min_lease_ttl_ms": 600}},
                               source="t.toml")
    assert (cfg.limits.max_scan_page, cfg.limits.max_scan_bytes, cfg.limits.max_leases,
            cfg.limits.min_lease_ttl_ms) == (10, 4096, 3, 600)


@pytest.mark.parametrize(("raw", "message"), [
    ({"limits": {"max_scan_page": 0}}, "t.toml: limits.max_scan_page = 0 must be > 0"),
    ({"limits": {"max_leases": -1}}, "t.toml: limits.max_leases = -1 must be > 0"),
    # A new leader restarts every TTL: one shorter than an election could lapse
    # before its owner found the new leader.
    ({"limits": {"min_lease_ttl_ms": 500}},
     "t.toml: limits.min_lease_ttl_ms = 500 must be > the election timeout "
     "(raft.election_ticks * raft.tick_ms = 500 ms)"),
    ({"raft": {"tick_ms": 100, "election_ticks": 25}},
     "t.toml: limits.min_lease_ttl_ms = 2000 must be > the election timeout "
     "(raft.election_ticks * raft.tick_ms = 2500 ms)"),
], ids=["scan-page", "leases", "ttl-floor", "slow-elections"])
def test_bad_values_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        NodeConfig.from_dict(raw, source="t.toml")
    assert str(e.value) == message
