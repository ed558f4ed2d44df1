"""cloud.config_schema: a config class is its file's schema; one ConfigError."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
import pytest

from cloud.config_checks import FilePath, Flag, Integer, Seconds, Text
from cloud.config_render import example_toml, markdown
from cloud.config_schema import (
    EX_CONFIG,
    ConfigError,
    Invalid,
    Problem,
    Rule,
    Schema,
    Section,
    Setting,
    Table,
    Wording,
)
from cloud.errors import SadadError

REPO = Path(__file__).resolve().parents[2]


class Link(msgspec.Struct, frozen=True, kw_only=True):
    host: Annotated[str, Setting(Text(), "the far end", example="example.org")]
    port: Annotated[int, Setting(Integer(1, 65535), "its port", set_in_example=True)] = 443
    retry: Annotated[float, Setting(Seconds(0.5, 60), "seconds between tries")] = 2.0


class Files(msgspec.Struct, frozen=True, kw_only=True):
    log: Annotated[
        Path | None, Setting(FilePath("a log file"), "where to log", example="x.log")
    ] = None
    verbose: Annotated[bool, Setting(Flag(), "log more")] = False


def _even(value: object, _base: Path) -> object:
    if not isinstance(value, int) or value % 2:
        raise Invalid("must be even")
    return value


class Root(msgspec.Struct, frozen=True, kw_only=True):
    """A file of sections."""

    link: Annotated[Link, Section("the link", refused=(("password", "never here: use a file"),))]
    files: Annotated[Files, Section("the files")] = msgspec.field(default_factory=Files)
    counts: Annotated[
        dict[str, int],
        Table(
            "NAME = EVEN",
            item="count",
            name=re.compile(r"[a-z]+"),
            name_allowed="lowercase letters",
            check=Rule("an even integer", _even),
            example=(("two", 2),),
        ),
    ] = msgspec.field(default_factory=dict)
    source: Path | None = None


@dataclass(frozen=True, slots=True)
class Flat:
    """A flat file, as a dataclass."""

    name: Annotated[str, Setting(Text(), "a name", key="the_name", example="n")]
    size: Annotated[int, Setting(Integer(0, 9), "a size")] = 1


SCHEMA = Schema(Root)
FLAT = Schema(Flat, wording=Wording(missing_key="is required", bad_value="{problem}"))


def test_a_good_file_builds_the_classes(tmp_path: Path) -> None:
    text = '[link]\nhost = "h"\nport = 8\n[files]\nlog = "a.log"\n[counts]\nsix = 6\n'
    root = SCHEMA.loads(text, file="f.toml", base=tmp_path, extra={"source": tmp_path})
    assert root == Root(
        link=Link(host="h", port=8),
        files=Files(log=tmp_path / "a.log"),
        counts={"six": 6},
        source=tmp_path,
    )
    assert isinstance(root.link.retry, float)
    flat = FLAT.loads('the_name = "x"', file="g.toml", base=tmp_path)
    assert flat == Flat(name="x")


def test_every_problem_at_once_each_naming_file_and_key(tmp_path: Path) -> None:
    text = (
        'top = 1\n[link]\nhots = "h"\nport = 0\npassword = "s3cret"\n'
        '[files]\nverbose = "yes"\n[counts]\nThree = 3\nfive = 5\n[extra]\n'
    )
    with pytest.raises(ConfigError) as info:
        SCHEMA.loads(text, file="f.toml", base=tmp_path)
    assert info.value.problems == [
        "f.toml: top: not allowed at the top level; settings belong in a section: "
        "link, files, counts",
        "f.toml: link.hots: unknown key (did you mean host?); allowed: host, port, retry, password",
        "f.toml: link.host: required key is missing; it must be a non-empty string",
        "f.toml: link.port: must be an integer 1..65535, got 0",
        "f.toml: link.password: never here: use a file",
        'f.toml: files.verbose: must be true or false, got "yes"',
        "f.toml: counts.Three: a count name must be lowercase letters",
        "f.toml: counts.five: must be even, got 5",
        "f.toml: extra: unknown section; allowed: link, files, counts",
    ]
    assert "s3cret" not in str(info.value)
    assert (info.value.path, info.value.key) == ("f.toml", "top")
    with pytest.raises(ConfigError, match=r"^f\.toml: link: section \[link\] is missing; "):
        SCHEMA.loads("", file="f.toml", base=tmp_path)


def test_a_schema_keeps_its_wording(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        FLAT.loads("size = 10\n", file="g.toml", base=tmp_path)
    assert info.value.problems == [
        "g.toml: the_name: is required",
        "g.toml: size: must be an integer 0..9",
    ]


def test_reading_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file"):
        SCHEMA.read(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"x = \xff")
    with pytest.raises(ConfigError, match=r"bad\.toml: not UTF-8 text \(byte 4\)"):
        SCHEMA.read(bad)
    with pytest.raises(ConfigError, match=r"^f\.toml: line 1, column 5: invalid TOML: "):
        SCHEMA.loads("x = \ny", file="f.toml", base=tmp_path)


def test_one_config_error_for_the_whole_project() -> None:
    """One class, exit code 78; the agent's and the POS's loaders raise it."""
    from agent import config as agent_config
    from cloud import config as pos_config

    classes = [
        path.relative_to(REPO)
        for package in ("agent", "cloud", "drivers", "ui", "sandbox")
        for path in sorted((REPO / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text("utf-8")))
        if isinstance(node, ast.ClassDef) and node.name == "ConfigError"
    ]
    assert classes == [Path("cloud/config_schema.py")]
    assert agent_config.ConfigError is ConfigError
    assert pos_config.SCHEMA.wording.missing_key == "is required"
    assert issubclass(ConfigError, SadadError)
    assert ConfigError.exit_code == EX_CONFIG == 78


def test_config_error_shapes() -> None:
    one = ConfigError(Problem("pos.toml", "timeout", "must be a number"))
    assert str(one) == "pos.toml: timeout: must be a number"
    assert (one.path, one.key, one.problems) == ("pos.toml", "timeout", [str(one)])
    whole = ConfigError(Problem("pos.toml", None, "is not UTF-8 text"))
    assert (str(whole), whole.key) == ("pos.toml: is not UTF-8 text", None)
    lines = ConfigError(["a: one", "a: two"])
    assert (str(lines), lines.path, lines.key) == ("a: one\na: two", None, None)


def test_example_and_tables_come_from_the_same_settings() -> None:
    example = example_toml(SCHEMA, "Example.")
    assert example.splitlines() == [
        "# Example.",
        "",
        "[link]",
        "# the link",
        'host = "example.org"                  # the far end',
        "port = 443                            # its port (1..65535)",
        "# retry = 2.0                         # seconds between tries (seconds, 0.5..60)",
        "",
        "[files]",
        "# the files",
        '# log = "x.log"                       # where to log',
        "# verbose = false                     # log more",
        "",
        "[counts]",
        "# NAME = EVEN",
        "two = 2",
    ]
    tables = markdown(SCHEMA)
    assert "### `[link]` (required)" in tables
    assert "| `port` | an integer 1..65535 | `443` | its port |" in tables
    assert "| `host` | a non-empty string | required | the far end |" in tables
    assert "Never allowed: `password` (never here: use a file)." in tables
    assert "| a count name: lowercase letters | an even integer | none | `two = 2` |" in tables
    assert "| `the_name` | a non-empty string | required | a name |" in markdown(FLAT)
