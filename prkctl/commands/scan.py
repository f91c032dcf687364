"""`prkctl scan START [END]` and the listing behind `prkctl get --prefix KEY`.

Both print a key range in key order across every partition. Keys stream:
the SDK's `scan_iter` reads a page per partition as the output needs it and
each key is printed as it arrives, so listing a million keys holds one page
per partition in memory, never the whole range. What a listing guarantees is
the SDK's (docs/client.md): each key that exists for the whole command is
printed exactly once, in order; each partition page is read at one
linearizable point; there is no snapshot across partitions or pages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from prkctl.context import CtlContext, pass_ctl, translate_errors
from prkctl.output import JsonListWriter, decode_arg, echo_bytes, encode_bytes, encoding_options

__all__ = ["CONSISTENCY", "ListOptions", "consistency_option", "list_options", "list_range",
           "scan"]

CONSISTENCY = {"linearizable": 0, "follower": 1, "stale": 2}

PAGE_SIZE = 1000
"""Keys asked of one partition per request (the server's default page cap). At most
one page per partition is in memory at a time; tests lower it to cross pages."""


def consistency_option(fn: Any) -> Any:
    return click.option(
        "--consistency", type=click.Choice(list(CONSISTENCY)), default="linearizable",
        show_default=True, help="linearizable: at the leader; follower: a follower after a "
        "ReadIndex (also linearizable); stale: any replica's local state.")(fn)


@dataclass(frozen=True)
class ListOptions:
    """How to print a range (the flags `get --prefix` and `scan` share)."""

    limit: int  # at most this many keys; 0 = all
    keys_only: bool
    count_only: bool
    consistency: str  # a CONSISTENCY name

    def check(self) -> None:
        """Raises click.UsageError (exit 2) for flags that exclude each other."""
        if self.count_only and (self.keys_only or self.limit):
            raise click.UsageError("--count-only excludes --keys-only and --limit")


def list_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--limit, --keys-only, --count-only and --consistency."""
    fn = consistency_option(fn)
    fn = click.option("--count-only", is_flag=True,
                      help="Print only how many keys the range holds.")(fn)
    fn = click.option("--keys-only", is_flag=True, help="Print keys without values.")(fn)
    fn = click.option("--limit", type=click.IntRange(min=0), default=0, show_default=True,
                      help="At most N keys (0: all).")(fn)
    return fn


def _kv_json(kv: Any, encoding: str, keys_only: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": encode_bytes(kv.key, encoding, "a key"),
        "version": kv.version,
        "mod_revision": kv.mod_revision,
        "create_revision": kv.create_revision,
        "lease": kv.lease,
    }
    if not keys_only:
        out["value"] = encode_bytes(kv.value, encoding, f"the value of {kv.key[:40]!r}")
    return out


def list_range(ctl: CtlContext, rng: dict[str, bytes | None], opts: ListOptions,
               encoding: str) -> None:
    """Print the keys of `rng` (SDK scan arguments: prefix, or start and end), streaming.

    Text: per key a line with the key and (without --keys-only) a line with
    the value, as etcdctl prints them. --json: one object ``{"kvs": [...],
    "count": N, "more": bool}``; ``count`` is the number of keys in the range
    and ``more`` says --limit cut the listing (then ``count`` is asked of the
    cluster after the listing, so it may differ from what the listing saw).
    --count-only: the count alone.
    """
    from prkdb.client import ReadConsistency

    opts.check()
    level = ReadConsistency(CONSISTENCY[opts.consistency])

    if opts.count_only:
        async def counted(client: Any) -> int:
            n: int = await client.count(**rng, consistency=level)
            return n

        n = ctl.run_client(counted)
        ctl.emit({"count": n}, str(n))
        return

    async def body(client: Any) -> None:
        writer = JsonListWriter("kvs") if ctl.json else None
        # --json tells whether the limit cut the listing: one key more is asked for.
        ask = opts.limit + 1 if opts.limit and writer is not None else opts.limit
        shown, more = 0, False
        keys = client.scan_iter(**rng, limit=ask, keys_only=opts.keys_only, consistency=level,
                                page_size=PAGE_SIZE)
        async with contextlib.aclosing(keys):
            async for kv in keys:
                if opts.limit and shown == opts.limit:
                    more = True
                    break
                shown += 1
                if writer is not None:
                    writer.item(_kv_json(kv, encoding, opts.keys_only))
                else:
                    echo_bytes(kv.key, encoding)
                    if not opts.keys_only:
                        echo_bytes(kv.value, encoding)
        if writer is not None:
            count = await client.count(**rng, consistency=level) if more else shown
            writer.close(count=count, more=more)

    ctl.run_client(body)


@click.command()
@click.argument("start")
@click.argument("end", required=False)
@list_options
@encoding_options
@pass_ctl
@translate_errors
def scan(ctl: CtlContext, start: str, end: str | None, limit: int, keys_only: bool,
         count_only: bool, consistency: str, encoding: str) -> None:
    """Print the keys from START (included) to END (excluded), in key order.

    END omitted: to the last key; START "" starts at the first key. Output
    as `get --prefix`: per key a line with the key and one with the value
    (--keys-only: keys only); --json: {"kvs": [...], "count": N, "more":
    bool}. Exit 0 even if the range is empty. Keys stream page by page, so
    a large range is never held in memory; exit 1 midway (the cluster
    became unavailable) means the output is partial. Each partition page is
    read at one linearizable point; there is no snapshot across partitions.

    \b
    Example:
      prkctl scan user/ user0                  # keys >= "user/" and < "user0"
      prkctl scan a --limit 10 --keys-only     # the first 10 keys from "a"
      prkctl scan "" --count-only              # how many keys the cluster holds
      prkctl --json scan a b | jq -r '.kvs[].key'
    """
    s = decode_arg(start, encoding, "START")
    e = None if end is None else decode_arg(end, encoding, "END")
    if e is not None and e <= s:
        raise click.BadParameter(f"END ({end!r}) must come after START ({start!r})",
                                 param_hint="END")
    list_range(ctl, {"start": s, "end": e}, ListOptions(limit, keys_only, count_only,
                                                        consistency), encoding)
