"""Parse waagent.conf into an immutable, typed Config; errors name file, line and option."""

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from conf.options import OPTIONS, OPTIONS_BY_LOWER, Option, Value

log = logging.getLogger(__name__)

_TRUE = {"y", "yes", "true"}
_FALSE = {"n", "no", "false"}


class ConfigError(ValueError):
    """A waagent.conf value the agent cannot use; the message names file, line and option."""


class Setting(NamedTuple):
    """Where a value came from: the file and line, or the built-in default."""

    value: Value
    source: str  # "default" or "FILE:LINE"


def _convert(opt: Option, raw: str, where: str) -> Value:
    # As waagent reads a value: surrounding double quotes and spaces go.
    text = raw.strip().strip('" ').strip()
    # waagent reads "None" as unset, so the option keeps its default (Lib.Dir=None is
    # /var/lib/waagent); an empty value too, except for y/n options, which must say which.
    if text == "None" or (text == "" and opt.kind != "bool"):
        return opt.default
    kind = opt.kind
    if kind == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    elif kind == "int":
        try:
            number = int(text)
        except ValueError:
            number = None
        if number is not None and (opt.minimum is None or number >= opt.minimum):
            return number
    elif kind == "choice":
        for choice in opt.choices:
            if text.lower() == choice.lower():
                return choice
    elif kind == "path":
        # No `..`: with root=DIR it would lead the agent's writes out of the image.
        if text.startswith("/") and ".." not in text.split("/"):
            return text.rstrip("/") or "/"
    else:
        return text
    raise ConfigError(f"{where}: {opt.name}={text!r} is not valid: expected {opt.allowed()}")


class Config:
    """The loaded configuration: every known option with its typed value and origin."""

    __slots__ = ("settings", "file", "unknown")

    def __init__(self, settings: Mapping[str, Setting], file: str = "<defaults>",
                 unknown: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.file = file
        self.unknown = unknown

    def __repr__(self) -> str:
        return f"Config(file={self.file!r}, unknown={self.unknown!r})"

    def __getitem__(self, name: str) -> Value:
        return self.settings[OPTIONS[name].name].value

    def flag(self, name: str) -> bool:
        """A y/n option."""
        value = self[name]
        if not isinstance(value, bool):
            raise TypeError(f"{name} is not a boolean option")
        return value

    def number(self, name: str) -> int | None:
        """An integer option (None when unset)."""
        if OPTIONS[name].kind != "int":
            raise TypeError(f"{name} is not an integer option")
        value = self[name]
        assert value is None or isinstance(value, int)
        return value

    def text(self, name: str) -> str | None:
        """A string, choice or path option (None when unset)."""
        if OPTIONS[name].kind in ("bool", "int"):
            raise TypeError(f"{name} is not a string option")
        value = self[name]
        assert value is None or isinstance(value, str)
        return value

    def required_path(self, name: str) -> str:
        """A path option that must be set."""
        value = self.text(name)
        if value is None:
            raise ConfigError(f"{self.file}: {name} must be set to an absolute path")
        return value

    def source(self, name: str) -> str:
        """Where the option's value came from ("default" or "FILE:LINE")."""
        return self.settings[OPTIONS[name].name].source

    def subset(self, names: Iterable[str]) -> dict[str, Value]:
        """The values of exactly these options, for a task's fingerprint."""
        return {OPTIONS[n].name: self[n] for n in sorted(names)}

    def fingerprint(self, names: Iterable[str]) -> str:
        """A stable digest of a subset: a task reruns when exactly its options change."""
        text = json.dumps(self.subset(names), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def items(self) -> Iterator[tuple[str, Value]]:
        """All options in table order."""
        for name in OPTIONS:
            yield name, self[name]

    def replace(self, **values: Value) -> "Config":
        """A copy with some options changed (names with dots given as keys with '__')."""
        settings = dict(self.settings)
        for key, value in values.items():
            opt = OPTIONS[key.replace("__", ".")]
            settings[opt.name] = Setting(value, "override")
        return Config(MappingProxyType(settings), self.file, self.unknown)


def parse_config(text: str, path: str = "<text>") -> Config:
    """Parse waagent.conf text. Unknown keys warn; a wrong value raises ConfigError."""
    settings: dict[str, Setting] = {n: Setting(o.default, "default") for n, o in OPTIONS.items()}
    unknown: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        if "=" not in stripped:
            raise ConfigError(f"{where}: expected Key=Value, got {stripped!r}")
        key, _, raw = stripped.partition("=")
        key = key.strip()
        # As in waagent, '#' starts a comment anywhere on the line.
        raw = raw.split("#", 1)[0]
        opt = OPTIONS_BY_LOWER.get(key.lower())
        if opt is None:
            unknown.append(key)
            log.warning("%s: unknown option %s ignored", where, key)
            continue
        settings[opt.name] = Setting(_convert(opt, raw, where), where)
    return Config(MappingProxyType(settings), path, tuple(unknown))


def load_config(path: str | Path) -> Config:
    """Load a waagent.conf file; a missing file is an error that says so."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise ConfigError(f"{file}: configuration file not found") from None
    except OSError as err:
        raise ConfigError(f"{file}: cannot read configuration: {err.strerror}") from None
    return parse_config(text, str(file))


def default_config() -> Config:
    """The built-in defaults, as if waagent.conf were empty."""
    return parse_config("", "<defaults>")
