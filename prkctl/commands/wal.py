"""`prkctl wal verify|dump DATA_DIR`: offline, read-only checks of a node's WAL.

Run them on a stopped node's data dir (or a copy of it). `verify` and `dump`
never modify a file: a torn tail that `prkdb serve` would cut at start is only
reported (as a warning, exit 0), corruption anywhere else exits 1 naming the
file and the byte offset, as `prkdb serve` refuses to start on it. `repair`
is the one that writes: it truncates a corrupt WAL at the bad spot (backing
up what it cuts) and marks the node to rebuild from its peers before it
votes again (docs/operations.md, "A corrupt WAL").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from prkctl.context import CtlContext, pass_ctl, translate_errors
from prkctl.errors import PrkctlError


def node_dir(data_dir: Path) -> Path:
    """The node's data dir (holding IDENTITY) for DATA_DIR or DATA_DIR/wal."""
    return data_dir.parent if data_dir.name == "wal" and not (data_dir / "wal").is_dir() \
        else data_dir


def read_dir_identity(data_dir: Path) -> Any:
    """The data dir's identity or None; a damaged one is an error (exit 1)."""
    from prkdb.storage.identity import IdentityError, read_identity

    try:
        return read_identity(node_dir(data_dir))
    except IdentityError as e:
        raise PrkctlError(str(e)) from None


def identity_json(ident: Any) -> dict[str, Any] | None:
    return None if ident is None else dataclasses.asdict(ident)


def echo_identity(ident: Any) -> None:
    if ident is None:
        click.echo("  identity: none (a data dir from before identities, or a bare WAL dir)")
    else:
        click.echo(f"  identity: cluster {ident.cluster_id!r}, node {ident.node_id}, "
                   f"{ident.partitions} partitions, format {ident.format_version}, "
                   f"data dir id {ident.data_dir_id}")


def wal_dir(data_dir: Path) -> Path:
    """DATA_DIR/wal if it exists (a node's data dir), else DATA_DIR itself."""
    if (data_dir / "wal").is_dir():
        return data_dir / "wal"
    if any(p.suffix == ".wal" for p in data_dir.iterdir()):
        return data_dir
    raise click.BadParameter(f"{data_dir} holds no WAL (no wal/ directory, no *.wal files)",
                             param_hint="DATA_DIR")


DATA_DIR = click.argument(
    "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path)
)


@click.group()
def wal() -> None:
    """Offline tools for a stopped node's write-ahead log (verify, dump, repair).

    \b
    Example:
      prkctl wal verify /var/lib/prkdb/node1
      prkctl wal dump /var/lib/prkdb/node1 --partition 3 --from 100
      prkctl wal repair /var/lib/prkdb/node1
    """


@wal.command()
@DATA_DIR
@pass_ctl
@translate_errors
def verify(ctl: CtlContext, data_dir: Path) -> None:
    """Check every WAL record's CRC and the replay rules; exit 1 on corruption.

    \b
    Example:
      prkctl wal verify /var/lib/prkdb/node1 || echo "restore this node from a peer"
    """
    from prkdb.storage import verify as verify_wal

    ident = read_dir_identity(data_dir)
    report = verify_wal(wal_dir(data_dir), dir_id=None if ident is None else ident.dir_id_bytes)
    problem = report.problem
    data = {
        "directory": report.directory,
        "identity": identity_json(ident),
        "ok": report.ok,
        "records": report.records,
        "segments": [dataclasses.asdict(s) for s in report.segments],
        "partitions": {
            str(p): {"first_index": r.first_index, "last_index": r.last_index,
                     "snapshot_index": r.snapshot_index, "term": r.hard_state.term,
                     "commit": r.hard_state.commit}
            for p, r in sorted(report.partitions.items())
        },
        "problem": None if problem is None else dataclasses.asdict(problem),
    }

    def human() -> None:
        click.echo(f"{report.directory}: {len(report.segments)} segments, "
                   f"{report.records} records")
        echo_identity(ident)
        for p, r in sorted(report.partitions.items()):
            click.echo(f"  partition {p}: entries {r.first_index}..{r.last_index} "
                       f"snapshot {r.snapshot_index} term {r.hard_state.term} "
                       f"commit {r.hard_state.commit}")
        click.echo("ok" if report.ok else "CORRUPT")

    ctl.emit(data, human)
    if problem is not None and problem.tail:
        click.echo(f"prkctl: warning: torn tail in {problem.file} at offset {problem.offset}: "
                   f"{problem.reason} (cut off at the next start; nothing acknowledged is "
                   "lost)", err=True)
    if not report.ok:
        assert problem is not None
        raise PrkctlError(f"corruption in {problem.file} at offset {problem.offset}: "
                          f"{problem.reason}. What to do: docs/operations.md, 'A corrupt "
                          f"WAL' (`prkctl wal repair` keeps what lies before this spot, "
                          f"and the node catches up from its peers before it votes)")


