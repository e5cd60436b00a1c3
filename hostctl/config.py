"""Typed TOML settings: dataclasses filled from TOML with errors that name the file, field and value, and
written back to TOML that reads back to an equal dataclass."""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hostctl.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error becomes a ConfigError naming the file."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: {not_utf8(e)}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: TOML syntax error: {e}") from None


_BOMS = {b"\xff\xfe": "UTF-16 (little-endian)", b"\xfe\xff": "UTF-16 (big-endian)"}


def not_utf8(error: UnicodeDecodeError) -> str:
    """What is wrong with text that is not UTF-8, in words: the encoding its first bytes suggest, else where."""
    head = bytes(error.object[:2])
    if head in _BOMS:
        return f"not UTF-8 text: it starts with bytes {head.hex(' ').upper()}, a {_BOMS[head]} mark; save it as UTF-8"
    bad = bytes(error.object[error.start : error.start + 1]).hex().upper()
    return f"not UTF-8 text: byte {bad} at offset {error.start} ({error.reason}); save it as UTF-8"


def load(cls: type[T], path: Path) -> T:
    """Read `path` and build an instance of the dataclass `cls` from it."""
    return build(cls, read_toml(path), source=str(path))


def build(cls: type[T], data: Any, *, source: str, where: str = "") -> T:
    """Build dataclass `cls` from a TOML table, checking keys, types and each field's `check`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where or 'top level'}: expected a table, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: {_join(where, unknown[0])}: unknown key (known: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        path = _join(where, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: {path}: required key is missing")
            continue
        value = _convert(hints[name], data[name], source=source, where=path)
        check = f.metadata.get("check")
        if check is not None and (problem := check(value)):
            raise ConfigError(f"{source}: {path}: {_show(value)} {problem}")
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except ValueError as e:  # __post_init__ cross-field checks
        raise ConfigError(f"{source}: {where or 'top level'}: {e}") from None
    return obj


def _convert(hint: Any, value: Any, *, source: str, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner, value, source=source, where=where)
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {where}: expected a list, got {_show(value)}")
        return [_convert(inner, v, source=source, where=f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, inner = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {where}: expected a table, got {_show(value)}")
        return {k: _convert(inner, v, source=source, where=_join(where, k)) for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, source=source, where=where)
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in hint)
            raise ConfigError(f"{source}: {where}: {_show(value)} is not one of {choices}") from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (str, int, float, bool) and (type(value) is not hint):
        raise ConfigError(f"{source}: {where}: expected {_kind(hint)}, got {_show(value)}")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(hint: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[hint]


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def positive(value: float) -> str | None:
    """Field check: strictly positive and finite."""
    return "must be > 0" if not value > 0 else "must be finite" if value == math.inf else None


def non_negative(value: float) -> str | None:
    """Field check: zero or more, finite."""
    return "must be >= 0" if not value >= 0 else "must be finite" if value == math.inf else None


def between(low: float, high: float) -> typing.Callable[[float], str | None]:
    """Field check: from `low` to `high`, both included (never nan)."""

    def within(value: float) -> str | None:
        return None if low <= value <= high else f"must be from {low:g} to {high:g}"

    return within


def check(fn: typing.Callable[[Any], str | None], **kwargs: Any) -> Any:
    """A dataclass field with a value check (returns a problem string, or None when fine)."""
    return dataclasses.field(metadata={"check": fn}, **kwargs)


# --- writing: the inverse of `build` ---------------------------------------------------------------------------


def dumps(obj: DataclassInstance, header: str = "") -> str:
    """`obj` as TOML text (`header`, a comment, first) that `build` reads back to an equal dataclass; fields that
    are None are left out."""
    lines = [header] if header else []
    _emit_table(obj, [], lines, array=False)
    return "\n".join(lines).strip() + "\n"


def write(obj: DataclassInstance, path: Path, header: str = "") -> None:
    """Write `dumps(obj, header)` to `path` atomically: a reader sees the old file or the new one, never a part."""
    text = dumps(obj, header)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _emit_table(obj: DataclassInstance, keys: list[str], lines: list[str], *, array: bool) -> None:
    if keys:
        name = ".".join(keys)
        lines += ["", f"[[{name}]]" if array else f"[{name}]"]
    nested: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value) or (
            isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value)
        ):
            nested.append((f.name, value))
        else:
            lines.append(f"{f.name} = {_value(value)}")
    for name, value in nested:
        if isinstance(value, list):
            for item in value:
                _emit_table(item, [*keys, name], lines, array=True)
        else:
            _emit_table(value, [*keys, name], lines, array=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # 1.0, 1e-05, inf, -inf: all valid TOML floats
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to TOML")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(text: str) -> str:
    out = []
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c < " " or c == "\x7f":
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'
