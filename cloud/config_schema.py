"""Config files declared once, and the one ``ConfigError`` of the project.

Why: the agent's schema used to be written three times (typed structs, a
table of validators, the text of the example file) and the POS module had a
loader of its own with another error shape; the copies drifted. Here a
config class - a msgspec Struct or a dataclass - *is* the schema of its
file. Each attribute read from the file carries a ``Setting`` in its
annotation::

    class MqttConfig(msgspec.Struct, frozen=True, kw_only=True):
        keepalive: Annotated[int, Setting(Integer(5, 3600), "seconds between pings")] = 30

The attribute's name is the TOML key (``Setting(key=...)`` when it is not);
its default is the default (none: the key is required); the ``Check`` is the
TOML type with its bounds or choices and converts the value; ``doc`` is the
one line the example file and docs/configuration.md show. A root class whose
attributes carry ``Section`` (or ``Table``) describes a file of
``[sections]`` (agent.toml); one whose attributes carry ``Setting``, a flat
file (pos.toml). ``Schema(root)`` reads, checks and builds it;
``cloud.config_render`` writes the commented example and the Markdown
tables from the same ``Schema``, so neither can drift from what is checked.

Errors: ``ConfigError`` holds one line per problem, ``FILE: KEY: what is
wrong and what is allowed``, every problem of a file at once (a technician
fixes them in one go). Its ``exit_code`` is 78 (``EX_CONFIG``, sysexits.h):
every CLI exits with it on a config error, and the agent's unit has
``RestartPreventExitStatus=78`` so systemd does not restart a daemon that
cannot start until a person fixes the file. A value is never echoed when it
may hold a secret (``Invalid(show_value=False)``, refused keys).

``Wording`` is how a schema phrases its problems: agent.toml and pos.toml
had different phrasings before they shared this module, and scripts and
tests match on them, so each keeps its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Protocol, TypeVar, cast

import msgspec

from cloud.errors import SadadError

__all__ = [
    "EX_CONFIG",
    "NO_DEFAULT",
    "Check",
    "ConfigError",
    "Invalid",
    "Key",
    "Part",
    "Problem",
    "Rule",
    "Schema",
    "Section",
    "Setting",
    "Table",
    "Wording",
    "key_text",
    "show",
]

EX_CONFIG = 78  # sysexits.h: "configuration error"

T = TypeVar("T")

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_WHERE = re.compile(
    r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$"
)


# ---------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config file: ``FILE: KEY: text`` (no KEY when
    it is about the file as a whole, ``FILE: text``)."""

    file: str
    key: str | None
    text: str

    def __str__(self) -> str:
        where = self.file if self.key is None else f"{self.file}: {self.key}"
        return f"{where}: {self.text}"


class ConfigError(SadadError):
    """A configuration file is missing, unreadable or holds a wrong value.

    ``problems`` is one line per problem; ``path`` and ``key`` name the file
    and the key of the first one when it was given as a ``Problem``.
    """

    exit_code: ClassVar[int] = EX_CONFIG

    def __init__(self, problems: str | Problem | Iterable[str | Problem]) -> None:
        items = [problems] if isinstance(problems, str | Problem) else list(problems)
        self.problems = [str(p) for p in items]
        first = items[0] if items else None
        self.path = first.file if isinstance(first, Problem) else None
        self.key = first.key if isinstance(first, Problem) else None
        super().__init__("\n".join(self.problems))


class Invalid(Exception):
    """A check refuses a value: ``text`` says what is wrong and what is allowed.

    ``show_value=False`` when the value may hold a secret (a password in a
    URL): the problem then does not echo it.
    """

    def __init__(self, text: str, *, show_value: bool = True) -> None:
        super().__init__(text)
        self.text = text
        self.show_value = show_value


# ---------------------------------------------------------------- declarations


class Check(Protocol):
    """What a key may hold and how its TOML value becomes the attribute's.

    ``allowed`` is a noun phrase ("an integer 5..3600") for the docs and for
    a missing key; ``hint`` the bounds in a few characters ("5..3600") for
    the example file's comment, or "". ``convert`` raises ``Invalid``;
    relative paths resolve against ``base``, the config file's directory.
    """

    @property
    def allowed(self) -> str: ...

    @property
    def hint(self) -> str: ...

    def convert(self, value: object, base: Path) -> object: ...


