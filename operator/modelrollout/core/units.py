"""Kubernetes-style durations (`5m`, `1h30m`, `500ms`) and quantities (`512Mi`, `2G`)."""

from __future__ import annotations

import re

from modelrollout.core.text import short

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E|m)?$")
_SIZE_UNITS = {
    None: 1.0, "m": 1e-3, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}


def parse_duration(text: str | int | float) -> float:
    """Seconds in a Go-style duration; a bare number means seconds.

    Raises ValueError with the accepted units, so the caller can name the field.
    """
    if isinstance(text, bool):
        raise ValueError(f"{short(text)} is not a duration")
    if isinstance(text, int | float):
        return float(text)
    s = text.strip()
    if s.startswith("-"):
        raise ValueError(f"{short(text)} must be a positive duration")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"{short(text)} is not a duration (use a number with ms, s, m or h, e.g. '90s' or '5m')")
    return total


def parse_size(text: str | int | float) -> float:
    """Bytes in a Kubernetes quantity such as `512Mi` or `1G`."""
    if isinstance(text, bool):
        raise ValueError(f"{short(text)} is not a size")
    if isinstance(text, int | float):
        return float(text)
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(
            f"{short(text)} is not a size (use a number with Ki, Mi, Gi, Ti or k, M, G, T, e.g. '512Mi')"
        )
    return float(m.group(1)) * _SIZE_UNITS[m.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest readable form, for messages."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds < 120:
        return f"{seconds:g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s" if rest else f"{minutes}m"
