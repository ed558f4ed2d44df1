"""The field tables of docs/protocol.md, generated from the ``cloud.messages`` types.

The contract reference and the code must not drift apart, so each message's
table is not written by hand: docs/protocol.md holds blocks

    <!-- fields: PayOrder -->
    ...
    <!-- /fields -->

whose body is ``table(PayOrder)``. ``python -m cloud.field_tables
docs/protocol.md`` rewrites every block from the types; a test
(tests/cloud/test_protocol_doc.py) fails when a block differs from what this
module generates. Pure: no I/O but in ``main``.
"""

from __future__ import annotations

import enum
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi

from cloud import messages

BLOCK = re.compile(r"(<!-- fields: (?P<name>\w+) -->\n)(?P<body>.*?)(<!-- /fields -->)", re.DOTALL)


def _type_text(t: mi.Type) -> str:
    if isinstance(t, mi.UnionType):
        inner = [x for x in t.types if not isinstance(x, mi.NoneType)]
        return " or ".join(_type_text(x) for x in inner)
    if isinstance(t, mi.StrType):
        lo, hi = t.min_length, t.max_length
        if lo and hi is not None:
            return f"string ({lo}..{hi} chars)"
        if hi is not None:
            return f"string (<= {hi} chars)"
        return f"string (>= {lo} chars)" if lo else "string"
    if isinstance(t, mi.DecimalType):
        return "number (decimal)"
    if isinstance(t, mi.BoolType):
        return "boolean"
    if isinstance(t, mi.IntType):
        return "integer"
    if isinstance(t, mi.EnumType):
        values = [str(v.value) for v in t.cls]
        return " \\| ".join(f"`{v}`" for v in values)
    if isinstance(t, mi.DictType):
        return f"object of {_type_text(t.value_type)}"
    return type(t).__name__.removesuffix("Type").lower()


def _default_text(value: Any) -> str:
    if value is msgspec.NODEFAULT or value is None:
        return ""
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, int | Decimal | str):
        return f"`{value}`"
    return ""


def table(struct: type[msgspec.Struct]) -> str:
    """The markdown table of ``struct``'s wire fields, in declaration order."""
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    lines = ["| field | type | required | default |", "|---|---|---|---|"]
    for f in info.fields:
        cells = (f"`{f.encode_name}`", _type_text(f.type), "yes" if f.required else "")
        lines.append(f"| {' | '.join(cells)} | {_default_text(f.default)} |")
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """``text`` with every fields block regenerated. Raises KeyError for a
    block that names no ``cloud.messages`` Struct."""

    def block(match: re.Match[str]) -> str:
        struct = getattr(messages, match["name"])
        if not (isinstance(struct, type) and issubclass(struct, msgspec.Struct)):
            raise KeyError(match["name"])
        return f"{match.group(1)}{table(struct)}{match.group(4)}"

    return BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cloud.field_tables docs/protocol.md", file=sys.stderr)
        return 2
    path = Path(args[0])
    text = path.read_text("utf-8")
    new = render(text)
    if new != text:
        path.write_text(new, "utf-8")
        print(f"{path}: field tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
