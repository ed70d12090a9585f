"""JSON round trip for the typed, frozen dataclasses that connect the pipeline stages.

``to_jsonable`` turns a dataclass (nested dataclasses, tuples, dicts) into plain JSON
types; ``from_jsonable(cls, data)`` rebuilds it from the type hints, checking every
field, so a hand-edited or truncated file fails with the field's path in the message.
``save_json`` writes atomically and always valid JSON: a non-finite float (NaN, an
undefined metric) is written as ``null``, and ``null`` in a ``float`` field reads back as NaN.
A dataclass may list the keys an older version wrote in a ``RETIRED`` class attribute (key -> what
replaced it): loading skips them with a logged note instead of failing (``TrainConfig.RETIRED``); and
it may read an older layout with an ``upgrade_jsonable(data, where)`` class method, which loading calls
on the object before reading it (``TrainConfig``: the flat keys written before its sections).
``check_choices`` checks a dataclass's ``Literal[...]`` fields against their types, so a setting's
choices are written once, in its type.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from autoseg.errors import MissingFileError, SchemaError  # SchemaError: raised here, defined with the other user errors

T = TypeVar("T")
log = logging.getLogger(__name__)


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # NaN is not JSON; null reads back as NaN into float fields
    return obj


def choice_message(name: str, choices: tuple, found: Any) -> str:
    """``"optim.optimizer must be one of auto, sgd, adamw, found 'adam'; did you mean 'adamw'?"``"""
    close = difflib.get_close_matches(found, [str(c) for c in choices], n=1) if isinstance(found, str) else []
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{name} must be one of {', '.join(map(str, choices))}, found {found!r}{hint}"


@functools.lru_cache(maxsize=None)
def _literal_fields(cls: type) -> tuple[tuple[str, tuple, bool], ...]:
    """(name, choices, None allowed) of each ``Literal`` or ``Optional[Literal]`` field of ``cls``."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = hints[f.name], False
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = len(args) < len(typing.get_args(tp))
            tp = args[0] if len(args) == 1 else tp
        if typing.get_origin(tp) is typing.Literal:
            found.append((f.name, typing.get_args(tp), optional))
    return tuple(found)


def check_choices(obj: Any, prefix: str = "") -> None:
    """Raise ``ValueError`` naming the field and its choices where a ``Literal[...]`` field of the
    dataclass ``obj`` holds another value (None passes where the type is ``Optional``); ``prefix``
    is put before the field's name in the message (``"optim."``)."""
    for name, choices, optional in _literal_fields(type(obj)):
        value = getattr(obj, name)
        if not (value in choices or (optional and value is None)):
            raise ValueError(choice_message(prefix + name, choices, value))


def from_jsonable(cls: type[T], data: Any, where: str = "") -> T:
    return _convert(cls, data, where or cls.__name__)


def _convert(tp: Any, data: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return data
    if tp in (dict, list):
        if not isinstance(data, tp):
            raise SchemaError(f"{where}: expected {'an object' if tp is dict else 'a list'}, found {type(data).__name__}")
        return data
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, data, where)
            except SchemaError as exc:
                errors.append(str(exc))
        raise SchemaError(errors[0] if errors else f"{where}: unexpected {data!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected an object, found {type(data).__name__}")
        upgrade = getattr(tp, "upgrade_jsonable", None)
        if upgrade is not None:
            data = upgrade(data, where)
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in data:
                kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(f"{where}: missing field '{f.name}'")
        retired = getattr(tp, "RETIRED", {})  # keys an older version wrote, read and ignored
        unknown = set(data) - {f.name for f in dataclasses.fields(tp)} - set(retired)
        if unknown:
            raise SchemaError(f"{where}: unknown field(s) {sorted(unknown)}")
        ignored = sorted(set(data) & set(retired))
        if ignored:
            log.info("%s: ignoring retired setting(s) %s (%s.RETIRED says what replaced each)", where,
                     ", ".join(f"{key}={data[key]!r}" for key in ignored), tp.__name__)
        try:
            return tp(**kwargs)
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"{where}: {exc}") from None
    if origin is tuple:
        if not isinstance(data, (list, tuple)):
            raise SchemaError(f"{where}: expected a list, found {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
        if len(args) != len(data):
            raise SchemaError(f"{where}: expected {len(args)} entries, found {len(data)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data)))
    if origin is list:
        if not isinstance(data, list):
            raise SchemaError(f"{where}: expected a list, found {type(data).__name__}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected an object, found {type(data).__name__}")
        kt, vt = args
        out = {}
        for k, v in data.items():
            key = int(k) if kt is int else k
            out[key] = _convert(vt, v, f"{where}[{k!r}]")
        return out
    if origin is typing.Literal:
        if data not in args:
            raise SchemaError(choice_message(where, args, data))
        return data
    if tp is float:
        if data is None:  # written for NaN by to_jsonable
            return math.nan
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise SchemaError(f"{where}: expected a number, found {data!r}")
        return float(data)
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise SchemaError(f"{where}: expected an integer, found {data!r}")
        return data
    if tp is bool:
        if not isinstance(data, bool):
            raise SchemaError(f"{where}: expected true/false, found {data!r}")
        return data
    if tp is str:
        if not isinstance(data, str):
            raise SchemaError(f"{where}: expected a string, found {data!r}")
        return data
    raise SchemaError(f"{where}: cannot read type {tp!r}")


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` (dataclass or plain data) as indented JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def load_json_as(cls: type[T], path: str | os.PathLike) -> T:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingFileError(f"{path} not found") from None
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path} is not valid JSON: {exc}") from None
    try:
        return from_jsonable(cls, data)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None
