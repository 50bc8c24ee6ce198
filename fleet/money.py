"""Money: exact integer micro-credits inside, credits as people write them outside.

The market's prices, holds and budgets and the usage handlers report are all integer
micro-credits (1 credit = 1,000,000). People write credits as numbers or decimal strings
(``2``, ``1.5``, ``"0.25"``), converted exactly here, so no float ever reaches a price, a
charge or a sum.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal

from pydantic_core import PydanticCustomError

from fleet.json_codec import json_kind

MICRO = 1_000_000  # micro-credits per credit
# Amounts travel in Avro longs (at most about 9.2e18 micro); 1e12 credits (1e18 micro)
# leaves room for a price times a few units, and is far beyond any real budget.
MAX_CREDITS = 10**12
_DECIMAL_TEXT = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


def credits_to_micro(value: object) -> int:
    """Credits as people write them (``2``, ``1.5``, ``"0.25"``) as exact micro-credits.

    Raises ValueError with the reason: a bool, NaN or infinity, a negative amount, more
    than 6 decimals, more than :data:`MAX_CREDITS`, or text that is not a plain decimal.
    """
    if isinstance(value, bool):  # a bool is an int in Python, but True is not 1 credit
        raise ValueError(f"expected credits as a number or a decimal string, got {_kind(value)}")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite amount of credits, got {value!r}")
        # repr is the shortest text that reads back as this float: what the person wrote
        # (0.1 is "0.1", not the binary fraction 0.1000000000000000055...).
        amount = Decimal(repr(value))
    elif isinstance(value, str):
        # Not Decimal's own grammar, which also takes "NaN", "1e3", "1_000" and spaces.
        if not _DECIMAL_TEXT.match(value):
            raise ValueError(
                f'expected credits as a decimal such as "2" or "0.25", got {_text(value)}'
            )
        amount = Decimal(value)
    else:
        raise ValueError(f"expected credits as a number or a decimal string, got {_kind(value)}")
    if amount < 0:
        raise ValueError(f"credits must not be negative, got {_text(value)}")
    if amount > MAX_CREDITS:
        raise ValueError(f"at most {MAX_CREDITS} credits, got {_text(value)}")
    # Exact rational arithmetic: no decimal context, so nothing is ever rounded.
    numerator, denominator = amount.as_integer_ratio()
    micro, rest = divmod(numerator * MICRO, denominator)
    if rest:
        raise ValueError(f"at most 6 decimals (1 micro-credit is 0.000001), got {_text(value)}")
    return micro


def micro_to_credits(micro: int) -> str:
    """Micro-credits as the shortest exact decimal string of credits (1_500_000 -> "1.5");
    :func:`credits_to_micro` reads it back to the same integer."""
    if type(micro) is not int or micro < 0:
        raise ValueError(f"expected micro-credits as an integer >= 0, got {micro!r}")
    whole, fraction = divmod(micro, MICRO)
    return f"{whole}.{fraction:06d}".rstrip("0") if fraction else str(whole)


def pydantic_money(value: object) -> int:
    """:func:`credits_to_micro` for a pydantic ``BeforeValidator``: the reason becomes the
    error message as is (a plain ValueError would read "Value error, ...")."""
    try:
        return credits_to_micro(value)
    except ValueError as exc:
        raise PydanticCustomError("money", "{reason}", {"reason": str(exc)}) from None


def _text(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _kind(value: object) -> str:
    phrase = json_kind(value)
    if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 40):
        return f"{phrase} ({json.dumps(value)})"
    return phrase
