"""What a value read from a caller, a JSON file or a record must be before it is used: Python's
bool is an int, and JSON gives floats for integers' places, so `isinstance` alone lets both in;
JSON and Python strings may hold lone surrogates, which no UTF-8 consumer (a tokenizer) takes."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import TypeGuard

from edgelalm.errors import EdgelalmError


def is_whole_number(value: object) -> TypeGuard[int]:
    """An int that is not a bool (True would count as 1 thread, 1 token, layer 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real_number(value: object) -> TypeGuard[float]:
    """An int or float (numpy's too) that is not a bool; NaN and infinities are the caller's to bound."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite_number(value: object) -> TypeGuard[float]:
    """A real number a float holds: not NaN or infinite, and not an int past float's range (JSON
    and Python give 10**400 as an int; math.isfinite and float() raise OverflowError on it)."""
    if not is_real_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """Refuse, in one line naming the setting, a value that is not one of `choices`."""
    if value not in choices:
        raise EdgelalmError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_unicode_text(text: str, what: str) -> None:
    """Refuse, in one line naming `what`, a string that UTF-8 cannot encode (a lone surrogate)."""
    try:
        text.encode()
    except UnicodeEncodeError as error:
        raise EdgelalmError(f"{what} is not valid Unicode text ({error.reason} at {error.start})") from None


def short_repr(value: object, width: int = 40) -> str:
    """`value` as Python writes it, cut to `width` characters: for messages naming a bad value."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
