"""The namespaced cluster fixture itself: connectivity, partitions, cleanup."""

from __future__ import annotations

import subprocess

import pytest

from tests.fault.netns import FaultUnavailable, NetnsCluster

pytestmark = pytest.mark.slow


def _can_connect(c: NetnsCluster, src: int, dst: int) -> bool:
    code = (
        "import socket,sys\n"
        "try:\n"
        f"  socket.create_connection(('{c.addr(dst)}', 7000), timeout=0.5).close()\n"
        "except OSError: sys.exit(1)\n"
    )
    p = subprocess.run(["ip", "netns", "exec", c.ns[src], "python3", "-c", code])
    return p.returncode == 0


def test_partitions_cut_and_heal(make_cluster) -> None:
    c = make_cluster(3)
    assert _can_connect(c, 1, 2) and _can_connect(c, 2, 3)
    c.partition([1], [2, 3])
    assert not _can_connect(c, 1, 2) and not _can_connect(c, 3, 1)
    assert _can_connect(c, 2, 3)
    assert c.status(1).node_id == 1  # the test process still reaches everyone
    c.bridge_partition([1], [3], middle=2)
    assert not _can_connect(c, 1, 3) and _can_connect(c, 1, 2) and _can_connect(c, 2, 3)
    c.heal()
    assert _can_connect(c, 1, 3)
    ns, bridge = dict(c.ns), c.bridge
    c.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in ns.values())
    links = subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    assert bridge not in links


def test_netem_is_reported_when_missing(make_cluster) -> None:
    c = make_cluster(3, start=False)
    try:
        c.netem(1, "delay 50ms")
    except FaultUnavailable as e:
        pytest.skip(f"netem delay/loss unavailable on this kernel (not faked): {e}")
