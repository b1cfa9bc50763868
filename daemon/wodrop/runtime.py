"""Live, in-memory state of a running daemon that the status server and sd_notify read.

The state DB holds what must survive a crash; this holds what only matters while the process lives
(rates, the inbox backlog, whether the key was refused). The pipeline writes, observers read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wodrop.config import Config
from wodrop.notify import Notifier
from wodrop.state import StateDB
from wodrop.upload.bandwidth import Throttle
from wodrop.waiting import WaitingFolder

#: the current upload rate is over this many seconds
RATE_WINDOW = 10.0
#: rate samples are kept this far apart (the last one always current): a few dozen per upload
_SAMPLE_EVERY = 0.25


@dataclass
class UploadProgress:
    """One running upload, as the status and the stall check see it. Progress is the furthest archive
    offset the connection took, as it takes it (the server confirms only at each span's end): bytes
    sent again after a failure are no progress; a new session after an expiry starts afresh."""

    batch_id: int
    name: str
    total: int
    #: the archive offset reached: confirmed by the server, or taken by the connection since (a display)
    sent: int = 0
    started: float = field(default_factory=time.monotonic)
    #: the furthest offset the connection took, and when (monotonic): ``notify.stall_after``, the rate
    furthest: int = field(init=False)
    progressed_at: float = field(init=False)
    #: (monotonic time, ``furthest``) over the last :data:`RATE_WINDOW` seconds and one before
    samples: list[tuple[float, int]] = field(init=False)
    #: where "now" comes from (tests freeze it: the rate depends on when it is read)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.restart(self.sent, self.started)

    def restart(self, offset: int = 0, now: float | None = None) -> None:
        """A new session (after an expiry) sends from ``offset`` again: progress counts from there."""
        now = self.clock() if now is None else now
        self.sent = self.furthest = offset
        self.progressed_at = now
        self.samples = [(now, offset)]

    def update(self, offset: int) -> None:
        self.sent = offset
        if offset <= self.furthest:
            return
        now = self.clock()
        self.furthest, self.progressed_at = offset, now
        if len(self.samples) >= 2 and now - self.samples[-2][0] < _SAMPLE_EVERY:
            self.samples[-1] = (now, offset)
        else:
            self.samples.append((now, offset))
        while len(self.samples) > 2 and now - self.samples[1][0] > RATE_WINDOW:
            self.samples.pop(0)

    @property
    def rate(self) -> float:
        """New bytes/s over the last :data:`RATE_WINDOW` seconds (what moves the upload on; 0 while it
        only sends bytes again, or nothing)."""
        now = self.clock()
        span = min(RATE_WINDOW, max(now - self.started, 1.0))  # no spike from the first burst
        since = now - span
        before = next((f for t, f in reversed(self.samples) if t <= since), self.samples[0][1])
        return (self.furthest - before) / span


@dataclass
class Runtime:
    cfg: Config
    db: StateDB
    started_at: float = field(default_factory=time.time)
    #: inbox folder name -> monotonic time first seen (not yet claimed)
    pending: dict[str, float] = field(default_factory=dict)
    #: inbox folder name -> why it is not claimed yet (``/api/status`` ``inbox.waiting``)
    waiting: dict[str, WaitingFolder] = field(default_factory=dict)
    uploads: dict[int, UploadProgress] = field(default_factory=dict)
    #: items that failed and wait for a retry ("work order WO_1" -> reason): shown by /readyz and status
    stuck: dict[str, str] = field(default_factory=dict)
    #: True once the platform accepted the key at least once (or no key is needed)
    api_key_accepted: bool | None = None
    #: the upload rate limit and its timetable (``upload.max_bandwidth``), once uploads are set up
    bandwidth: Throttle | None = None
    #: "events" | "polling" | "restarting"
    watcher: str = "starting"
    #: where the pipeline's events for people go (``notify.*``); emits nothing when not configured
    notifier: Notifier = field(default_factory=Notifier)
    last_loop_tick: float = field(default_factory=time.monotonic)
    ready: bool = False
    stopping: bool = False
    _auth_error: str | None = field(default=None, init=False, repr=False)
    _intake_paused: str | None = field(default=None, init=False, repr=False)
    _paused_since: float = field(default=0.0, init=False, repr=False)

    @property
    def auth_error(self) -> str | None:
        """Set when the platform refused the API key (401/403); uploads are paused meanwhile."""
        return self._auth_error

    @auth_error.setter
    def auth_error(self, error: str | None) -> None:
        """A refusal is told to people once (``api_key_refused``), not on every retry."""
        if error and self._auth_error is None:
            self.notifier.emit("api_key_refused", error=error)
        self._auth_error = error or None

    @property
    def intake_paused(self) -> str | None:
        """Why intake is paused (spool disk full, inbox unreachable), or None."""
        return self._intake_paused

    @intake_paused.setter
    def intake_paused(self, reason: str | None) -> None:
        """A change is told to people (``intake_paused``/``intake_resumed``); the same reason set
        again is not a change."""
        before, self._intake_paused = self._intake_paused, reason or None
        if self._intake_paused == before:
            return
        now = time.monotonic()
        if self._intake_paused is not None:
            self.notifier.emit("intake_paused", reason=self._intake_paused)
            if before is None:
                self._paused_since = now
        else:
            self.notifier.emit("intake_resumed", reason=before, paused_for=round(now - self._paused_since, 1))

    def oldest_pending_age(self) -> float:
        return time.monotonic() - min(self.pending.values()) if self.pending else 0.0