@wal.command()
@DATA_DIR
@click.option("--node-id", type=click.IntRange(min=1),
              help="The node's id, needed only for a data dir without an IDENTITY file.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctl
@translate_errors
def repair(ctl: CtlContext, data_dir: Path, node_id: int | None, yes: bool) -> None:
    """Truncate a corrupt WAL at its first bad spot; the node then rebuilds before voting.

    Run it on a STOPPED node whose `prkdb serve` refused to start with a WAL
    corruption. Everything from the bad spot on is cut (the damaged segment
    is first copied to `<segment>.bak`, later segments are renamed
    `.discarded`; nothing is deleted). Entries this node had acknowledged
    may be among what was cut, so the repair also marks the data dir
    REBUILDING: at its next start the node learns from every other node what
    it may have promised and votes again only once it holds every committed
    entry (as `prkdb serve --rebuild`; every other node must be up). A
    one-node cluster cannot rebuild: restore it from a backup instead.

    \b
    Example:
      prkctl wal repair /var/lib/prkdb/node1 && systemctl start prkdb@1
    """
    from prkdb.storage import Logger, WriteAheadLog
    from prkdb.storage import verify as verify_wal
    from prkdb.storage.rebuild_marker import Marker

    ident = read_dir_identity(data_dir)
    if ident is not None:
        if node_id is not None and node_id != ident.node_id:
            raise click.BadParameter(f"the data dir belongs to node {ident.node_id}",
                                     param_hint="--node-id")
        node_id = ident.node_id
    if node_id is None:
        raise click.UsageError(f"{node_dir(data_dir)} has no IDENTITY file: say whose it is "
                               "with --node-id")
    wdir = wal_dir(data_dir)
    dir_id = None if ident is None else ident.dir_id_bytes
    report = verify_wal(wdir, dir_id=dir_id)
    if report.ok:
        ctl.emit({"repaired": False, "problem": None},
                 lambda: click.echo("nothing to repair: no corruption (a torn tail is cut "
                                    "at the next start)"))
        return
    problem = report.problem
    assert problem is not None
    click.echo(f"corruption in {problem.file} at offset {problem.offset}: {problem.reason}",
               err=True)
    if not yes:
        click.confirm("Cut the WAL there (backing it up) and make the node rebuild from its "
                      "peers at its next start?", abort=True, err=True)

    events: list[tuple[str, dict[str, Any]]] = []

    class _Collect:
        def info(self, event: str, **kw: Any) -> None:
            events.append((event, kw))

        warning = debug = info

    collect: Logger = _Collect()
    node = node_dir(data_dir)
    # Marker first: a crash between the two leaves a dir that rebuilds.
    Marker(node_id, None).save(node)
    WriteAheadLog.open(wdir, repair=True, data_dir_id=dir_id, logger=collect).close()
    done = [kw for e, kw in events if e == "wal_repaired_by_truncation"]
    data = {"repaired": True, "problem": dataclasses.asdict(problem),
            "backup": done[0]["backup"] if done else None,
            "discarded_segments": done[0]["discarded_segments"] if done else [],
            "rebuild_marker": str(node / "REBUILDING")}

    def human() -> None:
        click.echo(f"cut at {problem.file}@{problem.offset}; backup: {data['backup']}")
        for p in data["discarded_segments"]:
            click.echo(f"set aside: {p}.discarded")
        click.echo("the node rebuilds from its peers at its next start and votes again only "
                   "once it holds every committed entry")

    ctl.emit(data, human)


def _record_json(r: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"file": Path(r.file).name, "offset": r.offset,
                           "kind": r.kind.name, "partition": r.partition}
    if r.entries:
        out["entries"] = [{"term": e.term, "index": e.index, "kind": getattr(e.kind, "name",
                           e.kind), "bytes": len(e.data)} for e in r.entries]
    if r.hard_state is not None:
        hs = r.hard_state
        out["hard_state"] = {"term": hs.term, "vote": hs.vote, "commit": hs.commit}
    if r.kind.name == "SYNC_MARK":
        out["durable_to"] = r.synced_end
    if r.snapshot is not None:
        out["snapshot"] = {"index": r.snapshot.index, "term": r.snapshot.term}
        out["last_index"] = r.last_index
    return out


@wal.command()
@DATA_DIR
@click.option("--partition", type=click.IntRange(min=0), help="Only this partition.")
@click.option("--from", "from_index", type=click.IntRange(min=0), default=0,
              help="Hide entries below this index.")
@pass_ctl
@translate_errors
def dump(ctl: CtlContext, data_dir: Path, partition: int | None, from_index: int) -> None:
    """Print the WAL's records, one per line (--json: one JSON object per line).

    Stops at the first bad record; `prkctl wal verify` says why.

    \b
    Example:
      prkctl wal dump /var/lib/prkdb/node1 --partition 0 --from 1200 | less
      prkctl --json wal dump ./data1 | jq -c 'select(.kind == "HARD_STATE")'
    """
    import json

    from prkdb.storage import dump as dump_wal

    ident = read_dir_identity(data_dir)
    if ctl.json:
        click.echo(json.dumps({"kind": "IDENTITY", "identity": identity_json(ident)},
                              sort_keys=True))
    else:
        click.echo("# " + (f"identity: cluster {ident.cluster_id!r}, node {ident.node_id}, "
                           f"{ident.partitions} partitions, data dir id {ident.data_dir_id}"
                           if ident is not None else "identity: none"))
    for record in dump_wal(wal_dir(data_dir), partition, from_index):
        if ctl.json:
            click.echo(json.dumps(_record_json(record), sort_keys=True))
        else:
            click.echo(str(record))
