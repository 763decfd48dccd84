"""The configuration schema engine: typed dataclass trees read from TOML, dicts and ``--set``.

A configuration is a tree of dataclasses whose fields carry real type annotations; one engine
serves ``pdenets train`` (:class:`pdenets.config.Config`) and ``pdenets hjb``
(:class:`pdenets.hjb.config.HJBConfig`). Supported field types:

* scalars ``int``, ``float`` (finite; an integer is accepted), ``bool``, ``str``;
* lists ``list[int]``, ``list[float]``, ``list[str]``, ``list[list[float]]``;
* unions of a scalar and a list, e.g. ``float | list[float]``, ``int | list[int]``;
* optional ``X | None`` (TOML has no null: an absent key means None, so an optional field
  must default to None);
* nested sections (a dataclass field: a TOML table).

A field without a default is required. Values are checked strictly wherever they come from
(TOML file, dict, Python): a string is never an integer, a boolean never a number, NaN and
±Inf are refused. ``--set key=value`` text is parsed as the field's type: numbers and booleans
as written, strings verbatim, lists in TOML syntax (``grid.points=[41, 41]``) and a bare
number where a number-or-list is allowed. Unknown keys and tables raise
:class:`~pdenets.errors.ConfigError` with a suggestion (:mod:`difflib`) for typos.

Two hooks keep old inputs working: a root class may declare ``_aliases`` (a ``ClassVar``
mapping a top-level key to a dotted key, e.g. ``method`` → ``solver.method``), and a
``list[int]`` field with ``metadata={"legacy_csv": True}`` still accepts the old
comma-separated string (with a :class:`DeprecationWarning`).

:func:`to_toml` writes a tree back as TOML that :func:`from_dict` of the parsed text turns into
an equal tree.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import tomllib
import types
import typing
import warnings
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["apply_override", "check_tree", "describe", "from_dict", "read_toml", "to_toml"]


# ---------------------------------------------------------------------------------------------
# types
# ---------------------------------------------------------------------------------------------
def hints(cls: type) -> dict[str, Any]:
    """The resolved type annotations of the dataclass ``cls``."""
    return _hints(cls)


@functools.cache
def _hints(cls: Hashable) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _arms(tp) -> tuple[Any, bool]:
    """``(type without None, optional?)``."""
    if _is_union(tp) and type(None) in typing.get_args(tp):
        rest = tuple(a for a in typing.get_args(tp) if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), True  # noqa: UP007
    return tp, False


def _is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def describe(tp) -> str:
    """``tp`` as written in Python (``int``, ``float | list[float]``, ``list[list[float]]``)."""
    if _is_union(tp):
        return " | ".join(describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{describe(typing.get_args(tp)[0])}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    """A value that does not have the expected type (reported for the whole key)."""


def _check(value: Any, tp, key: str) -> Any:
    """``value`` checked against ``tp`` (an integer becomes a float where a float is due);
    raises :class:`_Mismatch`, or :class:`ConfigError` for a non-finite number."""
    if _is_union(tp):
        arms = typing.get_args(tp)
        if value is None:
            if type(None) in arms:
                return None
            raise _Mismatch
        # pick the arm by shape: a list goes to the list arm, anything else to a scalar arm
        shaped = [a for a in arms if (typing.get_origin(a) is list) == isinstance(value, list)
                  and a is not type(None)]
        for arm in shaped[:-1]:
            try:
                return _check(value, arm, key)
            except _Mismatch:
                pass
        if shaped:
            return _check(value, shaped[-1], key)
        raise _Mismatch
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise _Mismatch
        (elem,) = typing.get_args(tp)
        return [_check(v, elem, key) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise _Mismatch
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Mismatch
        try:
            x = float(value)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return x
    if tp is str:
        if not isinstance(value, str):
            raise _Mismatch
        return value
    raise TypeError(f"unsupported config field type {tp!r} for {key}")  # pragma: no cover


def check_value(value: Any, tp, key: str, field: dataclasses.Field | None = None) -> Any:
    """``value`` (from a TOML file, a dict or Python) as a value of type ``tp`` for ``key``.

    Raises
    ------
    ConfigError
        Naming ``key``, the expected type and the value.
    """
    if field is not None and field.metadata.get("legacy_csv") and isinstance(value, str):
        return _legacy_csv(value, key)
    try:
        return _check(value, tp, key)
    except _Mismatch:
        raise ConfigError(f"{key}: expected a {describe(tp)}, got {value!r}") from None


def _legacy_csv(text: str, key: str) -> list[int]:
    """The old comma-separated form of a ``list[int]`` field (deprecated)."""
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{key}: expected a list[int] such as [3, 3, 4] (or the old "
                          f"comma-separated form 3,3,4), got {text!r}") from None
    warnings.warn(f"{key}: the comma-separated string {text!r} is deprecated; write a list, "
                  f"e.g. {key} = {out}", DeprecationWarning, stacklevel=2)
    return out


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_text(text: str, tp, key: str, field: dataclasses.Field | None = None) -> Any:
    """``--set`` text as a value of type ``tp``: strings verbatim, numbers and booleans as
    written, lists in TOML syntax, ``none`` for an optional field."""
    tp, optional = _arms(tp)
    s = text.strip()
    if optional and s.lower() in ("none", "null"):
        return None
    if tp is str:
        return text
    if field is not None and field.metadata.get("legacy_csv") and not s.startswith("["):
        return _legacy_csv(s, key)
    if s.startswith("["):
        try:
            value = tomllib.loads(f"v = {s}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"{key}: {text!r} is not a TOML list (expected a "
                              f"{describe(tp)}, e.g. [1, 2])") from None
        return check_value(value, tp, key)
    scalar = tp
    if _is_union(tp):
        scalars = [a for a in typing.get_args(tp) if typing.get_origin(a) is not list]
        scalar = scalars[0] if scalars else None
    if scalar is bool and s.lower() in _TRUE + _FALSE:
        return s.lower() in _TRUE
    if scalar is str:
        return text
    if scalar is int or scalar is float:
        try:
            number = scalar(s)
        except ValueError:
            pass
        else:
            return check_value(number, scalar, key)
    raise ConfigError(f"{key}: expected a {describe(tp)}, got {text!r}"
                      + (" (lists in TOML syntax, e.g. [1, 2])"
                         if typing.get_origin(tp) is list else ""))


# ---------------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------------
def _where(path: list[str]) -> str:
    return f"[{'.'.join(path)}]" if path else "the top level"


def _unknown(cls: type, path: list[str], part: str, table: bool, full: str) -> ConfigError:
    """The error for ``part``, not a field of ``cls`` (reached by ``path``)."""
    fields = _fields(cls)
    aliases = list(getattr(cls, "_aliases", {}))
    if table:
        names = [n for n in fields if _is_section(hints(cls)[n])]
        close = difflib.get_close_matches(part, names, n=1)
        hint = (f"; did you mean [{'.'.join(path + close)}]?" if close
                else f"; known tables: {', '.join(names)}")
        return ConfigError(f"unknown config key {full!r}: unknown config table "
                           f"[{'.'.join(path + [part])}]{hint}")
    names = list(fields) + aliases
    close = difflib.get_close_matches(part, names, n=1)
    hint = (f"; did you mean {'.'.join(path + close)!r}?" if close
            else f"; known keys: {', '.join(names)}")
    return ConfigError(f"unknown config key {full!r}: unknown key {part!r} in "
                       f"{_where(path)}{hint}")


def _resolve_alias(cls: type, key: str) -> str:
    parts = key.split(".")
    target = getattr(cls, "_aliases", {}).get(parts[0])
    return ".".join([target, *parts[1:]]) if target else key


def apply_override(cls: type, raw: dict, key: str, text: str) -> None:
    """Store ``--set key=text``, parsed by the type of ``key`` in the config class ``cls``,
    into the nested dict ``raw`` (what :func:`from_dict` reads)."""
    key = _resolve_alias(cls, key.strip())
    parts = key.split(".")
    node, c = raw, cls
    for i, part in enumerate(parts):
        fields = _fields(c)
        if part not in fields:
            raise _unknown(c, parts[:i], part, i < len(parts) - 1, key)
        tp = hints(c)[part]
        if i == len(parts) - 1:
            if _is_section(tp):
                raise ConfigError(f"{key} is a section; set its keys, e.g. {key}.<name>")
            node[part] = parse_text(text, tp, key, fields[part])
            return
        if not _is_section(tp):
            raise ConfigError(f"{'.'.join(parts[:i + 1])} is not a section (in {key!r})")
        sub = node.setdefault(part, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"{'.'.join(parts[:i + 1])} is a section; set its keys, e.g. "
                              f"{'.'.join(parts[:i + 1])}.<name>")
        node, c = sub, tp


def from_dict(cls: type, data: Any, path: tuple[str, ...] = ()) -> Any:
    """The config tree ``cls`` from a nested dict (TOML tables, a JSON object): defaults for
    absent keys, every given value checked against its field's type.

    Raises
    ------
    ConfigError
        For an unknown key or table (with a suggestion), a value of the wrong type, a table
        given as a value or a value as a table, or a missing required key.
    """
    where = list(path)
    if not isinstance(data, dict):
        name = ".".join(where)
        raise ConfigError(f"{name} is a section; set its keys, e.g. {name}.<name>")
    data = _normalize_aliases(cls, data)
    fields = _fields(cls)
    for k, v in data.items():
        if k not in fields:
            full = ".".join([*where, k])
            raise _unknown(cls, where, k, isinstance(v, dict), full)
    kwargs = {}
    for name, f in fields.items():
        tp = hints(cls)[name]
        key = ".".join([*where, name])
        if _is_section(tp):
            kwargs[name] = from_dict(tp, data.get(name, {}), (*path, name))
        elif name in data:
            v = data[name]
            if isinstance(v, dict):
                raise ConfigError(f"{key} is a value, not a table; write {key} = <value>")
            kwargs[name] = check_value(v, tp, key, f)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {name!r} in {_where(where)} ({key})")
    return cls(**kwargs)


def _normalize_aliases(cls: type, data: dict) -> dict:
    """A copy of ``data`` with the top-level aliases of ``cls`` moved to their targets."""
    data = dict(data)
    for alias, target in getattr(cls, "_aliases", {}).items():
        if alias not in data:
            continue
        value = data.pop(alias)
        *heads, last = target.split(".")
        node: Any = data
        for h in heads:
            sub = node.get(h, {})
            if not isinstance(sub, dict):
                return data  # from_dict reports the value given for a section
            node[h] = node = dict(sub)
        if last in node and node[last] != value:
            raise ConfigError(f"{alias} and {target} are both given and differ ({value!r} "
                              f"vs {node[last]!r}); give one")
        node[last] = value
    return data


def check_tree(obj: Any, prefix: str = "") -> None:
    """Check (and normalize: int → float, legacy strings → lists) every field of a config tree
    built in Python."""
    cls = type(obj)
    for name, f in _fields(cls).items():
        tp, value, key = hints(cls)[name], getattr(obj, name), prefix + name
        if _is_section(tp):
            if not isinstance(value, tp):
                raise ConfigError(f"{key}: expected a {tp.__name__} section, got {value!r}")
            check_tree(value, key + ".")
        else:
            setattr(obj, name, check_value(value, tp, key, f))


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def read_toml(path: str | Path) -> dict:
    """The tables of the TOML file ``path``; a missing, unreadable or invalid file raises
    :class:`ConfigError`."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, str]]:
    """``key=value`` strings split at the first ``=``."""
    out = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out.append((k.strip(), v))
    return out


