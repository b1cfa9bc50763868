"""A token bucket shared by every concurrent upload, for ``upload.max_bandwidth`` (bytes/s).

Sites with a small uplink cap wodrop so that it does not starve their other traffic. Waiters are served
in arrival order (the lock is held while sleeping), so concurrent uploads share the rate fairly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Bandwidth:
    """``await acquire(n)`` before sending n bytes; the long-run rate never exceeds ``rate``."""

    def __init__(self, rate: float, *, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        # A quarter second of burst keeps the rate smooth at the scale a person or a router sees.
        self.burst = float(burst) if burst is not None else max(self.rate / 4, 65536.0)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()
        self._lock = asyncio.Lock()

    def _debit(self, n: int) -> float:
        """Take n tokens (possibly into debt); the seconds to wait until the debt is paid."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        return -self._tokens / self.rate if self._tokens < 0 else 0.0

    async def acquire(self, n: int) -> None:
        async with self._lock:
            delay = self._debit(n)
            if delay > 0:
                await asyncio.sleep(delay)