@dataclass(frozen=True, slots=True)
class Rule:
    """A ``Check`` made of a function: for a key with a rule of its own."""

    allowed: str
    function: Callable[[object, Path], object]
    hint: str = ""

    def convert(self, value: object, base: Path) -> object:
        return self.function(value, base)


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()  # a required key; a Setting without an example


@dataclass(frozen=True, slots=True)
class Setting:
    """One key of a config file, in the annotation of the attribute it fills.

    ``example`` is the value the example file shows (default: the default);
    an optional key is shown commented out unless ``set_in_example``.
    """

    check: Check
    doc: str
    key: str | None = None
    example: object = NO_DEFAULT
    set_in_example: bool = False


@dataclass(frozen=True, slots=True)
class Section:
    """A ``[section]`` of the file, on a root attribute holding its class.

    ``refused`` are keys that are never allowed, each with why and what to do
    instead; their values are never echoed (a PIN written in plain text).
    """

    doc: str
    refused: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Table:
    """A ``[section]`` of free names, ``NAME = VALUE`` (the readers): each name
    is an ``item``'s and matches ``name`` (``name_allowed`` says how), each
    value passes ``check``. The example file sets ``example`` and shows
    ``commented`` commented out."""

    doc: str
    item: str
    name: re.Pattern[str]
    name_allowed: str
    check: Check
    example: tuple[tuple[str, object], ...] = ()
    commented: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class Wording:
    """How a schema phrases a problem (``str.format`` templates).

    The defaults are agent.toml's. The sectioned file's own messages (unknown
    section, missing section) have no second phrasing and are not here.
    """

    unknown_key: str = "unknown key{hint}; allowed: {allowed}"
    missing_key: str = "required key is missing; it must be {allowed}"
    bad_value: str = "{problem}, got {value}"
    not_found: str = "cannot read: {reason}"
    unreadable: str = "cannot read: {reason}"
    not_utf8: str = "not UTF-8 text (byte {byte})"
    bad_toml: str = "{where}invalid TOML: {message}"


@dataclass(frozen=True, slots=True)
class Key:
    """A ``Setting`` resolved from its class: where it sits and its default."""

    section: str | None
    name: str
    attr: str
    setting: Setting
    default: object

    @property
    def required(self) -> bool:
        return self.default is NO_DEFAULT

    @property
    def path(self) -> str:
        """``section.key`` as problems name it."""
        return key_text(self.name) if self.section is None else key_text(self.section, self.name)

    @property
    def example(self) -> object:
        return self.default if self.setting.example is NO_DEFAULT else self.setting.example


