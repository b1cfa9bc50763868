"""A token bucket shared by every concurrent upload, for ``upload.max_bandwidth`` (bytes/s), and the
:class:`Throttle` that keeps its rate on the timetable.

Sites with a small uplink cap wodrop so that it does not starve their other traffic, often only during
working hours. Waiters are served in arrival order (the lock is held while waiting), so concurrent
uploads share the rate fairly. The rate can change at any time (:meth:`Bandwidth.set_rate`): a
waiter is woken and pays the rest of its debt at the new rate, or goes at once when the limit is
lifted, so a timetable or a SIGHUP reaches the uploads already running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from wodrop.logs import get_logger
from wodrop.units import format_size
from wodrop.upload.schedule import BandwidthSchedule, local_instant

log = get_logger("wodrop.upload")


class Bandwidth:
    """``await acquire(n)`` before sending n bytes; the long-run rate never exceeds ``rate``.

    ``rate`` None: no limit (``acquire`` returns at once)."""

    def __init__(self, rate: float | None = None, *, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._burst_arg = burst
        self._clock = clock
        self.rate: float | None = None
        self.burst = 0.0
        self._tokens = 0.0
        self._last = clock()
        self._lock = asyncio.Lock()
        #: set (and replaced) by set_rate: wakes the waiter so that it recomputes its wait
        self._changed = asyncio.Event()
        self.set_rate(rate)

    def set_rate(self, rate: float | None) -> None:
        """Change the limit now (None: no limit), for the waiter already sleeping too."""
        if rate is not None and not rate > 0:
            raise ValueError("rate must be > 0 (None: no limit)")
        now = self._clock()
        if self.rate is not None and rate is not None:
            self._refill(now)  # what accrued (or is owed) at the old rate carries over
        else:  # from or to no limit: nothing is owed, and a limit starts with a full burst
            self._tokens = float("inf")
        self._last = now
        self.rate = None if rate is None else float(rate)
        if self.rate is not None:
            # A quarter second of burst keeps the rate smooth at the scale a person or a router sees.
            burst = self._burst_arg
            self.burst = float(burst) if burst is not None else max(self.rate / 4, 65536.0)
            self._tokens = min(self._tokens, self.burst)
        self._changed.set()
        self._changed = asyncio.Event()

    def _refill(self, now: float) -> None:
        assert self.rate is not None
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def _debit(self, n: int) -> float:
        """Take n tokens (possibly into debt); the seconds to wait until the debt is paid."""
        self._refill(self._clock())
        self._tokens -= n
        return self._owed()

    def _owed(self) -> float:
        assert self.rate is not None
        return -self._tokens / self.rate if self._tokens < 0 else 0.0

    async def acquire(self, n: int) -> None:
        if self.rate is None:
            return
        async with self._lock:
            if self.rate is None:  # lifted while this one queued
                return
            delay = self._debit(n)
            while delay > 0:
                changed = self._changed
                try:
                    async with asyncio.timeout(delay):
                        await changed.wait()
                except TimeoutError:
                    return  # the debt is paid
                if self.rate is None:
                    return
                self._refill(self._clock())  # the rest of the debt, at the new rate
                delay = self._owed()


def local_now() -> datetime:
    """The local time, with its UTC offset (the system's time zone)."""
    return datetime.now().astimezone()


def describe_rate(rate: float | None) -> str:
    """``2.0 MiB/s`` or ``no limit``, for people."""
    return "no limit" if rate is None else f"{format_size(rate)}/s"


class Throttle:
    """Keeps a :class:`Bandwidth` at the rate a :class:`BandwidthSchedule` gives for the local time:
    at each change time (:meth:`run`) and at once when the schedule is replaced (SIGHUP: :meth:`replace`).

    The clock is checked again at least every ``RECHECK`` seconds, so that a wall clock that is set, or a
    machine that slept (the monotonic clock that timers use stops meanwhile), is caught up within a minute.
    """

    RECHECK = 60.0

    def __init__(self, schedule: BandwidthSchedule, limiter: Bandwidth | None = None, *,
                 now: Callable[[], datetime] = local_now) -> None:
        self.limiter = limiter if limiter is not None else Bandwidth()
        self.schedule = schedule
        #: when the rate changes next (aware, local offset), and to what
        self.next_change_at: datetime | None = None
        self.next_rate: float | None = None
        self._now = now
        self._wake = asyncio.Event()
        self.apply("start")

    def apply(self, reason: str, *, previous: BandwidthSchedule | None = None) -> None:
        """Set the rate for the time it is now; log ``bandwidth_changed`` when it or the schedule changed."""
        now = self._now()
        rate = self.schedule.rate_at(now)
        wall = self.schedule.next_change_after(now.replace(tzinfo=None))
        self.next_change_at = local_instant(wall, after=now) if wall is not None else None
        self.next_rate = self.schedule.rate_at(wall) if wall is not None else None
        old = self.limiter.rate
        if rate != old:
            self.limiter.set_rate(rate)
        schedule_changed = previous is not None and previous.text != self.schedule.text
        announce = rate != old or schedule_changed or (reason == "start" and self.schedule.limited)
        if announce:
            log.info("bandwidth_changed", reason=reason, limit=describe_rate(rate), limit_bytes_per_s=rate,
                     previous_bytes_per_s=old if reason != "start" else None,
                     schedule=self.schedule.text if self.schedule.is_timetable else None,
                     next_change_at=self.next_change_at.isoformat(timespec="seconds")
                     if self.next_change_at else None,
                     next_limit=describe_rate(self.next_rate) if self.next_change_at else None)

    def replace(self, schedule: BandwidthSchedule) -> None:
        """A new ``upload.max_bandwidth`` (SIGHUP): in force now, for the uploads already running too."""
        previous, self.schedule = self.schedule, schedule
        self.apply("reload", previous=previous)
        self._wake.set()

    def _delay(self) -> float:
        if self.next_change_at is None:
            return self.RECHECK
        left = (self.next_change_at.astimezone(UTC) - self._now().astimezone(UTC)).total_seconds()
        return min(self.RECHECK, max(0.0, left))

    async def run(self) -> None:
        """Forever: wait for the next change (or a replaced schedule), then apply it."""
        while True:
            self._wake.clear()
            try:
                async with asyncio.timeout(self._delay()):
                    await self._wake.wait()
                continue  # replaced: already applied; wait for the new schedule's next change
            except TimeoutError:
                pass
            self.apply("schedule")

    @contextlib.asynccontextmanager
    async def following(self) -> AsyncIterator[Bandwidth]:
        """``async with throttle.following() as limiter:`` the timetable is followed inside the block."""
        if not self.schedule.is_timetable:
            yield self.limiter
            return
        task = asyncio.create_task(self.run(), name="bandwidth")
        try:
            yield self.limiter
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
