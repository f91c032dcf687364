"""docs/protocol.md is generated from the schema tables and must be up to date."""

from __future__ import annotations

from pathlib import Path

from prkdb.wire import messages as m
from prkdb.wire.docgen import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_protocol_doc_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/protocol.md is stale: run `python scripts/gen_protocol_doc.py`"
    )


def test_doc_mentions_every_message_and_field() -> None:
    text = render()
    for schema in m.SCHEMAS.values():
        assert f"#### {schema.name} (type id {schema.type_id})" in text
        for f in schema.fields:
            assert f"`{f.name}`" in text
