"""Fault isolation: one item's error stays with that item; its stage goes on with the others.

Known failures are handled where they happen; this is for the rest (a filesystem error on a share, a
full disk, a damaged DB row, a bug): the item is logged once with its traceback, parked with its own
exponential backoff, shown in ``/readyz`` and the status (``Runtime.stuck``), and tried again later,
while the items behind it move on (no head-of-line blocking). The item stays where it is on disk and
in the DB, so trying it again is safe. Only whole-process failures (the state folder lost, config)
end the daemon.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from wodrop.logs import get_logger
from wodrop.redact import redact

log = get_logger("wodrop.guard")
T = TypeVar("T")
FIRST_DELAY = 2.0
MAX_DELAY = 300.0


def describe(exc: BaseException) -> str:
    """A plain reason for a person: ``permission denied: /share/failed/WO_1``, not a traceback."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename or ""
        return redact(f"{exc.strerror.lower()}{': ' + str(where) if where else ''}")
    return redact(f"{type(exc).__name__}: {exc}")


class Parked(Generic[T]):
    """Items waiting to be tried again, each with its own backoff (pure: the caller passes the time)."""

    def __init__(self, first: float = FIRST_DELAY, cap: float = MAX_DELAY,
                 key: Callable[[T], Hashable] = lambda item: item) -> None:
        self.first, self.cap, self.key = first, cap, key
        self._heap: list[tuple[float, int, T]] = []
        self._tries: dict[Hashable, int] = {}
        self._seq = itertools.count()

    def park(self, item: T, now: float) -> float:
        """Try ``item`` again later; returns the delay (doubling per failure, up to ``cap``)."""
        n = self._tries.get(self.key(item), 0)
        self._tries[self.key(item)] = n + 1
        delay = min(self.cap, self.first * 2**n)
        heapq.heappush(self._heap, (now + delay, next(self._seq), item))
        return delay

    def succeeded(self, item: T) -> None:
        self._tries.pop(self.key(item), None)

    def pop_due(self, now: float) -> T | None:
        if self._heap and self._heap[0][0] <= now:
            return heapq.heappop(self._heap)[2]
        return None

    def next_in(self, now: float) -> float | None:
        """Seconds until the next parked item is due (None: none parked)."""
        return max(0.0, self._heap[0][0] - now) if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)


async def next_item(queue: asyncio.Queue[T], parked: Parked[T]) -> T | None:
    """The next item to work on: a parked one that is due, else the queue's next (waiting until a
    parked item is due at the most: then None, and the caller asks again)."""
    now = time.monotonic()
    item = parked.pop_due(now)
    if item is not None:
        return item
    try:
        return await asyncio.wait_for(queue.get(), parked.next_in(now))
    except TimeoutError:
        return None


class Isolation(Generic[T]):
    """Run one item's step; on error, log it once, record it as stuck and park it for a retry."""

    def __init__(self, stage: str, stuck: dict[str, str], label: Callable[[T], str]) -> None:
        self.stage, self.stuck, self.label = stage, stuck, label
        self.parked: Parked[T] = Parked(key=label)
        self._last: dict[str, str] = {}  # item -> its last reason: the traceback is logged once

    async def run(self, item: T, step: Awaitable[None]) -> bool:
        key = self.label(item)
        try:
            await step
        except Exception as e:
            reason = describe(e)
            delay = self.parked.park(item, time.monotonic())
            if self._last.get(key) != reason:
                log.exception("item_failed", stage=self.stage, item=key, reason=reason, retry_in=delay)
            else:
                log.warning("item_failed_again", stage=self.stage, item=key, reason=reason, retry_in=delay)
            self._last[key] = reason
            self.stuck[key] = f"{self.stage}: {reason} (trying again in {delay:.0f} s)"
            return False
        self.parked.succeeded(item)
        self.stuck.pop(key, None)
        self._last.pop(key, None)
        return True
