"""User-facing errors.

Every problem a user can cause (bad input, unknown names, a database that does not answer) is
raised as a :class:`HwsearchError` whose message is one line saying what is wrong and what is
accepted. The CLI prints that line and exits with status 2; nothing else is shown.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable


class HwsearchError(ValueError):
    """A one-line, user-facing error."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def unknown(what: str, value: object, accepted: Iterable[object]) -> HwsearchError:
    """`unknown format 'int3'; accepted: fp32, bf16, ...`"""
    choices = ", ".join(str(a) for a in accepted)
    return HwsearchError(f"unknown {what} {value!r}; accepted: {choices}")


def check_range(what: str, value: int, low: int, high: int, why: str = "") -> int:
    """`value` as an int if `low <= value <= high`, else one line naming the limits (and why the upper one)."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or not low <= number <= high:
        reason = f" ({why})" if why else ""
        raise HwsearchError(f"{what}={value!r} is out of range; accepted: an integer from {low} to {high}{reason}")
    return number
