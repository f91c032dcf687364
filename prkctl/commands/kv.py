"""`prkctl get|put|delete|cas|scan|txn` (also reachable as `prkctl kv ...`)."""

from __future__ import annotations

import sys
from typing import Any

import click

from prkctl.commands.lease import LEASE_ID
from prkctl.commands.scan import CONSISTENCY, ListOptions, list_options, list_range, scan
from prkctl.commands.txn import txn
from prkctl.context import CtlContext, pass_ctl, translate_errors
from prkctl.errors import PrkctlError
from prkctl.output import decode_arg, decode_key, echo_bytes, encode_bytes, encoding_options


def _write_json(key: bytes, encoding: str, result: Any, **extra: Any) -> dict[str, Any]:
    shown = key.decode("utf-8", "replace") if encoding == "utf8" else encode_bytes(key, encoding)
    return {
        "key": shown,
        "succeeded": result.succeeded,
        "revision": result.revision,
        "version": result.version,
        "prev_version": result.prev_version,
        **extra,
    }


@click.command()
@click.argument("key")
@click.option("--prefix", is_flag=True,
              help="KEY is a prefix: print every key starting with it (\"\" = all keys).")
@list_options
@encoding_options
@pass_ctl
@translate_errors
def get(ctl: CtlContext, key: str, prefix: bool, limit: int, keys_only: bool,
        count_only: bool, consistency: str, encoding: str) -> None:
    """Print the value of KEY; exit 1 if the key is absent.

    With --prefix, KEY is a prefix (as etcdctl's `get --prefix`): per key a
    line with the key and one with the value, in key order across every
    partition (--keys-only: keys only; --limit N; --count-only: how many);
    --json: {"kvs": [{key, value, version, mod_revision, create_revision,
    lease}...], "count": N, "more": bool} with `more` true when --limit cut
    the listing. Exit 0 even if no key matches. Keys stream page by page
    (see `prkctl scan`).

    \b
    Example:
      prkctl get greeting
      prkctl get --consistency stale greeting
      prkctl --json --hex get 00ff
      prkctl get --prefix config/ --keys-only
      prkctl get --prefix "" --count-only        # every key of the cluster
    """
    from prkdb.client import ReadConsistency

    if prefix:
        list_range(ctl, {"prefix": decode_arg(key, encoding, "KEY")},
                   ListOptions(limit, keys_only, count_only, consistency), encoding)
        return
    for flag, used in (("--limit", limit), ("--keys-only", keys_only),
                       ("--count-only", count_only)):
        if used:
            raise click.UsageError(f"{flag} lists a range: add --prefix (or use `prkctl scan`)")
    k = decode_key(key, encoding)
    level = ReadConsistency(CONSISTENCY[consistency])

    async def body(client: Any) -> Any:
        return await client.get_entry(k, consistency=level)

    res = ctl.run_client(body)
    if ctl.json:
        ctl.emit({
            "key": key,
            "found": res.value is not None,
            "value": None if res.value is None else encode_bytes(res.value, encoding),
            "version": res.version,
            "mod_revision": res.mod_revision,
            "applied_index": res.applied_index,
            "consistency": consistency,
        }, "")
    elif res.value is not None:
        # Raw bytes with utf8, like etcdctl: `prkctl get k > file` round-trips binary values.
        echo_bytes(res.value, encoding)
    if res.value is None:
        raise PrkctlError(f"key {key!r} not found")


@click.command()
@click.argument("key")
@click.argument("value")
@click.option("--lease", type=LEASE_ID, default=None, metavar="ID",
              help="Attach KEY to this lease (`prkctl lease grant`): the key is deleted "
              "when the lease expires or is revoked.")
