"""`prkctl watch KEY [RANGE_END]` and `prkctl watch --prefix P`: print changes as they happen.

The SDK's watch does the work (docs/client.md "Watch"): one stream per
partition of the range, at followers, reopened elsewhere after a lost
connection or a dead node, exactly after what was delivered. This command
prints each event as it arrives (click.echo flushes, so a pipe sees it at
once) and, with --print-cursor, the cursor a later `--cursor` resumes from:
first the cursor the watch starts at (taken before the first event can be
missed, so a script may start writing once it has read that line), then
whenever it moves (after each whole revision; while idle, with the servers'
progress notices, looked at every second), and once more at exit.

Exit codes: 0 on Ctrl-C or after --max-events; 1 when the cluster cannot be
reached at the start, or when a partition's history no longer holds the
cursor (COMPACTED: list again, then watch from a new cursor); 2 for bad usage
or a damaged --cursor.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from typing import Any

import click
import trio

from prkctl.context import CtlContext, pass_ctl, translate_errors
from prkctl.errors import PrkctlError
from prkctl.output import decode_arg, decode_key, encode_bytes, encoding_options
from prkdb.client import Compacted, EventKind, InvalidRequest, WatchCursor

__all__ = ["CURSOR_POLL", "watch"]

CURSOR_POLL = 1.0
"""Seconds between looks at an idle watch's cursor (--print-cursor): the servers send a
progress notice about once a second, so a faster look would mostly find nothing new."""


class _Printer:
    """Prints events and cursor lines; remembers the last cursor printed."""

    def __init__(self, ctl: CtlContext, encoding: str, prev_kv: bool,
                 print_cursor: bool) -> None:
        self.ctl = ctl
        self.encoding = encoding
        self.prev_kv = prev_kv
        self.print_cursor = print_cursor
        self.shown: WatchCursor | None = None  # the cursor last printed

    def event(self, ev: Any) -> None:
        kind = EventKind(ev.kind).name
        enc = self.encoding
        if self.ctl.json:
            what = f"a value of {ev.key[:40]!r}"
            data: dict[str, Any] = {
                "kind": kind,
                "key": encode_bytes(ev.key, enc, "a key"),
                "value": None if ev.value is None else encode_bytes(ev.value, enc, what),
                "revision": ev.revision,
                "partition": ev.partition,
            }
            if self.prev_kv:
                data["prev_value"] = (None if ev.prev_value is None
                                      else encode_bytes(ev.prev_value, enc, what))
            self.ctl.emit_line(data, "")
            return
        # etcdctl's text: the kind, [the previous key and value], the key, [the value].
        lines: list[bytes] = [kind.encode()]
        if self.prev_kv and ev.prev_value is not None:
            lines += [ev.key, ev.prev_value]
        lines.append(ev.key)
        if ev.value is not None:
            lines.append(ev.value)
        if enc == "utf8":
            click.echo(b"\n".join(lines))  # bytes as they are (binary round-trips, as `get`)
        else:
            click.echo("\n".join([lines[0].decode()] + [encode_bytes(x, enc) for x in lines[1:]]))

    def cursor(self, cursor: WatchCursor) -> None:
        """Print `cursor` if --print-cursor and it moved since the last one printed."""
        if not self.print_cursor or cursor == self.shown:
            return
        self.shown = cursor
        text = cursor.encode()
        self.ctl.emit_line({"cursor": text}, f"CURSOR {text}")


def _range(key: str | None, range_end: str | None, prefix: str | None,
           encoding: str) -> dict[str, bytes | None]:
    """The SDK's range arguments; click.BadParameter / UsageError (exit 2) on bad usage."""
    if prefix is not None:
        if key is not None:
            raise click.UsageError("give KEY [RANGE_END] or --prefix P, not both")
        return {"prefix": decode_arg(prefix, encoding, "--prefix")}
    if key is None:
        raise click.UsageError("missing KEY (or --prefix P)")
    start = decode_key(key, encoding)
    if range_end is None:
        return {"start": start, "end": start + b"\x00"}  # the one key
    end = decode_arg(range_end, encoding, "RANGE_END")
    if end <= start:
        raise click.BadParameter(f"RANGE_END ({range_end!r}) must come after KEY ({key!r})",
                                 param_hint="RANGE_END")
    return {"start": start, "end": end}


def _cursor_arg(text: str) -> str:
    """--cursor's text: the cursor, or a whole line --print-cursor printed (text or JSON)."""
    text = text.strip()
    if text.startswith("{"):
        with contextlib.suppress(ValueError, AttributeError):
            return str(json.loads(text).get("cursor", text))
    return text.removeprefix("CURSOR ").strip()


