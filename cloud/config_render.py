"""A config file's schema as people read it: the commented example and the
Markdown tables of docs/configuration.md.

Both come from the ``Setting``\\ s of ``cloud.config_schema``, so the
example and the reference cannot say something the loader does not check.
In the example, each key carries its doc (and its bounds) as a comment; an
optional key is commented out unless its setting says to set it.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloud.config_schema import Key, Part, Schema

__all__ = ["example_toml", "markdown", "toml_value"]

COMMENT_COLUMN = 38  # where the example's comments start, when the line leaves room
WIDTH = 99


def toml_value(value: object) -> str:
    """``value`` written as TOML (strings and paths quoted, tuples as arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ValueError(f"no TOML for {value!r}: give the Setting an example")


# ---------------------------------------------------------------- example file


def example_toml(schema: Schema[Any], header: str) -> str:
    """The example file: ``header`` as comment lines, then every key."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for part in schema.parts:
        lines.append("")
        if part.name is not None:
            lines.append(f"[{part.name}]")
            lines.extend(_wrap("# ", part.doc, WIDTH))
        lines.extend(_part_lines(part))
    return "\n".join(lines) + "\n"


def _part_lines(part: Part) -> Iterator[str]:
    if part.table is not None:
        for name, value in part.table.example:
            yield f"{name} = {toml_value(value)}"
        for name, value in part.table.commented:
            yield f"# {name} = {toml_value(value)}"
        return
    for key in part.keys:
        commented = not key.required and not key.setting.set_in_example
        text = f"{'# ' if commented else ''}{key.name} = {toml_value(key.example)}"
        hint = key.setting.check.hint
        yield from _commented(text, key.setting.doc + (f" ({hint})" if hint else ""))


def _commented(text: str, comment: str) -> Iterator[str]:
    """``text``, then ``comment`` at the comment column (or three spaces past
    the text), wrapped onto lines of their own under it."""
    column = max(COMMENT_COLUMN, len(text) + 3)
    wrapped = _wrap("# ", comment, WIDTH - column)
    yield text.ljust(column) + wrapped[0]
    for more in wrapped[1:]:
        yield " " * column + more


def _wrap(prefix: str, text: str, width: int) -> list[str]:
    return [prefix + line for line in textwrap.wrap(text, max(width - len(prefix), 20))]


# ---------------------------------------------------------------- reference tables


def markdown(schema: Schema[Any], *, level: int = 3) -> str:
    """One table per section (one for a flat file): key, what it allows, its
    default, what it is for."""
    out: list[str] = []
    for part in schema.parts:
        if part.name is not None:
            required = " (required)" if part.required else ""
            doc = _cell(part.doc)
            out += [f"{'#' * level} `[{part.name}]`{required}", "", doc[:1].upper() + doc[1:] + "."]
            out.append("")
        if part.table is not None:
            out += _table_rows(part)
        else:
            out += ["| Key | Allowed | Default | What it is for |", "|---|---|---|---|"]
            out += [_row(key) for key in part.keys]
        for name, why in part.refused:
            out += ["", f"Never allowed: `{name}` ({_cell(why)})."]
        out.append("")
    return "\n".join(out)


def _row(key: Key) -> str:
    if key.required:
        default = "required"
    elif key.default is None:
        default = "none"
    else:
        default = f"`{toml_value(key.default)}`"
    allowed = _cell(key.setting.check.allowed)
    return f"| `{key.name}` | {allowed} | {default} | {_cell(key.setting.doc)} |"


def _table_rows(part: Part) -> list[str]:
    table = part.table
    assert table is not None
    example = [*table.example, *table.commented]
    shown = ", ".join(f"`{name} = {toml_value(value)}`" for name, value in example)
    return [
        f"| Key | Allowed | Default | {'Examples' if shown else ''} |",
        "|---|---|---|---|",
        f"| a {table.item} name: {_cell(table.name_allowed)} | {_cell(table.check.allowed)} "
        f"| none | {_cell(shown)} |",
    ]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