@dataclass(frozen=True, slots=True)
class Part:
    """A section of the file (``name`` None: the top level of a flat file)."""

    name: str | None
    attr: str
    doc: str
    required: bool
    build: Callable[..., object] | None
    keys: tuple[Key, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()
    table: Table | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every key the section allows, refused ones included (they are known)."""
        return (*(k.name for k in self.keys), *(name for name, _ in self.refused))


# ---------------------------------------------------------------- the schema

CrossCheck = Callable[[Mapping[str | None, Mapping[str, object]], Callable[[str, str], None]], None]


class Schema(Generic[T]):
    """The schema of one kind of file, read from the annotations of ``root``.

    ``cross_check(values, problem)`` sees the converted values by section and
    key and reports rules between keys (TLS files need an mqtts:// URL).
    """

    def __init__(
        self,
        root: type[T],
        *,
        wording: Wording | None = None,
        cross_check: CrossCheck | None = None,
    ) -> None:
        self.root = root
        self.wording = wording or Wording()
        self.cross_check = cross_check
        self.parts = tuple(_parts(root))
        self.flat = len(self.parts) == 1 and self.parts[0].name is None

    @property
    def keys(self) -> Iterator[Key]:
        for part in self.parts:
            yield from part.keys

    def read(self, path: str | os.PathLike[str]) -> str:
        """The file's text. Raises ConfigError (missing, unreadable, not UTF-8)."""
        file = os.fspath(path)
        words = self.wording
        try:
            raw = Path(file).read_bytes()
        except FileNotFoundError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(Problem(file, None, words.not_found.format(reason=reason))) from exc
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(Problem(file, None, words.unreadable.format(reason=reason))) from exc
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            text = words.not_utf8.format(byte=exc.start)
            raise ConfigError(Problem(file, None, text)) from exc

    def loads(
        self,
        text: str,
        *,
        file: str,
        base: Path,
        extra: Mapping[str, object] | None = None,
    ) -> T:
        """Parse TOML ``text`` and ``build`` it. Raises ConfigError."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            match = _TOML_WHERE.match(str(exc))
            if match is None:
                where, message = "", str(exc)
            elif match["line"]:
                where, message = f"line {match['line']}, column {match['col']}: ", match["msg"]
            else:
                where, message = "at the end of the file: ", match["msg"]
            words = self.wording.bad_toml.format(where=where, message=message, error=exc)
            raise ConfigError(Problem(file, None, words)) from exc
        return self.build(doc, file=file, base=base, extra=extra)

    def build(
        self,
        doc: Mapping[str, Any],
        *,
        file: str,
        base: Path,
        extra: Mapping[str, object] | None = None,
    ) -> T:
        """Check a parsed document and make the root object (``extra``: its
        attributes that do not come from the file). Raises ConfigError with
        every problem found."""
        walk = _Walk(self, file, base)
        values = walk.flat(doc) if self.flat else walk.sections(doc)
        if self.cross_check is not None:
            self.cross_check(values, walk.problem)
        if walk.problems:
            raise ConfigError(walk.problems)
        kwargs: dict[str, object] = dict(extra or {})
        for part in self.parts:
            got = values.get(part.name)
            if part.name is None:
                kwargs.update({k.attr: got[k.name] for k in part.keys if got and k.name in got})
            elif got is None:
                continue  # an optional section that is absent: the class's default
            elif part.table is not None:
                kwargs[part.attr] = dict(got)
            else:
                assert part.build is not None
                section = {k.attr: got[k.name] for k in part.keys if k.name in got}
                kwargs[part.attr] = part.build(**section)
        # Every required key is present and converted, so the call cannot fail.
        return cast(Callable[..., T], self.root)(**kwargs)


class _Walk:
    """One pass over a document, collecting problems."""

    def __init__(self, schema: Schema[Any], file: str, base: Path) -> None:
        self.schema = schema
        self.words = schema.wording
        self.file = file
        self.base = base
        self.problems: list[Problem] = []

    def problem(self, key: str | None, text: str) -> None:
        self.problems.append(Problem(self.file, key, text))

    def flat(self, doc: Mapping[str, Any]) -> dict[str | None, Mapping[str, object]]:
        return {None: self.section(self.schema.parts[0], doc)}

    def sections(self, doc: Mapping[str, Any]) -> dict[str | None, Mapping[str, object]]:
        parts = {p.name: p for p in self.schema.parts if p.name is not None}
        names = tuple(parts)
        out: dict[str | None, Mapping[str, object]] = {}
        for name, value in doc.items():
            part = parts.get(name)
            if part is None and isinstance(value, dict):
                self.problem(
                    key_text(name),
                    f"unknown section{_did_you_mean(name, names)}; allowed: {', '.join(names)}",
                )
            elif part is None:
                self.problem(
                    key_text(name),
                    "not allowed at the top level; settings belong in a section: "
                    + ", ".join(names),
                )
            elif not isinstance(value, dict):
                self.problem(key_text(name), f"must be a table [{name}], got {show(value)}")
            elif part.table is not None:
                out[name] = self.table(name, part.table, value)
            else:
                out[name] = self.section(part, value)
        for part in self.schema.parts:
            if part.required and part.name not in doc:
                required = ", ".join(k.name for k in part.keys if k.required)
                self.problem(
                    part.name, f"section [{part.name}] is missing; required keys: {required}"
                )
        return out

    def section(self, part: Part, table: Mapping[str, Any]) -> dict[str, object]:
        names = part.names
        for name in table:
            if name not in names:
                self.problem(
                    _at(part, name),
                    self.words.unknown_key.format(
                        hint=_did_you_mean(name, names), allowed=", ".join(names)
                    ),
                )
        out: dict[str, object] = {}
        for key in part.keys:
            if key.name not in table:
                if key.required:
                    allowed = key.setting.check.allowed
                    self.problem(key.path, self.words.missing_key.format(allowed=allowed))
                continue
            out[key.name] = self.value(key.path, key.setting.check, table[key.name])
        for name, why in part.refused:
            if name in table:
                self.problem(_at(part, name), why)  # never echoed
        return {k: v for k, v in out.items() if v is not _REFUSED}

    def table(self, section: str, table: Table, values: Mapping[str, Any]) -> dict[str, object]:
        out: dict[str, object] = {}
        for name, value in values.items():
            where = key_text(section, name)
            if not table.name.fullmatch(name):
                self.problem(where, f"a {table.item} name must be {table.name_allowed}")
                continue
            converted = self.value(where, table.check, value)
            if converted is not _REFUSED:
                out[name] = converted
        return out

    def value(self, where: str, check: Check, value: object) -> object:
        try:
            return check.convert(value, self.base)
        except Invalid as exc:
            if exc.show_value:
                text = self.words.bad_value.format(problem=exc.text, value=show(value))
            else:
                text = exc.text
            self.problem(where, text)
            return _REFUSED


_REFUSED = object()  # a value with a problem: not passed on


# ---------------------------------------------------------------- reading classes


def _parts(root: type) -> Iterator[Part]:
    flat: list[Key] = []
    for attr, annotation, default in _attributes(root):
        mark = _mark(annotation)
        if isinstance(mark, Setting):
            flat.append(Key(None, mark.key or attr, attr, mark, default))
        elif isinstance(mark, Section):
            cls = typing.get_args(annotation)[0]
            keys = tuple(
                Key(attr, m.key or a, a, m, d)
                for a, ann, d in _attributes(cls)
                if isinstance(m := _mark(ann), Setting)
            )
            yield Part(attr, attr, mark.doc, default is NO_DEFAULT, cls, keys, mark.refused)
        elif isinstance(mark, Table):
            yield Part(attr, attr, mark.doc, default is NO_DEFAULT, None, table=mark)
    if flat:
        yield Part(None, "", (root.__doc__ or "").strip(), True, root, tuple(flat))


def _mark(annotation: object) -> object:
    """The Setting, Section or Table in an ``Annotated[...]``, or None."""
    if typing.get_origin(annotation) is not Annotated:
        return None
    marks = [a for a in typing.get_args(annotation)[1:] if isinstance(a, Setting | Section | Table)]
    return marks[0] if marks else None


def _attributes(cls: type) -> Iterator[tuple[str, object, object]]:
    """(name, annotation with its extras, default or NO_DEFAULT) of each
    attribute of a msgspec Struct or a dataclass, in their order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: list[tuple[str, Any, Any]]
    if dataclasses.is_dataclass(cls):
        fields = [(f.name, f.default, f.default_factory) for f in dataclasses.fields(cls)]
        missing: object = dataclasses.MISSING
    else:
        fields = [(f.name, f.default, f.default_factory) for f in msgspec.structs.fields(cls)]
        missing = msgspec.NODEFAULT
    for name, default, factory in fields:
        if default is not missing:
            yield name, hints[name], default
        elif factory is not missing:
            yield name, hints[name], factory()
        else:
            yield name, hints[name], NO_DEFAULT


# ---------------------------------------------------------------- text


def key_text(*parts: str) -> str:
    """``section.key`` with a name that is not a bare TOML key quoted."""
    return ".".join(p if _BARE_KEY.fullmatch(p) else json.dumps(p) for p in parts)


def _at(part: Part, name: str) -> str:
    return key_text(name) if part.name is None else key_text(part.name, name)


def show(value: object) -> str:
    """A TOML value as a problem shows it (strings quoted, tables not dumped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return type(value).__name__


def _did_you_mean(name: str, choices: tuple[str, ...]) -> str:
    import difflib  # only for a broken config: not kept in the daemon's memory

    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""
