#!/usr/bin/env python3
"""Regenerate docs/protocol.md from the wire schema tables.

Usage: python scripts/gen_protocol_doc.py [--check]
  --check  exit 1 (and write nothing) if the committed file is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prkdb.wire.docgen import render  # noqa: E402

DOC = ROOT / "docs" / "protocol.md"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is out of date; run: python scripts/gen_protocol_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
