"""Issue 13, proof: one damage at a time on data dirs written by real nodes under load.

Two one-node clusters (`prkdb serve` processes, 1 MiB segments, a snapshot
every 250 entries per partition) take a few thousand puts from concurrent
SDK writers; one is stopped by SIGTERM, the other by kill -9, both while
puts are in flight. Every acknowledged (key, value) is recorded. Then each
case copies a dir, damages it one way (tests/storage/corruption.py), and
opens it in-process exactly as a node does at start. Every case must be
REFUSED naming the spot, or RECOVERED with every acknowledged write (also
after the restarted node's first write and a second restart).

    pytest tests/storage/test_corruption_campaign.py -s     # prints the table

PRKDB_CORRUPTION_SEED=N replays the damage positions of seed N (the dirs
themselves are regenerated each run: a failure message names the kept
pristine dir under pytest's basetemp and the exact case).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from prkdb.config import PeerConfig
from prkdb.server.clusterconf import render_node_config
from prkdb.storage import WalCorruptionError
from tests.integration.cluster import CLUSTER_ID, free_ports
from tests.storage import corruption as C

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("PRKDB_CORRUPTION_SEED", "13"))
ROOT = Path(__file__).resolve().parents[2]


class Campaign:
    def __init__(self, gens: list[C.Generated], scratch: Path) -> None:
        self.gens = gens
        self.scratch = scratch  # damaged copies go here
        self.maps = [C.DirMap.read(g.data_dir) for g in gens]
        self.hard = {}
        for g in gens:  # the undamaged dirs' hard states, for the forgotten-vote check
            work = scratch / f"{g.name}-pristine"
            shutil.copytree(g.data_dir, work)
            try:
                self.hard[g.name] = C.open_like_node(g.node_config(work)).hard
            finally:
                shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    root = tmp_path_factory.mktemp("corruption")
    gens = C.generate(root, [("sigterm", "sigterm"), ("kill9", "kill9")])
    scratch = C.scratch_root(root)
    try:
        yield Campaign(gens, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_the_generated_dirs_hold_what_the_campaign_needs(campaign: Campaign) -> None:
    for g, m in zip(campaign.gens, campaign.maps):
        assert len(g.acked) >= 3000, (g.name, len(g.acked))
        assert len(m.segs) >= 3, m.describe()
        assert all(s.sealed for s in m.segs[:-1]) and not m.segs[-1].sealed, m.describe()
        per_partition = {str(Path(s).parent) for s in m.snaps}
        assert len(per_partition) == 4 and len(m.snaps) >= 7, m.describe()
        kinds = {r.kind for s in m.segs for r in s.records}
        assert {1, 2, 3}.issubset(kinds), m.describe()
    assert campaign.gens[1].exit_code == -9


def test_undamaged_dirs_recover_every_acknowledged_write(campaign: Campaign) -> None:
    for g in campaign.gens:
        work = campaign.scratch / f"{g.name}-undamaged"
        shutil.copytree(g.data_dir, work)
        try:
            v = C.check(work, g.node_config(work), g.acked, C.Spot(()), campaign.hard[g.name])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        assert v.outcome == C.Outcome.RECOVERED and not v.notes, (g.name, v)


def test_corruption_campaign(campaign: Campaign, capsys: pytest.CaptureFixture[str]) -> None:
    print(f"\ncorruption campaign: seed {SEED} (PRKDB_CORRUPTION_SEED to replay)")
    tally = C.Tally()
    total = 0.0
    for k, (g, m) in enumerate(zip(campaign.gens, campaign.maps)):
        other = campaign.maps[1 - k]
        rng = random.Random(SEED * 100 + k)
        cases = C.make_cases(m, other, rng, flips=24, pages=24, truncations=12, stale=24,
                             snaps=20, identity=10)
        print(f"{g.name}: {g.data_dir} ({g.stop}, {len(g.acked)} acknowledged puts), "
              f"{len(cases)} cases\n{m.describe()}")
        total += C.run_cases(g, cases, tally, campaign.scratch, campaign.hard[g.name])
    print(tally.table())
    print(f"{sum(sum(c.values()) for c in tally.rows.values())} cases in {total:.1f} s")
    for f in tally.failures:
        print(f)
    dirs = ", ".join(f"{g.name}: {g.data_dir}" for g in campaign.gens)
    assert not tally.failures, (
        f"seed {SEED} on the kept pristine dirs ({dirs}): {len(tally.failures)} cases "
        f"neither refused naming the spot nor kept every acknowledged write\n"
        f"{tally.table()}\n" + "\n".join(tally.failures[:60]))


# ----------------------------------------------------------------------------
# The same refusals through a real `prkdb serve` on a damaged copy


def _serve(g: C.Generated, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run `prkdb serve` on data_dir (fresh ports, g's identity); it must exit by itself.

    subprocess.run kills the child (by its PID) if it outlives the timeout.
    """
    cfg = g.node_config()
    client, peer = free_ports(2)
    conf = data_dir.parent / f"{data_dir.name}.toml"
    conf.write_text(render_node_config(
        1, [PeerConfig(1, f"127.0.0.1:{client}", f"127.0.0.1:{peer}")], cluster_id=CLUSTER_ID,
        data_dir=data_dir, partitions=cfg.partitions,
        raft={"tick_ms": cfg.raft.tick_ms, "snapshot_entries": cfg.raft.snapshot_entries},
        extra=f"[storage]\nsegment_size = {cfg.storage.segment_size}\n"))
    try:
        return subprocess.run([sys.executable, "-m", "prkdb", "serve", "--config", str(conf)],
                              capture_output=True, text=True, timeout=30, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"prkdb serve on damaged {data_dir} did not exit: it started "
                             f"(stdout tail: {str(e.stdout)[-2000:]})") from None