def load(cls: type, path: str | Path | None, overrides: list[str] | None) -> Any:
    """The tree ``cls`` from defaults, the TOML file ``path`` and ``--set`` overrides."""
    raw = _normalize_aliases(cls, read_toml(path)) if path is not None else {}
    for k, v in parse_overrides(overrides):
        apply_override(cls, raw, k, v)
    return from_dict(cls, raw)


def _toml_string(s: str) -> str:
    out = []
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            raise ConfigError(f"cannot write the string {s!r} as TOML (lone surrogate)")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    """One value in TOML syntax."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigError(f"cannot write the non-finite number {v!r} to a config")
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} to a TOML config")  # pragma: no cover


def to_toml(obj: Any) -> str:
    """The tree ``obj`` as TOML: top-level values, then one table per section (nested
    sections as ``[a.b]``); a None value is left out (absent key = None)."""
    lines: list[str] = []

    def emit(o: Any, path: list[str]) -> None:
        cls = type(o)
        values: list[tuple[str, Any]] = []
        sections: list[tuple[str, Any]] = []
        for name in _fields(cls):
            v = getattr(o, name)
            (sections if _is_section(hints(cls)[name]) else values).append((name, v))
        if path and (values or not sections):
            lines.append(f"\n[{'.'.join(path)}]")
        for name, v in values:
            lines.append(f"{name} = {toml_value(v)}" if v is not None
                         else f"# {name}: not set")
        for name, v in sections:
            emit(v, [*path, name])

    emit(obj, [])
    return "\n".join(lines).lstrip("\n") + "\n"
