"""Bounded text for messages: a value quoted in an error is cut, however large or deeply nested it is.

A 413-byte YAML document of nested aliases expands to gigabytes when printed whole; `reprlib` stops at
fixed sizes and depths without expanding the rest.
"""

from __future__ import annotations

import reprlib
from typing import Any

_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel = 2
_REPR.maxtuple = _REPR.maxlist = _REPR.maxarray = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4
_REPR.maxdeque = 4
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 60, 40, 60
MESSAGE_LIMIT = 1024


def short(value: Any) -> str:
    """`repr(value)` cut to at most 100 characters."""
    return cap(_REPR.repr(value), 100)


def cap(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """A message cut to `limit` characters, saying how much was left out."""
    if len(message) <= limit:
        return message
    cut = f"… (+{len(message) - limit} characters)"
    return message[: limit - len(cut)] + cut
