"""Turning pydantic's errors into findings a person can act on.

pydantic knows the location and the kind of each error; the models know what each field accepts
(its :class:`~quayd.units.fieldtypes.Accepts` marker, or its type); the source map knows the file
and line. This module joins the three.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from quayd.units.fieldtypes import Accepts
from quayd.units.findings import Finding
from quayd.units.tomlpos import KeyPath
from quayd.units.values import kind_of

Locator = Callable[[KeyPath], tuple[Path, int | None]]
"""Given an error location, the file and line that best explain it."""

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MAX_VALUE_TEXT = 80


def findings_from(error: ValidationError, model: type[BaseModel], locate: Locator) -> list[Finding]:
    findings = []
    for detail in error.errors():
        loc = tuple(detail["loc"])
        # pydantic marks an error in a table's key name by appending "[key]" to its location;
        # a user's own key may be spelled "[key]" too, so only a table's key counts.
        is_key = len(loc) >= 2 and loc[-1] == "[key]" and _is_table_of_pairs(model, loc[:-2])
        if is_key:
            loc = loc[:-1]
        file, line = locate(loc)
        message, accepted = _explain(detail, model, loc)
        if is_key:
            message = f"the key name is {message}"
        no_value = is_key or detail["type"] == "missing"
        value = None if no_value else toml_text(detail.get("input"))
        findings.append(
            Finding(
                file=file,
                line=line,
                key=dotted(loc) or None,
                value=value,
                message=message,
                accepted=accepted,
            )
        )
    return findings


def _explain(detail: Mapping[str, Any], model: type[BaseModel], loc: KeyPath) -> tuple[str, str]:
    kind: str = detail["type"]
    ctx = detail.get("ctx") or {}
    annotation, metadata = resolve(model, loc)
    accepted = describe(annotation, metadata)
    if kind == "extra_forbidden":
        return _unknown_key(model, loc)
    if kind == "missing":
        if _is_model(annotation):
            return f"the [{dotted(loc)}] table is required", accepted
        return "this key is required", accepted
    if kind == "quay_syntax":
        return str(ctx["message"]), str(ctx["accepted"])
    if kind == "literal_error":
        return "not one of the accepted values", accepted
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a table, not {kind_of(detail.get('input'))}", accepted
    if kind.endswith("_type") or kind in ("int_from_float", "bool_parsing"):
        given = detail.get("input")
        if accepted == "a string" and isinstance(given, int | float):
            return (
                f"wrong type: {kind_of(given)} (quote it: {json.dumps(toml_text(given))})",
                accepted,
            )
        return f"wrong type: {kind_of(given)}", accepted
    message = str(detail["msg"])
    message = message.removeprefix("Value error, ").replace("Input should be", "must be")
    return message, accepted


def _is_table_of_pairs(model: type[BaseModel], loc: KeyPath) -> bool:
    annotation, _ = resolve(model, loc)
    return typing.get_origin(annotation) is dict


def _unknown_key(model: type[BaseModel], loc: KeyPath) -> tuple[str, str]:
    parent, _ = resolve(model, loc[:-1])
    key = str(loc[-1])
    if not _is_model(parent):
        return "unknown key", ""
    known = list(parent.model_fields)
    accepted = "one of " + ", ".join(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f'unknown key; did you mean "{close[0]}"?', accepted
    elsewhere = _tables_with_key(model, key)
    if elsewhere and len(loc) >= 1:
        return f"unknown key here; did you mean it in [{elsewhere[0]}]?", accepted
    return "unknown key", accepted


def _tables_with_key(model: type[BaseModel], key: str) -> list[str]:
    found = []
    for name, field in model.model_fields.items():
        inner, _ = _unwrap(field.annotation, ())
        if _is_model(inner) and key in inner.model_fields:
            found.append(name)
    return found


# --- walking the model along an error location ---------------------------------------------------


def resolve(model: type[BaseModel], loc: KeyPath) -> tuple[Any, tuple[Any, ...]]:
    """The annotation (and its metadata) found by following ``loc`` from ``model``."""
    annotation: Any = model
    metadata: tuple[Any, ...] = ()
    for part in loc:
        annotation, metadata = _unwrap(annotation, metadata)
        origin = typing.get_origin(annotation)
        if _is_model(annotation) and isinstance(part, str) and part in annotation.model_fields:
            field = annotation.model_fields[part]
            annotation, metadata = field.annotation, tuple(field.metadata)
        elif origin is list and isinstance(part, int):
            annotation, metadata = typing.get_args(annotation)[0], ()
        elif origin is dict:
            annotation, metadata = typing.get_args(annotation)[1], ()
        else:
            return None, ()
    return _unwrap(annotation, metadata)


def _unwrap(annotation: Any, metadata: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            args = typing.get_args(annotation)
            annotation, metadata = args[0], (*metadata, *args[1:])
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation, metadata
            annotation = members[0]
        else:
            return annotation, metadata


def describe(annotation: Any, metadata: Sequence[Any] = ()) -> str:
    """What a field accepts, in words: its marker if it has one, else derived from its type."""
    annotation, metadata = _unwrap(annotation, tuple(metadata))
    for item in metadata:
        if isinstance(item, Accepts):
            return item.text
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(v) for v in typing.get_args(annotation))
    if origin is list:
        item = describe(typing.get_args(annotation)[0])
        return "an array of strings" if item == "a string" else f"an array; each item {item}"
    if origin is dict:
        item = describe(typing.get_args(annotation)[1])
        return "a table of NAME = VALUE pairs" + ("" if item == "a string" else f", each {item}")
    if _is_model(annotation):
        return "a table with the keys " + ", ".join(annotation.model_fields)
    return {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        timedelta: "a duration",
    }.get(annotation, "")


def _is_model(annotation: Any) -> typing.TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


# --- spelling keys and values as TOML does -------------------------------------------------------


def dotted(loc: KeyPath) -> str:
    """``("mounts", 0, "target")`` → ``mounts[0].target``; odd keys quoted as TOML quotes them."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            text += f".{key}" if text else key
    return text


def toml_text(value: Any, depth: int = 0) -> str:
    """A short TOML spelling of a value for messages: ``"lots"``, ``42``, ``true``, ``[...]``."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and not math.isfinite(value):
        text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    elif isinstance(value, str | int | float):
        text = json.dumps(value, ensure_ascii=False)
    elif depth >= 3 and isinstance(value, list | dict):
        text = "[...]" if isinstance(value, list) else "{...}"
    elif isinstance(value, list):
        text = "[" + ", ".join(toml_text(v, depth + 1) for v in value[:10]) + "]"
    elif isinstance(value, dict):
        pairs = list(value.items())[:10]
        text = "{ " + ", ".join(f"{dotted((k,))} = {toml_text(v, depth + 1)}" for k, v in pairs)
        text += " }"
    else:
        text = str(value)
    if len(text) > _MAX_VALUE_TEXT:
        text = text[: _MAX_VALUE_TEXT - 3] + "..."
    return text
