"""`prkctl watch` with a fake SDK: usage errors, the text and --json shapes, cursors,
COMPACTED and Ctrl-C (tests/prkctl/test_live_watch.py runs it against a cluster)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import trio

import prkctl.commands.watch
from prkctl.cli import CtlContext
from prkdb.client import Compacted, EventKind, WatchCursor, WatchEvent
from tests.prkctl.helpers import invoke

SEEDS = ["127.0.0.1:1"]
PUT, DELETE, EXPIRE = EventKind.PUT, EventKind.DELETE, EventKind.EXPIRE


def ev(kind: EventKind, key: bytes, revision: int, value: bytes | None = None,
       prev: bytes | None = None, partition: int = 2) -> WatchEvent:
    return WatchEvent(kind, key, revision, partition, value, prev)


class FakeWatch:
    """Hands out `script`'s events, moving the cursor to each one's revision; then
    `end` runs (raise, or wait forever)."""

    def __init__(self, script: list[WatchEvent], cursor: WatchCursor,
                 end: Callable[[FakeWatch], Any]) -> None:
        self.script = list(script)
        self.cursor = cursor
        self.end = end
        self.closed = False

    def __aiter__(self) -> FakeWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        await trio.lowlevel.checkpoint()
        if not self.script:
            await self.end(self)
        e = self.script.pop(0)
        self.cursor = WatchCursor({**self.cursor, e.partition: e.revision})
        return e

    async def __aenter__(self) -> FakeWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed = True


async def forever(w: FakeWatch) -> None:
    await trio.sleep_forever()


class FakeWatchApi:
    def __init__(self, script: Sequence[WatchEvent] = (),
                 end: Callable[[FakeWatch], Any] = forever,
                 now: dict[int, int] | None = None) -> None:
        self.script = list(script)
        self.end = end
        self.now = WatchCursor(now if now is not None else {2: 5, 3: 7})
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.watches: list[FakeWatch] = []

    async def watch_cursor(self, prefix: bytes | None = None, **kw: Any) -> WatchCursor:
        self.calls.append(("watch_cursor", dict(prefix=prefix, **kw)))
        return self.now

    def watch(self, prefix: bytes | None = None, **kw: Any) -> FakeWatch:
        self.calls.append(("watch", dict(prefix=prefix, **kw)))
        cursor = kw.get("cursor")
        w = FakeWatch(self.script, WatchCursor.parse(cursor) if cursor is not None
                      else WatchCursor(), self.end)
        self.watches.append(w)
        return w

    async def aclose(self) -> None:
        pass


def fake_ctl(client: FakeWatchApi) -> CtlContext:
    async def factory(ctl: CtlContext) -> FakeWatchApi:
        return client

    return CtlContext(client_factory=factory)


SCRIPT = [ev(PUT, b"app/a", 10, b"1"), ev(PUT, b"app/a", 11, b"2", b"1"),
          ev(DELETE, b"app/a", 12, prev=b"2"), ev(EXPIRE, b"app/b", 13, prev=b"x")]


@pytest.mark.parametrize(("args", "text"), [
    (["watch"], "missing KEY (or --prefix P)"),
    (["watch", "k", "--prefix", "p"], "give KEY [RANGE_END] or --prefix P, not both"),
    (["watch", "b", "a"], "RANGE_END ('a') must come after KEY ('b')"),
    (["watch", "a", "a"], "must come after KEY"),
    (["watch", ""], "a key must not be empty"),
    (["watch", "--hex", "zz"], "not valid hex"),
    (["watch", "k", "--max-events", "0"], "0"),
    (["watch", "k", "--cursor", "not a cursor!"], "--cursor"),
    (["watch", "k", "--cursor", "CURSOR AAAA"], "is not one this SDK made"),
    (["watch", "k", "--nope"], "No such option"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_usage_errors_exit_2_before_any_request(args: list[str], text: str) -> None:
    client = FakeWatchApi()
    res = invoke(SEEDS, *args, obj=fake_ctl(client))
    assert res.exit_code == 2, res.output
    assert text in res.stderr and client.calls == []


def test_text_events_as_etcdctl_prints_them() -> None:
    client = FakeWatchApi(SCRIPT)
    res = invoke(SEEDS, "watch", "--prefix", "app/", "--max-events", "4", obj=fake_ctl(client))
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == ["PUT", "app/a", "1", "PUT", "app/a", "2",
                                       "DELETE", "app/a", "EXPIRE", "app/b"]
    assert client.calls == [("watch", dict(prefix=b"app/", cursor=None, prev_values=False,
                                           timeout=5.0))]
    assert client.watches[0].closed
    # --prev-kv: the key and its previous value after the kind, when there was one
    res = invoke(SEEDS, "watch", "app/a", "--prev-kv", "--max-events", "3",
                 obj=fake_ctl(client := FakeWatchApi(SCRIPT)))
    assert res.stdout.splitlines() == ["PUT", "app/a", "1", "PUT", "app/a", "1", "app/a", "2",
                                       "DELETE", "app/a", "2", "app/a"]
    # one key: [KEY, KEY + 0x00); a range: [KEY, RANGE_END)
    assert client.calls[0][1]["start"] == b"app/a" and client.calls[0][1]["end"] == b"app/a\0"
    assert client.calls[0][1]["prev_values"] is True
    res = invoke(SEEDS, "--hex", "watch", "61", "62", "--max-events", "1",
                 obj=fake_ctl(client := FakeWatchApi([ev(PUT, b"a\xff", 3, b"\x00")])))
    assert res.stdout == "PUT\n61ff\n00\n"
    assert (client.calls[0][1]["start"], client.calls[0][1]["end"]) == (b"a", b"b")


def test_json_lines() -> None:
    res = invoke(SEEDS, "--json", "watch", "--prefix", "", "--prev-kv", "--max-events", "4",
                 obj=fake_ctl(FakeWatchApi(SCRIPT)))
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert lines[0] == {"kind": "PUT", "key": "app/a", "value": "1", "revision": 10,
                        "partition": 2, "prev_value": None}
    assert lines[2] == {"kind": "DELETE", "key": "app/a", "value": None, "revision": 12,
                        "partition": 2, "prev_value": "2"}
    assert [x["kind"] for x in lines] == ["PUT", "PUT", "DELETE", "EXPIRE"]
    res = invoke(SEEDS, "--json", "watch", "k", "--max-events", "1",
                 obj=fake_ctl(FakeWatchApi(SCRIPT)))
    assert "prev_value" not in json.loads(res.stdout)
    # --json needs text: a binary key in utf8 mode names --hex
    res = invoke(SEEDS, "--json", "watch", "k", obj=fake_ctl(FakeWatchApi([ev(PUT, b"\xff", 1,
                                                                              b"v")])))
    assert res.exit_code == 1 and "a key (1 bytes) is not UTF-8 text; use --hex" in res.stderr
    res = invoke(SEEDS, "--json", "--base64", "watch", "AP8=", "--max-events", "1",
                 obj=fake_ctl(FakeWatchApi([ev(PUT, b"\x00\xff", 1, b"v")])))
    assert json.loads(res.stdout)["key"] == "AP8="


def test_print_cursor_start_each_revision_and_exit() -> None:
    client = FakeWatchApi(SCRIPT[:2])
    res = invoke(SEEDS, "--json", "watch", "--prefix", "app/", "--print-cursor",
                 "--max-events", "2", obj=fake_ctl(client))
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    cursors = [WatchCursor.decode(x["cursor"]) for x in lines if "cursor" in x]
    # the start ("now" per partition), then after each revision
    assert cursors == [WatchCursor({2: 5, 3: 7}), WatchCursor({2: 10, 3: 7}),
                       WatchCursor({2: 11, 3: 7})]
    assert [("cursor" in x) for x in lines] == [True, False, True, False, True]
    assert client.calls[1][1]["cursor"] == WatchCursor({2: 5, 3: 7})  # the watch starts there
    # --cursor wins where it names a partition; a printed line is accepted as it is
    saved = WatchCursor({2: 9, 8: 1}).encode()
    for given in (saved, f"CURSOR {saved}\n", json.dumps({"cursor": saved})):
        client = FakeWatchApi(SCRIPT[1:2])
        res = invoke(SEEDS, "watch", "--prefix", "app/", "--cursor", given, "--print-cursor",
                     "--max-events", "1", obj=fake_ctl(client))
        assert res.exit_code == 0, res.output
        assert res.stdout.splitlines() == [f"CURSOR {WatchCursor({2: 9, 3: 7})}", "PUT",
                                           "app/a", "2", f"CURSOR {WatchCursor({2: 11, 3: 7})}"]
    # without --print-cursor the SDK gets --cursor as given and no extra call is made
    client = FakeWatchApi(SCRIPT[1:2])
    invoke(SEEDS, "watch", "k", "--cursor", saved, "--max-events", "1", obj=fake_ctl(client))
    assert [c[0] for c in client.calls] == ["watch"]
    assert client.calls[0][1]["cursor"] == WatchCursor({2: 9, 8: 1})


def test_idle_progress_moves_the_printed_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prkctl.commands.watch, "CURSOR_POLL", 0.01)

    async def progress_then_ctrl_c(w: FakeWatch) -> None:
        w.cursor = WatchCursor({2: 40, 3: 7})  # a progress notice, no event
        await trio.sleep(0.1)
        w.cursor = WatchCursor({2: 40, 3: 50})
        raise KeyboardInterrupt

    res = invoke(SEEDS, "watch", "k", "--print-cursor",
                 obj=fake_ctl(FakeWatchApi(SCRIPT[:1], end=progress_then_ctrl_c)))
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [
        f"CURSOR {WatchCursor({2: 5, 3: 7})}", "PUT", "app/a", "1",
        f"CURSOR {WatchCursor({2: 10, 3: 7})}", f"CURSOR {WatchCursor({2: 40, 3: 7})}",
        f"CURSOR {WatchCursor({2: 40, 3: 50})}"]  # the last one printed at exit
    assert res.stderr == ""


def test_ctrl_c_exits_0() -> None:
    async def ctrl_c(w: FakeWatch) -> None:
        raise KeyboardInterrupt

    res = invoke(SEEDS, "watch", "k", obj=fake_ctl(client := FakeWatchApi(SCRIPT[:1],
                                                                          end=ctrl_c)))
    assert (res.exit_code, res.stdout, res.stderr) == (0, "PUT\napp/a\n1\n", "")
    assert client.watches[0].closed


def test_compacted_exits_1_saying_how_to_relist() -> None:
    async def compacted(w: FakeWatch) -> None:
        raise Compacted(120, partition=3)

    res = invoke(SEEDS, "watch", "--prefix", "app/", obj=fake_ctl(FakeWatchApi(end=compacted)))
    assert res.exit_code == 1
    assert res.stderr == (
        "prkctl: compacted: partition 3 no longer keeps the events after the cursor (it keeps "
        "those after revision 120); list the keys again (prkctl get --prefix app/), then "
        "watch without --cursor (start the watch with --print-cursor first, then list: nothing "
        "is missed)\n")
    res = invoke(SEEDS, "--hex", "watch", "61", "62", "--print-cursor",
                 obj=fake_ctl(FakeWatchApi(end=compacted)))
    assert res.exit_code == 1 and "(prkctl --hex scan 61 62)" in res.stderr
    assert res.stdout.startswith("CURSOR ")  # the start was printed before the failure
