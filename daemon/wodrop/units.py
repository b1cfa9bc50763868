"""Human units in config and output: sizes (``512MiB``, ``2GB``) and durations (``30s``, ``5m``)."""

from __future__ import annotations

import math
import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: larger sizes are refused like infinity (they fit no float, and no disk)
_SIZE_MAX = 2**63 - 1
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """Bytes from an int or a string like ``512MiB``; raises ValueError with the expected form.

    ``.nan``, ``.inf`` and numbers too big for a float are refused: a size must be finite."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 512MiB")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("expected a finite size like 512MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected a size like 512MiB, not a negative number")
        if value > _SIZE_MAX:
            raise ValueError("expected a finite size like 512MiB")
        return value
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            size = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
            if not math.isfinite(size) or size > _SIZE_MAX:
                raise ValueError("expected a finite size like 512MiB")
            return int(size)
    raise ValueError("expected a size like 512MiB")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``30s``, ``5m``, ``1h``.

    ``.nan``, ``.inf`` and numbers too big for a float are refused: a duration must be finite (NaN
    compares false with everything, so a NaN ``watch.settle`` would let any folder through)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s or 5m")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond a float's range
            seconds = math.inf
        if not math.isfinite(seconds):
            raise ValueError("expected a finite duration like 30s")
        if seconds < 0:
            raise ValueError("expected a duration like 30s or 5m, not a negative number")
        return seconds
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _DURATION_UNITS:
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
            if not math.isfinite(seconds):
                raise ValueError("expected a finite duration like 30s")
            return seconds
    raise ValueError("expected a duration like 30s or 5m")


def format_size(n: float) -> str:
    """``1.5 GiB`` style, for people."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``2m05s`` style, for people."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def noun(n: int, word: str) -> str:
    """``word`` as ``n`` of them are called: ``batch`` for 1, ``batches`` for 0 or 2 (English nouns of
    wodrop's messages: ``-es`` after a sibilant, else ``-s``)."""
    return word if n == 1 else f"{word}es" if word.endswith(("ch", "sh", "s", "x")) else f"{word}s"


def plural(n: int, word: str) -> str:
    """``1 batch``, ``2 batches``, ``0 work orders``: a count and its noun, for people."""
    return f"{n} {noun(n, word)}"