def _oldest_entry(m: C.DirMap) -> tuple[C.Seg, C.Rec]:
    s = m.segs[0]
    return s, next(r for r in s.records if r.kind == 1)


def _newest_synced_entry(m: C.DirMap) -> tuple[C.Seg, C.Rec]:
    s = m.segs[-1]
    return s, [r for r in s.records if r.kind == 1][len(s.records) // 4]


@pytest.mark.parametrize("damage", ["flip in a sealed segment", "flip in the newest segment",
                                    "truncated middle segment"])
def test_a_real_node_refuses_a_damaged_copy_naming_file_and_offset(
        campaign: Campaign, tmp_path: Path, damage: str) -> None:
    g, m = campaign.gens[1], campaign.maps[1]  # the kill -9 dir
    work = tmp_path / "data"
    shutil.copytree(g.data_dir, work)
    if damage == "flip in a sealed segment":
        s, r = _oldest_entry(m)
        C.xor_byte(work / s.rel, r.off + 40, 0x10)
        rel, offset = s.rel, r.off
    elif damage == "flip in the newest segment":
        s, r = _newest_synced_entry(m)  # long before the last sync mark: acknowledged
        C.xor_byte(work / s.rel, r.off + 20, 0x01)
        rel, offset = s.rel, r.off
    else:
        s = m.segs[len(m.segs) // 2]
        os.truncate(work / s.rel, s.size // 2)
        rel, offset = s.rel, 0
    # The in-process oracle says the same as the node (on its own copy).
    probe = tmp_path / "probe"
    shutil.copytree(work, probe)
    with pytest.raises(WalCorruptionError) as info:
        C.open_like_node(g.node_config(probe))
    assert (info.value.path, info.value.offset) == (probe / rel, offset)
    done = _serve(g, work)
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert f"wal corruption in {work / rel} at byte offset {offset}" in done.stderr, \
        done.stderr[-3000:]
    assert "node_ready" not in done.stdout + done.stderr
