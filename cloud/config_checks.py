"""The common kinds of config value, as ``cloud.config_schema.Check``\\ s.

Each says what it allows in one phrase ("must be an integer 5..3600") and
converts the TOML value to what the code uses (a float for seconds, a
resolved ``Path`` for a path). The phrasing is agent.toml's; a key with a
rule of its own uses ``cloud.config_schema.Rule``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cloud.config_schema import Invalid

__all__ = ["FilePath", "Flag", "Integer", "Seconds", "Text"]


@dataclass(frozen=True, slots=True)
class Integer:
    """A TOML integer ``lo..hi`` (a boolean is not one); ``note`` follows the bounds."""

    lo: int
    hi: int
    note: str = ""

    @property
    def allowed(self) -> str:
        return f"an integer {self.lo}..{self.hi}{self.note}"

    @property
    def hint(self) -> str:
        return f"at least {self.lo}" if self.hi >= 2**31 else f"{self.lo}..{self.hi}"

    def convert(self, value: object, base: Path) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
            raise Invalid(f"must be {self.allowed}")
        return value


@dataclass(frozen=True, slots=True)
class Seconds:
    """A number of seconds ``lo..hi``, integer or float, given as a float."""

    lo: float
    hi: float

    @property
    def allowed(self) -> str:
        return f"a number of seconds {self.lo:g}..{self.hi:g}"

    @property
    def hint(self) -> str:
        return f"seconds, {self.lo:g}..{self.hi:g}"

    def convert(self, value: object, base: Path) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"must be {self.allowed}")
        if not self.lo <= value <= self.hi:  # NaN fails too
            raise Invalid(f"must be {self.allowed}")
        return float(value)


@dataclass(frozen=True, slots=True)
class Text:
    """A non-blank string (no NUL), matching ``pattern`` when one is given."""

    pattern: re.Pattern[str] | None = None
    what: str = "a non-empty string"
    hint: str = field(default="", init=False)

    @property
    def allowed(self) -> str:
        return self.what

    def convert(self, value: object, base: Path) -> object:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise Invalid(f"must be {self.what}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise Invalid(f"must be {self.what}")
        return value


@dataclass(frozen=True, slots=True)
class FilePath:
    """A file's path; a relative one is relative to the config file's directory
    (the agent's working directory is not where the file is)."""

    what: str = "a file path"
    hint: str = field(default="", init=False)

    @property
    def allowed(self) -> str:
        return f"{self.what} (absolute, or relative to the config file's directory)"

    def convert(self, value: object, base: Path) -> object:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise Invalid(f"must be {self.allowed}")
        path = Path(value)
        return path if path.is_absolute() else base / path


@dataclass(frozen=True, slots=True)
class Flag:
    """``true`` or ``false``."""

    allowed: str = field(default="true or false", init=False)
    hint: str = field(default="", init=False)

    def convert(self, value: object, base: Path) -> object:
        if not isinstance(value, bool):
            raise Invalid(f"must be {self.allowed}")
        return value
