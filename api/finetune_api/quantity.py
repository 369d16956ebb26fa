"""The one Kubernetes resource-quantity parser ("8", "8000m", "16Gi") of the project."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(m|k|[KMGTPE]i|[MGTPE]|)$")


def quantity(value: Any) -> Decimal:
    """A resource quantity as an exact number ("8" -> 8, "8000m" -> 8, "1Ki" -> 1024).
    Raises ValueError for anything else."""
    if isinstance(value, int):
        return Decimal(value)
    m = _QUANTITY.match(str(value).strip())
    if not m:
        raise ValueError(f"not a resource quantity: {value!r}")
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:
        raise ValueError(f"not a resource quantity: {value!r}") from None
    return number / 1000 if m.group(2) == "m" else number * _SUFFIX[m.group(2)]


def count(value: Any) -> int:
    """An extended-resource quantity as a whole number ("8", 8, "8000m" -> 8); rounds down."""
    return value if isinstance(value, int) else int(quantity(value))
