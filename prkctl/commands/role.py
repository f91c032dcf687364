"""`prkctl role add|delete|grant|revoke|list`: roles and their key-range permissions (root only)."""

from __future__ import annotations

from typing import Any

import click

from prkctl.context import CtlContext, pass_ctl, translate_errors
from prkctl.output import decode_arg, decode_key, encode_bytes, encoding_options, table
from prkdb.client.scan import prefix_end
from prkdb.wire.messages import Perm


@click.group()
def role() -> None:
    """Roles: READ or READWRITE on key ranges (etcd's key-range permissions; root only).

    The role root is built in and allows everything, admin requests included.

    \b
    Example:
      prkctl role add app
      prkctl role grant app readwrite app/ --prefix      # every key starting with app/
      prkctl role grant app read config/a config/m       # the keys in [config/a, config/m)
      prkctl user grant alice app
    """


def key_range(key: str, range_end: str | None, prefix: bool, encoding: str
              ) -> tuple[bytes, bytes | None]:
    """KEY [RANGE_END] / --prefix as ``[start, end)``; one key alone is ``[key, key 0x00)``."""
    start = decode_key(key, encoding)
    if prefix:
        if range_end is not None:
            raise click.UsageError("give RANGE_END or --prefix, not both")
        return start, prefix_end(start)
    if range_end is None:
        return start, start + b"\x00"
    end = decode_arg(range_end, encoding, "RANGE_END")
    if end <= start:
        raise click.BadParameter("must be greater than KEY", param_hint="RANGE_END")
    return start, end


def _describe(start: bytes, end: bytes | None, encoding: str) -> str:
    if end == start + b"\x00":
        return encode_bytes(start, encoding, "the key")
    if end is not None and end == prefix_end(start):
        return encode_bytes(start, encoding, "the key") + "*"
    return (f"[{encode_bytes(start, encoding, 'the key')}, "
            f"{'<no end>' if end is None else encode_bytes(end, encoding, 'the range end')})")


@role.command("add")
@click.argument("name")
@pass_ctl
@translate_errors
def add(ctl: CtlContext, name: str) -> None:
    """Create role NAME (no permissions yet).

    \b
    Example:
      prkctl role add app
    """
    reply = ctl.run_client(lambda client: client.role_add(name))
    ctl.emit({"role": name, **reply.details}, f"role {name} added")


@role.command("delete")
@click.argument("name")
@pass_ctl
@translate_errors
def delete(ctl: CtlContext, name: str) -> None:
    """Delete role NAME (users that had it lose it).

    \b
    Example:
      prkctl role delete app
    """
    reply = ctl.run_client(lambda client: client.role_delete(name))
    ctl.emit({"role": name, **reply.details}, f"role {name} deleted")


_PERMS = {"read": Perm.READ, "readwrite": Perm.READWRITE}


@role.command("grant")
@click.argument("name")
@click.argument("perm", type=click.Choice(sorted(_PERMS)))
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True, help="Every key that starts with KEY.")
@encoding_options
@pass_ctl
@translate_errors
def grant(ctl: CtlContext, name: str, perm: str, key: str, range_end: str | None,
          prefix: bool, encoding: str) -> None:
    """Give role NAME PERM (read|readwrite) on KEY, [KEY, RANGE_END) or --prefix KEY.

    \b
    Example:
      prkctl role grant app readwrite app/ --prefix
      prkctl role grant app read config/a config/m
    """
    start, end = key_range(key, range_end, prefix, encoding)

    async def body(client: Any) -> Any:
        return await client.role_grant(name, start, end, _PERMS[perm])

    reply = ctl.run_client(body)
    what = _describe(start, end, encoding)
    ctl.emit({"role": name, "perm": perm, "range": what, **reply.details},
             f"role {name}: {perm} on {what}")


@role.command("revoke")
@click.argument("name")
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True, help="The range a grant --prefix KEY gave.")
@encoding_options
@pass_ctl
@translate_errors
def revoke(ctl: CtlContext, name: str, key: str, range_end: str | None, prefix: bool,
           encoding: str) -> None:
    """Take back the permission role NAME has on exactly that range.

    \b
    Example:
      prkctl role revoke app app/ --prefix
    """
    start, end = key_range(key, range_end, prefix, encoding)
    reply = ctl.run_client(lambda client: client.role_revoke(name, start, end))
    what = _describe(start, end, encoding)
    ctl.emit({"role": name, "range": what, **reply.details}, f"role {name}: revoked {what}")


@role.command("list")
@encoding_options
@pass_ctl
@translate_errors
def list_(ctl: CtlContext, encoding: str) -> None:
    """Every role and its permissions.

    \b
    Example:
      prkctl role list
    """
    roles = ctl.run_client(lambda client: client.roles())
    data = [{"role": r.name, "all": r.name == "root",
             "perms": [{"range": _describe(p.start, p.end, encoding),
                        "perm": p.perm.name.lower()} for p in r.perms]} for r in roles]
    rows = []
    for r in roles:
        perms = ["everything"] if r.name == "root" else [
            f"{p.perm.name.lower()} {_describe(p.start, p.end, encoding)}" for p in r.perms]
        rows.append([r.name, "; ".join(perms) or "-"])
    ctl.emit(data, lambda: click.echo(table(["ROLE", "PERMISSIONS"], rows)))