def _relist_hint(rng: dict[str, bytes | None], encoding: str) -> str:
    """What to run after COMPACTED: the listing of the same range, quoted for a shell."""

    def arg(b: bytes | None) -> str:
        try:
            return shlex.quote(encode_bytes(b or b"", encoding))
        except PrkctlError:
            return "..."

    root = "prkctl" if encoding == "utf8" else f"prkctl --{encoding}"
    if "prefix" in rng:
        listing = f"{root} get --prefix {arg(rng['prefix'])}"
    else:
        listing = f"{root} scan {arg(rng['start'])} {arg(rng['end'])}"
    return (f"list the keys again ({listing}), then watch without --cursor (start the watch "
            "with --print-cursor first, then list: nothing is missed)")


@click.command()
@click.argument("key", required=False)
@click.argument("range_end", required=False)
@click.option("--prefix", default=None, metavar="P",
              help="Watch every key starting with P (\"\": every key).")
@click.option("--prev-kv", is_flag=True, help="Also print each key's previous value.")
@click.option("--cursor", "cursor_text", default=None, metavar="TEXT",
              help="Start after this cursor (a line --print-cursor printed, or its TEXT): "
              "nothing after it is missed, nothing up to it repeats.")
@click.option("--print-cursor", is_flag=True,
              help="Print the cursor: first where the watch starts, then whenever it moves, "
              "and at exit (text: 'CURSOR TEXT'; --json: {\"cursor\": TEXT}).")
@click.option("--max-events", type=click.IntRange(min=1), default=None, metavar="N",
              help="Exit 0 after N events.")
@encoding_options
@pass_ctl
@translate_errors
def watch(ctl: CtlContext, key: str | None, range_end: str | None, prefix: str | None,
          prev_kv: bool, cursor_text: str | None, print_cursor: bool,
          max_events: int | None, encoding: str) -> None:
    """Print every change of KEY, of [KEY, RANGE_END), or of the keys under --prefix P,
    as it happens, until Ctrl-C (exit 0).

    Per event: a line with PUT, DELETE (a delete, a txn, a lease revoke) or
    EXPIRE (the key's lease expired), with --prev-kv the key and its previous
    value (if it had one), then the key, then (PUT) the new value, as
    etcdctl prints them. --json: one object per line, {"kind", "key",
    "value", "revision", "partition"} (+ "prev_value" with --prev-kv). Events
    of one partition come in revision order; there is no order across
    partitions. The watch resumes on its own after a lost connection or a
    dead node (no gap, no duplicate); while no node answers it waits.

    A script that must not miss events across runs saves the last cursor
    line (--print-cursor) and passes it back as --cursor. Exit 1 if the
    cluster cannot be reached, or if a partition no longer keeps the events
    after the cursor (COMPACTED): then list the keys again and watch anew.

    \b
    Example:
      prkctl watch config/app                     # one key
      prkctl watch --prefix config/ --prev-kv
      prkctl watch a b                            # keys >= "a" and < "b"
      prkctl --json watch --prefix svc/ --print-cursor > events.jsonl
      prkctl watch --prefix svc/ --cursor "$(tail -1 saved)" --max-events 10
    """
    rng = _range(key, range_end, prefix, encoding)
    given: WatchCursor | None = None
    if cursor_text is not None:
        try:
            given = WatchCursor.decode(_cursor_arg(cursor_text))
        except InvalidRequest as e:
            raise click.BadParameter(e.message or str(e), param_hint="--cursor") from None
    printer = _Printer(ctl, encoding, prev_kv, print_cursor)
    holder: list[Any] = []  # the watch, for the cursor at Ctrl-C

    async def body(client: Any) -> None:
        cursor: WatchCursor | None = given
        if print_cursor:
            # The start made explicit (as the SDK would take it): "now" for every
            # partition of the range, except where --cursor says otherwise.
            now = await client.watch_cursor(**rng, timeout=ctl.timeout)
            cursor = WatchCursor({p: (given or {}).get(p, r) for p, r in now.items()})
            printer.cursor(cursor)
        w = client.watch(**rng, cursor=cursor, prev_values=prev_kv, timeout=ctl.timeout)
        holder.append(w)
        async with w:
            if not print_cursor:
                await follow(w)
                return
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(follow_progress, w)
                    await follow(w)
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                # Ctrl-C or Compacted, raised in the nursery's body: as without it.
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise

    async def follow(w: Any) -> None:
        seen = 0
        async for ev in w:
            printer.event(ev)
            printer.cursor(w.cursor)
            seen += 1
            if max_events is not None and seen >= max_events:
                return

    async def follow_progress(w: Any) -> None:
        while True:
            await trio.sleep(CURSOR_POLL)
            printer.cursor(w.cursor)

    try:
        ctl.run_client(body)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how this command is meant to end
    except Compacted as e:
        where = f"partition {e.partition}" if e.partition is not None else "a partition"
        kept = f" (it keeps those after revision {e.oldest})" if e.oldest is not None else ""
        raise PrkctlError(f"compacted: {where} no longer keeps the events after the "
                          f"cursor{kept}; {_relist_hint(rng, encoding)}") from e
    if holder:
        printer.cursor(holder[0].cursor)
