"""The docs test's own rules (tests/docs/blocks.py), without a cluster."""

from __future__ import annotations

import os
import subprocess
import time
import types
from pathlib import Path

import pytest

from tests.docs.blocks import Block, parse
from tests.docs.test_docs_blocks import command, run_block


def one(text: str) -> Block:
    blocks = parse(text, "doc.md")
    assert len(blocks) == 1, blocks
    return blocks[0]


def test_a_marker_before_the_fence_skips_with_its_reason() -> None:
    b = one("text\n\n<!-- docs-test: skip: needs systemd; and root -->\n\n"
            "```bash\nsystemctl start x\n```\n")
    assert (b.id, b.kind, b.skip, b.problem) == (
        "doc.md:5", "shell", "needs systemd; and root", None)


def test_options_combine() -> None:
    b = one("<!-- docs-test: run timeout=90 asyncio -->\n```python\nawait f()\n```\n")
    assert (b.timeout, b.loop, b.skip, b.problem) == (90.0, "asyncio", None, None)


@pytest.mark.parametrize(("marker", "says"), [
    ("<!-- docs-test: skp: typo -->", "unknown docs-test option 'skp:'"),
    ("<!-- docs-test: skip: -->", "`skip:` needs a reason"),
    ("<!-- docs-test: timeout=soon -->", "bad timeout 'timeout=soon'"),
])
def test_a_bad_marker_fails_its_block(marker: str, says: str) -> None:
    b = one(f"{marker}\n```bash\nprkctl status\n```\n")
    assert (b.problem or "").startswith(f"doc.md:1: {says}"), b.problem


def test_a_marker_without_a_block_fails() -> None:
    blocks = parse("<!-- docs-test: skip: why -->\nprose\n```bash\nprkctl status\n```\n", "doc.md")
    assert [b.problem for b in blocks] == [
        "doc.md:1: docs-test marker not followed by a code block", None]


@pytest.mark.parametrize("line", [
    "sudo systemctl restart prkdb@node1", "pip install prkdb", "prkdb dev --nodes 3",
    "prkctl --seeds 10.0.0.1:8080 status", "prkctl wal verify /var/lib/prkdb/node1",
    "python -m pytest -q", "python scripts/bench_wal.py",
])
def test_an_unmarked_block_that_cannot_run_fails_asking_for_a_decision(line: str) -> None:
    b = one(f"```sh\n{line}\n```\n")
    assert "docs-test: skip: REASON" in (b.problem or ""), b
    forced = one(f"<!-- docs-test: run -->\n```sh\n{line}\n```\n")
    assert forced.problem is None


def test_comments_and_background_runs_do_not_count() -> None:
    b = one("```bash\nprkdb dev --nodes 3 &   # in the background\n"
            "prkctl status  # not sudo\n```\n")
    assert b.problem is None


def test_untagged_blocks_are_text_unless_they_look_like_commands() -> None:
    assert parse("```\ncluster prkdb: 3 nodes\nprkdb/raft/   the core\n```\n"
                 "```toml\n[node]\nid = 1\n```\n", "doc.md") == []
    b = one("```\n$ prkctl status\n```\n")
    assert "untagged block that looks like commands" in (b.problem or "")


def test_console_runs_prompt_lines_and_indented_fences_keep_line_numbers() -> None:
    b = one("1. step\n\n   ```console\n   $ prkctl get k\n   v\n   $ prkctl status\n   ```\n")
    assert (b.line, b.kind, b.code) == (3, "shell", "prkctl get k\n\nprkctl status")


def test_a_failure_names_the_doc_line(tmp_path: Path) -> None:
    where = types.SimpleNamespace(cwd=tmp_path, env=dict(os.environ))
    sh = one("x\n```bash\ntrue\nfalse\necho never\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"doc.md:2: shell block exited with code 1 "
                       r"after .*: line 4: `false` exited 1\n"):
        run_block(sh, where)  # type: ignore[arg-type]
    md = tmp_path / "doc.md"
    md.write_text("x\n```python\nimport sys\n\n"
                  "sys.exit(f'bad at {sys._getframe().f_lineno}')\n```\n")
    py = one(md.read_text())
    r = subprocess.run(command(py, md), capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stderr) == (1, "bad at 5\n")
    md.write_text("x\n```python\nimport sys\n\nraise ValueError('x')\n```\n")
    r = subprocess.run(command(one(md.read_text()), md), capture_output=True, text=True,
                       timeout=30)
    assert f'File "{md}", line 5' in r.stderr, r.stderr


def test_a_block_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    where = types.SimpleNamespace(cwd=tmp_path, env=dict(os.environ))
    b = one("<!-- docs-test: timeout=0.5 -->\n```bash\nsleep 60 & echo $! > pid\nwait\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"did not finish within 0.5s \(killed"):
        run_block(b, where)  # type: ignore[arg-type]
    stat = Path(f"/proc/{int((tmp_path / 'pid').read_text())}/stat")
    deadline = time.monotonic() + 5
    while True:
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
        except OSError:
            break  # gone
        assert time.monotonic() < deadline, "the block's child still runs"
        time.sleep(0.05)
