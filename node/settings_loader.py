"""Typed settings from TOML tables and environment variables.

One generic loader for every settings dataclass of the project, so that the
node's sections and the pipeline's settings are read, coerced and reported the
same way: an unknown key or a value of the wrong type names the full dotted key.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping


class ConfigError(ValueError):
    """A configuration problem; `problems` lists each one with its key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's table; ConfigError naming the file when it is missing or not TOML."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{what} not found: {path}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str, from_env: bool = False) -> Any:
    """Convert value to type tp or raise ConfigError naming key.

    Values from the environment are strings: numbers and booleans are parsed,
    lists are comma-separated (lists of tables are JSON).
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (from_env and value == "") and type(None) in args:
            return None
        problems = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, from_env)
            except ConfigError as exc:
                problems.extend(exc.problems)
        raise ConfigError(problems or [f"{key}: must not be empty"])
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError([f"{key}: {value!r} is not one of {choices}"])
        return value
    if origin in (list, tuple):
        inner = args[0] if args else Any
        if from_env and isinstance(value, str):
            if dataclasses.is_dataclass(inner):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as exc:
                    raise ConfigError([f"{key}: expected a JSON list of tables ({exc})"])
            else:
                value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list):
            raise ConfigError([f"{key}: expected a list, got {type(value).__name__}"])
        items = [coerce(item, inner, f"{key}[{i}]", from_env) for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # already built, e.g. from an environment variable
            return value
        if not isinstance(value, Mapping):
            raise ConfigError([f"{key}: expected a table, got {type(value).__name__}"])
        return build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError([f"{key}: expected true or false, got {value!r}"])
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError([f"{key}: expected an integer, got {value!r}"])
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_env and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError([f"{key}: expected a number, got {value!r}"])
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError([f"{key}: expected a string, got {value!r}"])
    if tp is Any:
        return value
    raise ConfigError([f"{key}: unsupported setting type {_describe(tp)}"])


def build(cls: type, table: Mapping[str, Any], key: str = "") -> Any:
    """Build dataclass cls from a table; unknown keys and bad values are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for name, value in table.items():
        full = f"{key}.{name}" if key else name
        if name not in names:
            problems.append(f"{full}: unknown key (known: {', '.join(sorted(names))})")
            continue
        try:
            kwargs[name] = coerce(value, hints[name], full)
        except ConfigError as exc:
            problems.extend(exc.problems)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.init and f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    for name in missing:
        if not any(p.startswith(f"{key}.{name}" if key else name) for p in problems):
            problems.append(f"{key}.{name}: required" if key else f"{name}: required")
    if problems:
        raise ConfigError(problems)
    return cls(**kwargs)


def env_name(prefix: str, path: list[str]) -> str:
    return "_".join([prefix, *path]).upper()


def apply_env(table: dict[str, Any], cls: type, env: Mapping[str, str], prefix: str,
              path: list[str], key: str = "") -> list[str]:
    """Overlay environment variables onto table (in place) for every field of cls.

    The variable for field `f` of section `s` is PREFIX_S_F; nested
    dataclasses add their names. Returns the dotted keys that were set.
    """
    hints = typing.get_type_hints(cls)
    applied = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        full = f"{key}.{f.name}" if key else f.name
        name = env_name(prefix, [*path, f.name])
        if dataclasses.is_dataclass(tp):
            sub = table.setdefault(f.name, {})
            if isinstance(sub, dict):
                applied += apply_env(sub, tp, env, prefix, [*path, f.name], full)
            continue
        if name in env:
            table[f.name] = coerce(env[name], tp, f"{full} (from ${name})", from_env=True)
            applied.append(full)
    return applied
