"""The issue-17 limits in the node config: defaults, TOML keys, bad values named."""

from __future__ import annotations

import pytest

from prkdb.config import ConfigError, NodeConfig


def test_defaults() -> None:
    lim = NodeConfig.default().limits
    assert (lim.watch_buffer_events, lim.watch_buffer_bytes, lim.max_watches_per_connection,
            lim.history_events, lim.history_bytes) == (10_000, 4 << 20, 10_000, 10_000, 16 << 20)


def test_read_from_toml() -> None:
    cfg = NodeConfig.from_dict({"limits": {"watch_buffer_events": 5, "history_bytes": 4096}},
                               source="t.toml")
    assert (cfg.limits.watch_buffer_events, cfg.limits.history_bytes) == (5, 4096)


@pytest.mark.parametrize("key", ["watch_buffer_events", "watch_buffer_bytes",
                                 "max_watches_per_connection", "history_events",
                                 "history_bytes"])
def test_bad_values_name_the_key(key: str) -> None:
    with pytest.raises(ConfigError) as e:
        NodeConfig.from_dict({"limits": {key: 0}}, source="t.toml")
    assert str(e.value) == f"t.toml: limits.{key} = 0 must be > 0"
