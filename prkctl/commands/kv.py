"""`prkctl get|put|delete|cas` (also reachable as `prkctl kv get|put|delete|cas`)."""

from __future__ import annotations

import sys
from typing import Any

import click

from prkctl.context import CtlContext, pass_ctl, translate_errors
from prkctl.errors import PrkctlError
from prkctl.output import decode_arg, decode_key, encode_bytes, encoding_options

CONSISTENCY = {"linearizable": 0, "follower": 1, "stale": 2}


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
@click.option("--consistency", type=click.Choice(list(CONSISTENCY)), default="linearizable",
              show_default=True, help="linearizable: at the leader; follower: a follower after "
              "a ReadIndex (also linearizable); stale: any replica's local state.")
@encoding_options
@pass_ctl
@translate_errors
def get(ctl: CtlContext, key: str, consistency: str, encoding: str) -> None:
    """Print the value of KEY; exit 1 if the key is absent.

    \b
    Example:
      prkctl get greeting
      prkctl get --consistency stale greeting
      prkctl --json --hex get 00ff
    """
    from prkdb.client import ReadConsistency

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
        if encoding == "utf8":
            # Raw bytes, like etcdctl: `prkctl get k > file` round-trips binary values.
            click.echo(res.value)
        else:
            click.echo(encode_bytes(res.value, encoding))
    if res.value is None:
        raise PrkctlError(f"key {key!r} not found")


@click.command()
@click.argument("key")
@click.argument("value")
@encoding_options
@pass_ctl
@translate_errors
def put(ctl: CtlContext, key: str, value: str, encoding: str) -> None:
    """Store VALUE under KEY (VALUE "-" reads the value from stdin, raw).

    \b
    Example:
      prkctl put greeting hello
      prkctl put config - < settings.json
      prkctl --hex put 00ff cafe
    """
    k = decode_key(key, encoding)
    v = sys.stdin.buffer.read() if value == "-" else decode_arg(value, encoding, "VALUE")

    async def body(client: Any) -> Any:
        return await client.put(k, v)

    res = ctl.run_client(body)
    ctl.emit(_write_json(k, encoding, res),
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


COMMANDS = (get, put, delete, cas)


@click.group()
def kv() -> None:
    """Keys and values (the same commands as `prkctl get|put|delete|cas`).

    \b
    Example:
      prkctl kv put greeting hello && prkctl kv get greeting
    """


for _cmd in COMMANDS:
    kv.add_command(_cmd)
