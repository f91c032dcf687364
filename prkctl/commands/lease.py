"""`prkctl lease grant|revoke|ttl|list|keep-alive`: leases, as etcdctl's `lease` commands.

A lease lives in one partition and holds keys of that partition; its id
(printed in decimal, as the SDK and --json show it) is ``grant_index << 16 |
partition``, so ``id & 0xFFFF`` names the partition. Only the partition's
leader counts a lease's time; a new leader gives every lease its full TTL
again, so a leader change never expires a lease early (docs/operations.md).
"""

from __future__ import annotations

from typing import Any

import click
import trio

from prkctl.context import CtlContext, pass_ctl, translate_errors
from prkctl.errors import PrkctlError
from prkctl.output import decode_key, echo_bytes, encode_bytes, encoding_options, table

__all__ = ["LEASE_ID", "LeaseIdType", "lease"]

_PARTITION_MASK = 0xFFFF


class LeaseIdType(click.ParamType):
    """A lease id: decimal as prkctl prints it, or 0x-prefixed hex; > 0."""

    name = "lease_id"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            text = str(value).strip()
            try:
                n = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
            except ValueError:
                self.fail(f"{value!r} is not a lease id (a number, as `prkctl lease grant` "
                          "prints it)", param, ctx)
        if not 0 < n < 1 << 64:
            self.fail(f"{value!r} is not a lease id (ids are > 0)", param, ctx)
        return n


LEASE_ID = LeaseIdType()


def _seconds(x: float) -> str:
    """2.0 -> "2s", 1.25 -> "1.25s" (ms precision: what the wire carries)."""
    return f"{round(x, 3):g}s"


def _status_json(st: Any) -> dict[str, Any]:
    return {"id": st.id, "partition": st.id & _PARTITION_MASK, "ttl": st.ttl,
            "remaining": st.remaining}


@click.group()
def lease() -> None:
    """Leases: keys that expire unless kept alive (TTL in seconds).

    \b
    Example:
      ID=$(prkctl lease grant 30 --key svc/node1)
      prkctl put --lease "$ID" svc/node1 10.0.0.1
      prkctl lease keep-alive "$ID"              # until Ctrl-C
      prkctl lease revoke "$ID"                  # deletes svc/node1 too
    """


@lease.command()
@click.argument("ttl", type=click.FloatRange(min=0, min_open=True))
@click.option("--key", default=None, metavar="KEY",
              help="Grant the lease in KEY's partition (the keys it will hold must be "
              "there). Default: any partition.")
@encoding_options
@pass_ctl
@translate_errors
def grant(ctl: CtlContext, ttl: float, key: str | None, encoding: str) -> None:
    """Grant a lease of TTL seconds; print its id.

    A lease holds keys of its own partition only: pass --key with one of the
    keys it will hold (keys with the same hash tag, {svc}/a and {svc}/b,
    share a partition). The cluster raises a TTL below its minimum (2 s by
    default, above the election timeout); a note on stderr then says so.
    --json: {"id", "partition", "ttl"}.

    \b
    Example:
      prkctl lease grant 10
      ID=$(prkctl lease grant 30 --key '{svc}/node1')
    """
    k = b"" if key is None else decode_key(key, encoding)

    async def body(client: Any) -> Any:
        return await client.grant_lease(ttl, key=k)

    granted = ctl.run_client(body)
    if granted.ttl > ttl:
        click.echo(f"prkctl: note: TTL raised to {_seconds(granted.ttl)} (the cluster's "
                   "minimum)", err=True)
    ctl.emit({"id": granted.id, "partition": granted.partition, "ttl": granted.ttl},
             str(granted.id))


@lease.command()
@click.argument("lease_id", metavar="ID", type=LEASE_ID)
@pass_ctl
@translate_errors
def revoke(ctl: CtlContext, lease_id: int) -> None:
    """Revoke lease ID and delete every key attached to it (one revision).

    Exit 1 if there is no such lease (expired, revoked or never granted).
    --json: {"id", "keys_deleted"}.

    \b
    Example:
      prkctl lease revoke 7340035
    """

    async def body(client: Any) -> int:
        n: int = await client.revoke_lease(lease_id)
        return n

    n = ctl.run_client(body)
    ctl.emit({"id": lease_id, "keys_deleted": n},
             f"lease {lease_id} revoked, {n} key{'' if n == 1 else 's'} deleted")


