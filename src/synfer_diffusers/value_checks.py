"""Number checks shared by every config and function of the package: one message format naming the field.

    `num_samples` must be an int >= 1, got 0.
    `eta` must be a number in [0, 1], got 2.0.
    `dropout` must be a number in [0, 1), got 1.0.
    `image_size` must be an int >= 1 or None, got -3.

The command line rewrites the field name into its flag (`--num-samples`, see `dataclass_cli`). This module imports
nothing beyond the standard library.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_int", "check_number", "check_positive", "check_probability"]


def _describe(minimum: float | None, maximum: float | None, open_minimum: bool, open_maximum: bool) -> str:
    if minimum is not None and maximum is not None:
        return f" in {'(' if open_minimum else '['}{minimum:g}, {maximum:g}{')' if open_maximum else ']'}"
    if minimum is not None:
        return f" {'>' if open_minimum else '>='} {minimum:g}"
    if maximum is not None:
        return f" {'<' if open_maximum else '<='} {maximum:g}"
    return ""


def check_number(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    integer: bool = False,
    open_minimum: bool = False,
    open_maximum: bool = False,
    optional: bool = False,
) -> None:
    """Raises a `ValueError` naming `name` unless `value` is a finite number (an int with `integer`; bools are
    neither) within the bounds; `open_minimum` / `open_maximum` exclude a bound itself, `optional` accepts None.

    Example:

    ```py
    >>> check_number("eta", 2.0, 0, 1)
    Traceback (most recent call last):
    ValueError: `eta` must be a number in [0, 1], got 2.0.
    ```
    """
    if value is None and optional:
        return
    kind = numbers.Integral if integer else numbers.Real
    valid = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    if valid and minimum is not None:
        valid = value > minimum if open_minimum else value >= minimum
    if valid and maximum is not None:
        valid = value < maximum if open_maximum else value <= maximum
    if not valid:
        what = ("an int" if integer else "a number") + _describe(minimum, maximum, open_minimum, open_maximum)
        raise ValueError(f"`{name}` must be {what}{' or None' if optional else ''}, got {value!r}.")


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None, *,
              optional: bool = False) -> None:  # fmt: skip
    """[`check_number`] for ints: `check_int("num_samples", n, 1)` refuses 0, 1.5 and True."""
    check_number(name, value, minimum, maximum, integer=True, optional=optional)


def check_positive(config: Any, *names: str, allow_zero: bool = False, allow_none: bool = False) -> None:
    """[`check_number`] for fields of `config`: each must be > 0 (>= 0 with `allow_zero`; None with
    `allow_none`)."""
    for name in names:
        check_number(name, getattr(config, name), 0, open_minimum=not allow_zero, optional=allow_none)


def check_probability(config: Any, *names: str) -> None:
    """[`check_number`] for fields of `config`: each must be in [0, 1]."""
    for name in names:
        check_number(name, getattr(config, name), 0, 1)
