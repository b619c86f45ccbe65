"""Mistakes put in words: pydantic errors and bad values as one-line messages.

`structure_errors` turns a study/space file's pydantic errors into SpecErrors with key
paths; `field_message` / `range_text` word a trial param's error ('depth must be in
1..5'); `suggest` adds "did you mean". Imports pydantic, vaelab.errors, schema and
yaml_source.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, Iterable, Mapping, Union

from pydantic import BaseModel, ValidationError

from vaelab.errors import MISSING, SpecError
from vaelab.studies.schema import AXIS_KINDS, PARAM_FIELDS, format_scalar
from vaelab.studies.yaml_source import Source, key_join

# ---------------------------------------------------------------------------------
# Pydantic errors -> SpecErrors


def structure_errors(err: ValidationError, src: Source, model: type[BaseModel]) -> list[SpecError]:
    """Translate pydantic's errors into SpecErrors with dotted key paths."""
    found: list[SpecError] = []
    for item in err.errors():
        loc = tuple(seg for seg in item["loc"] if seg != "[key]")
        path = ""
        for seg in loc:
            path = key_join(path, seg)
        found.append(src.error(path, *_describe(item, loc, model)))
    return found


def _describe(item: Mapping[str, Any], loc: tuple[Any, ...], model: type[BaseModel]) -> tuple[Any, str]:
    kind = item["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        allowed = _allowed_keys(model, loc[:-1])
        noun = "axis kind" if allowed == list(AXIS_KINDS) else "key"
        return item.get("input"), f"unknown {noun} {key!r}{suggest(key, allowed)}; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return MISSING, "required key is missing"
    if kind == "string_pattern_mismatch" and loc == ("name",):
        return item.get("input"), "a study name is an MLflow experiment and a folder name: letters, digits, _ . -"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        if isinstance(item.get("input"), list) and len(loc) >= 2 and loc[-2] == "axes":
            values = ", ".join(format_scalar(v) for v in item["input"])
            return item.get("input"), (f"an axis names its kind: write {{grid: [{values}]}} "
                                       f"(kinds: {', '.join(AXIS_KINDS)})")
        return item.get("input"), "expected a mapping (key: value lines)"
    bound = _BOUND_WORDS.get(kind)
    if bound and loc:
        limit = next(iter(item.get("ctx", {}).values()), "?")
        limit = f"{limit:g}" if isinstance(limit, float) else limit
        # a list item's location ends in its index: name the list, not "0"
        name = next((seg for seg in reversed(loc) if isinstance(seg, str)), "the value")
        subject = f"every value of {name}" if isinstance(loc[-1], int) else name
        return item.get("input"), f"{subject} must be {bound} {limit}"
    message = str(item["msg"]).removeprefix("Value error, ")
    return item.get("input"), message


_BOUND_WORDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at `loc` below `model` (for 'allowed: ...')."""
    tp: Any = model
    for seg in loc:
        tp = _child_type(tp, seg)
        if tp is None:
            return []
    tp = strip_optional(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _child_type(tp: Any, seg: Any) -> Any:
    tp = strip_optional(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        info = tp.model_fields.get(str(seg))
        return info.annotation if info else None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (list, tuple) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def strip_optional(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------------
# A trial param's error


def field_message(name: str, error: Mapping[str, Any]) -> str:
    """A pydantic field error as the user thinks of it: 'depth must be in 1..5'."""
    kind = error["type"]
    if kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        return range_text(name)
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{name} must be one of {expected}"
    return f"{name}: {str(error['msg']).removeprefix('Value error, ')}"


def range_text(name: str) -> str:
    """'depth must be in 1..5', 'rho must be in [0, 1]', 'lr must be > 0'."""
    bounds: dict[str, Any] = {}
    for meta in PARAM_FIELDS[name].metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if getattr(meta, attr, None) is not None:
                bounds[attr] = getattr(meta, attr)
    if "ge" in bounds and "le" in bounds:
        lo, hi = bounds["ge"], bounds["le"]
        if base_type(name) is int:
            return f"{name} must be in {lo}..{hi}"
        return f"{name} must be in [{lo:g}, {hi:g}]"
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{symbols[k]} {v:g}" if isinstance(v, float) else f"{symbols[k]} {v}" for k, v in bounds.items()]
    return f"{name} must be " + " and ".join(parts)


def base_type(name: str) -> Any:
    return strip_optional(PARAM_FIELDS[name].annotation)
