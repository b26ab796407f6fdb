"""Reading a configuration: YAML, overrides and ``BAL_BROKER__SECTION__KEY`` environment values,
coerced to the section types of :mod:`~broker_plugin.config.sections` (see :mod:`broker_plugin.config`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from broker_plugin.config.sections import ENV_PREFIX, ServiceConfig
from broker_plugin.errors import ConfigError


def _coerce_bool(value: Any, where: str) -> bool:
    """Only a YAML boolean: ``1`` or ``"yes"`` for a flag is more likely a typo than intent."""
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _coerce_int(value: Any, where: str) -> int:
    """An integer, never a bool (``True`` is an ``int`` in Python but not in a config file)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _coerce_float(value: Any, where: str) -> float:
    """A finite number; an integer widens losslessly to float, a bool is refused. No setting means
    anything by nan or inf (an unbounded limit is written null), so both are refused here."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        f = float(value)
        if not math.isfinite(f):
            raise ConfigError(f"{where}: expected a finite number, got {f}")
        return f
    raise ConfigError(f"{where}: expected a number, got {value!r}")


def _coerce_str(value: Any, where: str) -> str:
    """A string; numbers and YAML's unquoted dates are turned back into the text that was meant."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, _dt.date):  # YAML reads an unquoted 2024-05-01T00:00:00Z as a datetime
        if isinstance(value, _dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.isoformat()
    raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")


#: Coercers of the scalar annotations, split out of :func:`_coerce` so each type's rule reads alone.
_SCALAR_COERCERS: dict[Any, Callable[[Any, str], Any]] = {
    bool: _coerce_bool,
    int: _coerce_int,
    float: _coerce_float,
    str: _coerce_str,
}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only lossless, obvious cases."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        # The value is never shown: it may be a secret.
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__}")
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list of strings, got {type(value).__name__}")
        return tuple(_coerce(v, typing.get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    scalar = _SCALAR_COERCERS.get(tp)
    if scalar is not None:
        return scalar(value, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # pragma: no cover - programming error


def _type_name(tp: Any) -> str:
    return " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(tp)) or str(tp)


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'configuration'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown configuration key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _env_target_type(path: list[str]) -> Any:
    """The annotation of the setting an environment path names, or None when it names none."""
    tp: Any = ServiceConfig
    for part in path:
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return tp


def _is_text(tp: Any) -> bool:
    """A ``str`` or ``str | None`` setting: its environment value is taken verbatim."""
    if tp is str:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args == [str]
    return False


def _env_value(key: str, raw: str, path: list[str]) -> Any:
    """An environment override's value.

    Why not YAML for everything: a password such as ``0123456`` (YAML: the octal 42798), ``0x1F``,
    ``null`` or ``pa ss #x`` (YAML: a comment) must reach librdkafka exactly as the Secret holds it.
    Text settings therefore take the string verbatim; numbers, flags, lists and mappings are read
    as YAML, and a value that is not valid YAML is passed on as the string for type checking.
    """
    if _is_text(_env_target_type(path)):
        return raw
    if raw == "":
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        if len(path) < 2:
            raise ConfigError(f"environment override {key}: use {ENV_PREFIX}SECTION__KEY")
        value = _env_value(key, raw, path)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment override {key}: {part} is not a section")
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, *, overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read YAML (if given), apply ``overrides`` (nested dict) and environment variables, validate.

    Raises ConfigError with one line naming the problem: unreadable file, bad YAML, unknown key,
    wrong type or out-of-range value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"configuration file not found: {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"configuration file {p} is not UTF-8 text (byte {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"configuration file {p} cannot be read: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"configuration file {p} is not valid YAML{at}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {p} must hold a mapping at the top level")
        data = loaded or {}
    for section, values in (overrides or {}).items():
        if isinstance(values, Mapping):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    data = _apply_env(data, os.environ if environ is None else environ)
    return _build(ServiceConfig, data, "")
