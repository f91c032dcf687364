"""`prkctl user add|delete|passwd|grant|revoke|list`: the cluster's users (root only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from prkctl.context import CtlContext, pass_ctl, translate_errors
from prkctl.output import table


@click.group()
def user() -> None:
    """Users (a cluster with [auth] enabled; every command needs the root role).

    \b
    Example:
      prkctl --user root --password-file root.pw user add alice --roles app
      prkctl --user root --password-file root.pw user list
    """


def new_password(path: str | None, name: str) -> str:
    """The new password: the first line of `path`, else asked twice on the terminal."""
    if path is None:
        value: str = click.prompt(f"password for {name}", hide_input=True,
                                  confirmation_prompt=True, err=True)
        return value
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise click.BadParameter(str(e), param_hint="--new-password-file") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise click.BadParameter(f"{path}: the first line is empty",
                                 param_hint="--new-password-file")
    return password


_NEW_PASSWORD = click.option(
    "--new-password-file", metavar="FILE", type=click.Path(dir_okay=False),
    help="The new password: the first line of FILE (else asked on the terminal).")


@user.command("add")
@click.argument("name")
@_NEW_PASSWORD
@click.option("--no-password", is_flag=True,
              help="No password: the user logs in with a client certificate (CN = NAME) only.")
@click.option("--roles", default="", metavar="R1,R2", help="Roles to give it (comma-separated).")
@pass_ctl
@translate_errors
def add(ctl: CtlContext, name: str, new_password_file: str | None, no_password: bool,
        roles: str) -> None:
    """Create user NAME.

    \b
    Example:
      prkctl user add alice --roles app --new-password-file alice.pw
    """
    if no_password and new_password_file:
        raise click.UsageError("--no-password and --new-password-file exclude each other")
    password = None if no_password else new_password(new_password_file, name)
    role_list = [r for r in roles.split(",") if r]

    async def body(client: Any) -> Any:
        return await client.user_add(name, password, role_list)

    reply = ctl.run_client(body)
    ctl.emit({"user": name, "roles": role_list, **reply.details}, f"user {name} added")


@user.command("delete")
@click.argument("name")
@pass_ctl
@translate_errors
def delete(ctl: CtlContext, name: str) -> None:
    """Delete user NAME (its tokens stop working at once).

    \b
    Example:
      prkctl user delete alice
    """
    reply = ctl.run_client(lambda client: client.user_delete(name))
    ctl.emit({"user": name, **reply.details}, f"user {name} deleted")


@user.command("passwd")
@click.argument("name")
@_NEW_PASSWORD
@pass_ctl
@translate_errors
def passwd(ctl: CtlContext, name: str, new_password_file: str | None) -> None:
    """Set NAME's password (every token issued before is void).

    \b
    Example:
      prkctl user passwd alice --new-password-file alice.pw
    """
    password = new_password(new_password_file, name)
    reply = ctl.run_client(lambda client: client.user_passwd(name, password))
    ctl.emit({"user": name, **reply.details}, f"password of {name} changed")


@user.command("grant")
@click.argument("name")
@click.argument("role")
@pass_ctl
@translate_errors
def grant(ctl: CtlContext, name: str, role: str) -> None:
    """Give user NAME the role ROLE.

    \b
    Example:
      prkctl user grant alice app
    """
    reply = ctl.run_client(lambda client: client.user_grant(name, role))
    ctl.emit({"user": name, "role": role, **reply.details}, f"user {name} got role {role}")


@user.command("revoke")
@click.argument("name")
@click.argument("role")
@pass_ctl
@translate_errors
def revoke(ctl: CtlContext, name: str, role: str) -> None:
    """Take the role ROLE from user NAME.

    \b
    Example:
      prkctl user revoke alice app
    """
    reply = ctl.run_client(lambda client: client.user_revoke(name, role))
    ctl.emit({"user": name, "role": role, **reply.details}, f"user {name} lost role {role}")


@user.command("list")
@pass_ctl
@translate_errors
def list_(ctl: CtlContext) -> None:
    """Every user, its roles, and whether it has a password.

    \b
    Example:
      prkctl --json user list
    """
    users = ctl.run_client(lambda client: client.users())
    data = [{"user": u.name, "roles": list(u.roles), "password": u.has_password}
            for u in users]
    ctl.emit(data, lambda: click.echo(table(
        ["USER", "ROLES", "PASSWORD"],
        [[u.name, ",".join(u.roles) or "-", "yes" if u.has_password else "no"]
         for u in users])))
