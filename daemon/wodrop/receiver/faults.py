"""``--faults``: which failures the receiver injects and how often, drawn from one seeded RNG.

Grammar (documented for users in docs/readme/receiver.md)::

    SPEC  := FAULT ("," FAULT)*
    FAULT := KIND ["=" ARG] ":" RATE        RATE: probability per request, 0..1 or N%

    status=CODE:RATE      upload request answered CODE (400-599) before anything is read or saved
    api_status=CODE:RATE  the same for the batch API endpoints
    reset:RATE            part of a chunk's body is read, an aligned prefix saved, the connection aborted
    partial:RATE          only a 262144-multiple prefix (maybe 0) of a chunk's new bytes is saved; 308
    throttle[=SECS]:RATE  429 with ``Retry-After: SECS`` (default 1s)
    expire:RATE           the session is gone: 404 now and for every later request
    slow[=DUR]:RATE       sleep DUR (default 1s) before handling the request

Chunk PUTs can get every upload fault; status queries (empty PUTs) get only the ones a real server can
give without a body: ``status``, ``throttle``, ``expire`` and ``slow``. At most one fault per request:
the first in SPEC order whose draw hits.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from wodrop.units import parse_duration

_NEEDS_CODE = {"status", "api_status"}
_TAKES_DURATION = {"throttle": 1.0, "slow": 1.0}
KINDS = ("status", "api_status", "reset", "partial", "throttle", "expire", "slow")
CHUNK_FAULTS = frozenset({"status", "reset", "partial", "throttle", "expire", "slow"})
QUERY_FAULTS = frozenset({"status", "throttle", "expire", "slow"})
API_FAULTS = frozenset({"api_status"})


class FaultSpecError(ValueError):
    """A ``--faults`` SPEC that does not parse; the message names the bad part."""


@dataclass(frozen=True)
class Fault:
    kind: str
    rate: float
    arg: float = 0.0  # the status code, or a duration in seconds

    def __str__(self) -> str:
        if self.kind in _NEEDS_CODE:
            return f"{self.kind}={int(self.arg)}:{self.rate:g}"
        if self.kind in _TAKES_DURATION:
            return f"{self.kind}={self.arg:g}s:{self.rate:g}"
        return f"{self.kind}:{self.rate:g}"


def _parse_rate(text: str, item: str) -> float:
    try:
        rate = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise FaultSpecError(f"bad rate in '{item}': expected a probability like 0.05 or 5%") from None
    if not 0.0 <= rate <= 1.0:
        raise FaultSpecError(f"rate out of range in '{item}': expected 0..1 (or 0%..100%)")
    return rate


def _parse_one(item: str) -> Fault:
    head, sep, rate_text = item.rpartition(":")
    if not sep:
        raise FaultSpecError(f"missing rate in '{item}' (e.g. '{item}:0.05')")
    kind, has_arg, arg_text = head.partition("=")
    kind = kind.strip()
    if kind not in KINDS:
        raise FaultSpecError(f"unknown fault '{kind}' (known: {', '.join(KINDS)})")
    rate = _parse_rate(rate_text.strip(), item)
    if kind in _NEEDS_CODE:
        if not has_arg or not arg_text.strip().isdigit() or not 400 <= int(arg_text) <= 599:
            raise FaultSpecError(f"'{kind}' needs an HTTP error code 400-599, as in '{kind}=503:{rate:g}'")
        return Fault(kind, rate, float(int(arg_text)))
    if kind in _TAKES_DURATION:
        if not has_arg:
            return Fault(kind, rate, _TAKES_DURATION[kind])
        try:
            return Fault(kind, rate, parse_duration(arg_text.strip()))
        except ValueError:
            raise FaultSpecError(f"bad duration in '{item}': expected e.g. '{kind}=2s:{rate:g}'") from None
    if has_arg:
        raise FaultSpecError(f"'{kind}' takes no argument: '{kind}:{rate:g}'")
    return Fault(kind, rate)


def parse_faults(spec: str) -> list[Fault]:
    """The faults of a SPEC, in order; raises :class:`FaultSpecError`."""
    items = [s.strip() for s in spec.split(",")]
    return [_parse_one(s) for s in items if s]


class FaultPlan:
    """The configured faults plus the RNG that decides, request by request, which one fires.

    One RNG for the whole receiver: with a fixed seed and the same request sequence, the same
    requests fail, so a failing test replays."""

    def __init__(self, faults: Sequence[Fault] = (), seed: int | None = None) -> None:
        self.faults = list(faults)
        self._rng = random.Random(seed)

    @classmethod
    def parse(cls, spec: str | None, seed: int | None = None) -> FaultPlan:
        return cls(parse_faults(spec or ""), seed)

    def __bool__(self) -> bool:
        return bool(self.faults)

    def __str__(self) -> str:
        return ",".join(str(f) for f in self.faults)

    def draw(self, allowed: frozenset[str]) -> Fault | None:
        """The fault hitting this request, if any (one draw per applicable configured fault)."""
        for fault in self.faults:
            if fault.kind in allowed and self._rng.random() < fault.rate:
                return fault
        return None

    def fraction(self) -> float:
        """A uniform draw in [0, 1): where a reset cuts a body, how much a partial save keeps."""
        return self._rng.random()


def retry_after_seconds(fault: Fault) -> str:
    """``Retry-After`` takes whole seconds."""
    return str(max(1, math.ceil(fault.arg)))