@encoding_options
@pass_ctl
@translate_errors
def put(ctl: CtlContext, key: str, value: str, lease: int | None, encoding: str) -> None:
    """Store VALUE under KEY (VALUE "-" reads the value from stdin, raw).

    A put without --lease detaches KEY from any lease it had. The lease
    must live in KEY's partition: grant it with `lease grant TTL --key KEY`
    (keys sharing a hash tag, like {svc}/a and {svc}/b, share a partition).

    \b
    Example:
      prkctl put greeting hello
      prkctl put config - < settings.json
      prkctl --hex put 00ff cafe
      prkctl put --lease 7340035 svc/node1 10.0.0.1
    """
    k = decode_key(key, encoding)
    v = sys.stdin.buffer.read() if value == "-" else decode_arg(value, encoding, "VALUE")

    async def body(client: Any) -> Any:
        from prkdb.client import LeaseNotFound

        if lease is None:
            return await client.put(k, v)
        try:
            return await client.put(k, v, lease=lease)
        except LeaseNotFound:
            # The SDK sends a leased put as a one-op txn: its message names "success op 0".
            raise PrkctlError(f"lease {lease} not found (expired or revoked); {key!r} was "
                              "not written") from None

    res = ctl.run_client(body)
    extra = {} if lease is None else {"lease": lease}
    ctl.emit(_write_json(k, encoding, res, **extra),
             f"OK revision={res.revision} version={res.version}")


@click.command()
@click.argument("key")
@encoding_options
@pass_ctl
@translate_errors
def delete(ctl: CtlContext, key: str, encoding: str) -> None:
    """Remove KEY (exit 0 even if it was absent; the output says which).

    \b
    Example:
      prkctl delete greeting
    """
    k = decode_key(key, encoding)

    async def body(client: Any) -> Any:
        return await client.delete(k)

    res = ctl.run_client(body)
    existed = res.prev_version != 0
    ctl.emit(_write_json(k, encoding, res, existed=existed),
             f"{'deleted' if existed else 'absent'} revision={res.revision}")


@click.command()
@click.argument("key")
@click.argument("new", metavar="NEW")
@click.option("--expect", "expect", metavar="OLD", help="The value KEY must have now.")
@click.option("--expect-absent", is_flag=True, help="KEY must not exist now.")
@click.option("--expect-version", type=click.IntRange(min=0),
              help="The version KEY must have now (0 = absent).")
@encoding_options
@pass_ctl
@translate_errors
def cas(ctl: CtlContext, key: str, new: str, expect: str | None, expect_absent: bool,
        expect_version: int | None, encoding: str) -> None:
    """Compare-and-set: store NEW under KEY only if the expectation holds.

    Exit 0 if it was stored, 1 if the comparison failed (the current version
    is printed), 3 if the outcome is unknown.

    \b
    Example:
      prkctl cas --expect-absent lock me         # take a lock
      prkctl cas lock --expect me you            # hand it over
      prkctl cas counter --expect-version 7 8
    """
    from prkdb.client import UNSET

    if expect is not None and expect_absent:
        raise click.UsageError("--expect and --expect-absent exclude each other")
    if expect is None and not expect_absent and expect_version is None:
        raise click.UsageError("cas needs --expect OLD, --expect-absent or --expect-version")
    k = decode_key(key, encoding)
    n = decode_arg(new, encoding, "NEW")
    expected: Any = UNSET
    if expect_absent:
        expected = None
    elif expect is not None:
        expected = decode_arg(expect, encoding, "--expect")

    async def body(client: Any) -> Any:
        return await client.cas(k, expected_value=expected, expected_version=expect_version,
                                new_value=n)

    res = ctl.run_client(body)
    ctl.emit(_write_json(k, encoding, res),
             f"OK revision={res.revision} version={res.version}" if res.succeeded
             else f"FAILED current version={res.version}")
    if not res.succeeded:
        raise PrkctlError(f"cas failed: the condition does not hold (current version "
                          f"{res.version})")


COMMANDS = (get, put, delete, cas, scan, txn)


@click.group()
def kv() -> None:
    """Keys and values (the same commands as `prkctl get|put|delete|cas|scan|txn`).

    \b
    Example:
      prkctl kv put greeting hello && prkctl kv get greeting
    """


for _cmd in COMMANDS:
    kv.add_command(_cmd)
