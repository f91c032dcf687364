"""Output helpers: aligned text tables, JSON, and key/value encodings."""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Sequence
from typing import Any

import click

from prkctl.errors import PrkctlError

ENCODINGS = ("utf8", "hex", "base64")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces (like kubectl / etcdctl -w table)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


class JsonListWriter:
    """One JSON object printed while its list field is still being filled (a scan streams).

    ``{"kvs": [`` is written at the first item (or at `close`), each item as
    it comes, one per line, and the remaining fields at `close`, so a listing
    of a million keys never sits in memory. If the command fails midway the
    object stays unclosed: the exit code (not 0) says the output is partial.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.items = 0

    def item(self, data: dict[str, Any]) -> None:
        head = f'{{\n  "{self.name}": [\n' if self.items == 0 else ",\n"
        click.echo(head + "    " + json.dumps(data, sort_keys=True), nl=False)
        self.items += 1

    def close(self, **fields: Any) -> None:
        out = f'{{\n  "{self.name}": []' if self.items == 0 else "\n  ]"
        for key, value in fields.items():
            out += f",\n  {json.dumps(key)}: {json.dumps(value, sort_keys=True)}"
        click.echo(out + "\n}")


def echo_bytes(data: bytes, encoding: str) -> None:
    """One line of output: raw bytes for utf8 (binary round-trips, as `get`), else encoded."""
    if encoding == "utf8":
        click.echo(data)
    else:
        click.echo(encode_bytes(data, encoding))


def decode_arg(text: str, encoding: str, what: str) -> bytes:
    """Command-line text -> bytes; raises click.BadParameter (exit 2) on bad input."""
    try:
        if encoding == "hex":
            return bytes.fromhex(text)
        if encoding == "base64":
            return base64.b64decode(text.encode("ascii"), validate=True)
        return text.encode("utf-8", "surrogateescape")
    except (ValueError, binascii.Error, UnicodeEncodeError) as e:
        raise click.BadParameter(f"{text!r} is not valid {encoding}: {e}",
                                 param_hint=what) from None


def decode_key(text: str, encoding: str) -> bytes:
    """A KEY argument -> bytes; an empty key is bad usage (exit 2), like bad hex."""
    key = decode_arg(text, encoding, "KEY")
    if not key:
        raise click.BadParameter("a key must not be empty", param_hint="KEY")
    return key


def encode_bytes(data: bytes, encoding: str, what: str = "the value") -> str:
    """bytes -> text for output; utf8 falls back to an error naming --hex/--base64."""
    if encoding == "hex":
        return data.hex()
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PrkctlError(
            f"{what} ({len(data)} bytes) is not UTF-8 text; use --hex or --base64"
        ) from None


def encoding_options(fn: Any) -> Any:
    """--hex / --base64 / --utf8 (keys and values on the command line and in the output).

    The same flags are root options (`prkctl --hex put 00ff cafe`); a command's
    own flag wins, else the root's, else utf8. The command gets the result.
    """

    @functools.wraps(fn)
    def resolved(*args: Any, encoding: str | None, **kwargs: Any) -> Any:
        if encoding is None:
            # The root's choice, on the CtlContext (the root context's obj).
            ctl = click.get_current_context().find_root().obj
            encoding = getattr(ctl, "encoding", None) or "utf8"
        return fn(*args, encoding=encoding, **kwargs)

    return encoding_flags(resolved)


def encoding_flags(fn: Any) -> Any:
    """The bare --utf8/--hex/--base64 flags, stored as `encoding` (None if absent)."""
    fn = click.option("--base64", "encoding", flag_value="base64",
                      help="Keys and values are base64.")(fn)
    fn = click.option("--hex", "encoding", flag_value="hex", help="Keys and values are hex.")(fn)
    fn = click.option("--utf8", "encoding", flag_value="utf8",
                      help="Keys and values are UTF-8 text (default).")(fn)
    return fn
