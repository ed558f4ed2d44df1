"""docs/protocol.md, the project's contract reference, against the code: its
field tables are what ``cloud.field_tables`` generates from ``cloud.messages``,
every wire message has one, and nothing in the source cites a contract
outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from cloud import field_tables, messages

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "protocol.md"


def test_field_tables_are_generated_from_the_types() -> None:
    text = DOC.read_text("utf-8")
    assert field_tables.render(text) == text, (
        "docs/protocol.md drifted from cloud/messages.py: run "
        "`.venv/bin/python -m cloud.field_tables docs/protocol.md` and review the diff"
    )


def test_every_wire_message_has_a_table() -> None:
    documented = {m["name"] for m in field_tables.BLOCK.finditer(DOC.read_text("utf-8"))}
    wire = {
        name
        for name, obj in vars(messages).items()
        if isinstance(obj, type) and issubclass(obj, messages.Wire) and obj is not messages.Wire
    }
    assert wire - documented == set()


def test_a_changed_type_is_caught() -> None:
    class Probe(msgspec.Struct, kw_only=True):
        kept: str
        added: int = 3

    assert "| `added` | integer |  | `3` |" in field_tables.table(Probe)
    stale = "<!-- fields: PushClose -->\n| old |\n<!-- /fields -->"
    assert field_tables.render(stale) != stale
    with pytest.raises(KeyError):
        field_tables.render("<!-- fields: decode -->\n<!-- /fields -->")


def test_citations_stay_in_the_repository() -> None:
    """Code cites docs/protocol.md, never the shared docs/protocol.md or a path on
    a build machine."""
    outside = re.compile(r"PROTOCOL\.md|/work/|\.\./shared|shared/reference")
    hits = []
    for path in REPO.rglob("*"):
        if path.suffix not in {".py", ".md", ".toml", ".service", ".sh", ".rules"}:
            continue
        if any(part in {".venv", ".git", "node_modules"} for part in path.parts):
            continue
        for number, line in enumerate(path.read_text("utf-8", "replace").splitlines(), 1):
            if outside.search(line) and path != Path(__file__):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert hits == []