@lease.command()
@click.argument("lease_id", metavar="ID", type=LEASE_ID)
@click.option("--keys", is_flag=True, help="Also print the keys attached to the lease.")
@encoding_options
@pass_ctl
@translate_errors
def ttl(ctl: CtlContext, lease_id: int, keys: bool, encoding: str) -> None:
    """Print lease ID's granted TTL and the seconds it has left.

    The time left is the partition leader's count. Exit 1 if there is no
    such lease. With --keys, one attached key per line follows.
    --json: {"id", "partition", "ttl", "remaining", "keys"}.

    \b
    Example:
      prkctl lease ttl 7340035 --keys
    """

    async def body(client: Any) -> Any:
        return await client.lease_ttl(lease_id, keys=keys)

    st = ctl.run_client(body)
    if ctl.json:
        data = _status_json(st)
        if keys:
            data["keys"] = [encode_bytes(k, encoding, "a key") for k in st.keys]
        ctl.emit(data, "")
        return
    click.echo(f"lease {st.id} ttl={_seconds(st.ttl)} remaining={_seconds(st.remaining)}"
               + (f" keys={len(st.keys)}" if keys else ""))
    for k in st.keys:
        echo_bytes(k, encoding)


@lease.command(name="list")
@pass_ctl
@translate_errors
def list_(ctl: CtlContext) -> None:
    """List every lease of the cluster (each partition's leader is asked).

    --json: {"leases": [{"id", "partition", "ttl", "remaining"}...]}.

    \b
    Example:
      prkctl lease list
      prkctl --json lease list | jq '.leases[].id'
    """

    async def body(client: Any) -> Any:
        return await client.leases()

    leases = ctl.run_client(body)
    rows = [[st.id, st.id & _PARTITION_MASK, _seconds(st.ttl), _seconds(st.remaining)]
            for st in leases]
    ctl.emit({"leases": [_status_json(st) for st in leases]},
             table(["ID", "PARTITION", "TTL", "REMAINING"], rows))


@lease.command(name="keep-alive")
@click.argument("lease_id", metavar="ID", type=LEASE_ID)
@click.option("--once", is_flag=True, help="Renew once and exit.")
@pass_ctl
@translate_errors
def keep_alive(ctl: CtlContext, lease_id: int, once: bool) -> None:
    """Keep lease ID alive until Ctrl-C, renewing it every TTL/3.

    Prints a line per renewal with the seconds left (--json: one object per
    line, {"id", "remaining"}). Ctrl-C stops renewing and exits 0; the lease
    then expires after its TTL (revoke it to end it now). Exit 1 when the
    lease is gone (expired or revoked), or when no renewal succeeded for a
    whole TTL (the cluster unavailable: the lease may have expired).

    \b
    Example:
      prkctl lease keep-alive 7340035
      prkctl lease keep-alive --once 7340035
    """

    def report(left: float) -> None:
        ctl.emit_line({"id": lease_id, "remaining": left},
                      f"lease {lease_id} kept alive, remaining {_seconds(left)}")

    async def body(client: Any) -> None:
        from prkdb.client import Unavailable

        status = await client.lease_ttl(lease_id)
        report(await client.keep_alive_once(lease_id))
        if once:
            return
        interval = max(status.ttl / 3, 0.05)
        last_ok = trio.current_time()
        wait = interval
        while True:
            await trio.sleep(wait)
            try:
                left = await client.keep_alive_once(lease_id, timeout=min(ctl.timeout,
                                                                          interval))
            except Unavailable as e:
                # A leader change or a brief outage: try again soon (the SDK already
                # retried within its timeout), until a whole TTL passed without renewal.
                wait = min(interval, 0.2)
                if trio.current_time() - last_ok >= status.ttl:
                    raise PrkctlError(
                        f"lease {lease_id}: no keep-alive succeeded for its whole TTL "
                        f"({_seconds(status.ttl)}); it may have expired ({e.message or e})"
                    ) from e
                click.echo(f"prkctl: keep-alive of lease {lease_id} failed, retrying: "
                           f"{e.message or e}", err=True)
                continue
            last_ok = trio.current_time()
            wait = interval
            report(left)

    try:
        ctl.run_client(body)
    except KeyboardInterrupt:
        # Ctrl-C is how this command is meant to end.
        return
