"""docs/configuration.md and the example config are made from the schemas, and stay so."""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from agent.config import SCHEMA as AGENT_SCHEMA
from agent.config import dump_example
from agent.config_docs import DOC, EXAMPLE, REGENERATE, document
from cloud.config import SCHEMA as POS_SCHEMA
from cloud.config_schema import Key, Schema

REPO = Path(__file__).resolve().parents[2]


def test_configuration_md_is_made_from_the_schemas() -> None:
    assert (REPO / DOC).read_text("utf-8") == document(), (
        f"{DOC} is out of date with agent/config.py or cloud/config.py: run `{REGENERATE}`"
    )


def test_the_example_file_is_made_from_the_schema() -> None:
    assert (REPO / EXAMPLE).read_text("utf-8") == dump_example(), (
        f"{EXAMPLE} is out of date with agent/config.py: run `{REGENERATE}`"
    )


def test_every_key_is_in_the_doc_and_every_agent_key_in_the_example() -> None:
    doc = document()
    example = dump_example()
    for key in AGENT_SCHEMA.keys:
        assert f"| `{key.name}` |" in doc
        assert f"{key.name} = " in example, key.path
    for key in POS_SCHEMA.keys:
        assert f"| `{key.name}` |" in doc


def test_the_commands_print_what_the_files_hold() -> None:
    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "agent.config_docs", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    assert run("--example") == dump_example()
    assert run() == document()


def _is(value: object, annotation: object) -> bool:
    """``value`` is of the (annotated, optional, literal, tuple) type ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _is(value, args[0])
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in args)
    if origin is tuple:
        return isinstance(value, tuple) and all(_is(v, args[0]) for v in value)
    if annotation is type(None):
        return value is None
    assert isinstance(annotation, type), annotation
    return isinstance(value, annotation)


def _examples(schema: Schema[Any]) -> list[Key]:
    # The POS's key files are read and loaded by their check: not examples to convert.
    return [k for k in schema.keys if not k.name.endswith("key_file")]


@pytest.mark.parametrize(
    "key", [*_examples(AGENT_SCHEMA), *_examples(POS_SCHEMA)], ids=lambda k: k.path
)
def test_each_example_converts_to_the_attributes_type(key: Key, tmp_path: Path) -> None:
    """The check and the annotation of a key say the same type: the example
    value, converted, is what the attribute holds (and so is the default)."""
    hints = {
        **typing.get_type_hints(POS_SCHEMA.root, include_extras=True),
        **{
            f"{part.name}.{name}": hint
            for part in AGENT_SCHEMA.parts
            if part.build is not None and part.name is not None
            for name, hint in typing.get_type_hints(part.build, include_extras=True).items()
        },
    }
    annotation = hints[key.attr if key.section is None else f"{key.section}.{key.attr}"]
    example = key.example
    if isinstance(example, Path):
        example = str(example)
    if isinstance(example, tuple):
        example = list(example)
    assert _is(key.setting.check.convert(example, tmp_path), annotation)
    if not key.required:
        assert _is(key.default, annotation)
