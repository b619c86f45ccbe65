"""One trial param checked alone against TrialConfig, and a mapping of them.

`check_param` returns the value as TrialConfig stores it, or why it is wrong; the
whole-trial checks (combinations) happen later, in expand.py. Imports pydantic,
vaelab.config, vaelab.errors, schema, wording and yaml_source.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Mapping, Optional

from pydantic import ValidationError

from vaelab.config import TrialConfig
from vaelab.errors import SpecError
from vaelab.studies.schema import PARAM_FIELDS, SPEC_PARAMS
from vaelab.studies.wording import base_type, field_message, suggest
from vaelab.studies.yaml_source import Source, key_join


def _no_model_validators() -> type[TrialConfig]:
    """TrialConfig with its cross-field checks switched off, to check one field alone.

    Overriding a decorated validator with a plain method removes it in pydantic v2;
    combinations are checked later, on each whole expanded trial.
    """
    names = TrialConfig.__pydantic_decorators__.model_validators
    namespace = {name: (lambda self, *a, **k: self) for name in names}
    return types.new_class("_TrialFields", (TrialConfig,), {}, lambda ns: ns.update(namespace))


_TrialFields = _no_model_validators()


def check_param(name: str, value: Any) -> tuple[Any, Optional[str]]:
    """Validate one trial param by itself: (normalised value, error message or None).

    Normalised means what TrialConfig stores: '64-32' -> (64, 32), '1e-3' -> 0.001.
    """
    if name == "seed":
        return value, "seeds are set by the study's `seeds:` list (or a budget's), not as a param"
    if name not in PARAM_FIELDS:
        return value, f"unknown trial parameter {name!r}{suggest(name, SPEC_PARAMS)}"
    if isinstance(value, bool) and _is_numeric(name):
        return value, f"{name} takes a number, not a boolean"
    if isinstance(value, dict):
        return value, f"{name} takes a single value, not a mapping"
    try:
        checked = _TrialFields.model_validate({name: value})
    except ValidationError as err:
        mine = [e for e in err.errors() if e["loc"][:1] == (name,)] or err.errors()
        message = field_message(name, mine[0])
        if isinstance(value, list) and not _is_sequence_field(name):
            message += " (to sweep values, write an axis: {grid: [...]})"
        return value, message
    return getattr(checked, name), None


def _is_numeric(name: str) -> bool:
    return base_type(name) in (int, float)


def _is_sequence_field(name: str) -> bool:
    return typing.get_origin(base_type(name)) in (tuple, list)


def param_default(name: str) -> Any:
    """TrialConfig's default, normalised as check_param would."""
    return PARAM_FIELDS[name].get_default(call_default_factory=True)


def check_params(
    values: Mapping[str, Any], path: str, src: Source, errors: list[SpecError]
) -> dict[str, Any]:
    normalised: dict[str, Any] = {}
    for name, value in values.items():
        clean, message = check_param(str(name), value)
        if message:
            errors.append(src.error(key_join(path, str(name)), value, message))
        normalised[str(name)] = clean
    return normalised
