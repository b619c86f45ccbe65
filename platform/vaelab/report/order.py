"""Natural orders and display strings for table axes, legends and rows.

- trial ids and metric names: natural order ("t2" < "t10", "kl_layer_2" < "kl_layer_10");
- variants: the papers' order VAE, VAE+BN, VAE+BN+WU, LADDER+BN+WU, LVAE+BN+WU, then
  other labels by family and number of "+" parts;
- latent_dims / hidden_dims ('64-32-16'): by depth, then sizes;
- numbers ascending, False before True, None last.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence

_DIGITS = re.compile(r"(\d+)")
_VARIANT_FAMILIES = {"VAE": 0, "HVAE": 1, "LADDER": 2, "LVAE": 3}
_VARIANT_PARTS = {"BN": 0, "WU": 1}


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders embedded integers numerically."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _DIGITS.split(text) if p)


def variant_key(label: str) -> tuple[Any, ...]:
    parts = [p.strip().upper() for p in label.split("+")]
    family = _VARIANT_FAMILIES.get(parts[0], len(_VARIANT_FAMILIES))
    extras = tuple(_VARIANT_PARTS.get(p, len(_VARIANT_PARTS)) for p in parts[1:])
    return (label == "", family, len(parts), extras, natural_key(label))


def dims_key(text: str) -> tuple[Any, ...]:
    try:
        sizes = tuple(int(v) for v in text.split("-") if v)
    except ValueError:
        return (1, natural_key(text))
    return (0, len(sizes), sizes)


def value_key(axis: str, value: Any) -> tuple[Any, ...]:
    """Sort key of one axis value (axis = a param name, 'variant' or 'layer')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (9,)
    if axis == "variant":
        return (0, variant_key(str(value)))
    if axis in ("latent_dims", "hidden_dims"):
        return (0, dims_key(str(value)))
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, (int, float)):
        return (2, float(value))
    return (3, natural_key(str(value)))


def display(value: Any) -> str:
    """How an axis value is shown (and matched against row_order / column_order)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def ordered(axis: str, values: Iterable[Any], explicit: Sequence[Any] = ()) -> list[Any]:
    """Distinct values in natural order; those named in `explicit` first, in its order."""
    distinct = sorted(set(values), key=lambda v: value_key(axis, v))
    if not explicit:
        return distinct
    wanted = [display(v) if not isinstance(v, str) else v for v in explicit]
    by_display = {display(v): v for v in distinct}
    head = [by_display[w] for w in wanted if w in by_display]
    return head + [v for v in distinct if v not in head]
