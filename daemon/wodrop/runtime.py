"""Live, in-memory state of a running daemon that the status server and sd_notify read.

The state DB holds what must survive a crash; this holds what only matters while the process lives
(rates, the inbox backlog, whether the key was refused). The pipeline writes, observers read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from wodrop.config import Config
from wodrop.state import StateDB
from wodrop.upload.bandwidth import Throttle
from wodrop.waiting import WaitingFolder


@dataclass
class UploadProgress:
    batch_id: int
    name: str
    total: int
    sent: int = 0
    started: float = field(default_factory=time.monotonic)
    #: (monotonic time, offset) samples of the last few seconds, for a current rate
    samples: list[tuple[float, int]] = field(default_factory=list)

    def update(self, offset: int) -> None:
        now = time.monotonic()
        self.sent = offset
        self.samples.append((now, offset))
        while len(self.samples) > 2 and now - self.samples[0][0] > 10:
            self.samples.pop(0)

    @property
    def rate(self) -> float:
        """Bytes/s over the last ~10 s."""
        if len(self.samples) < 2:
            return 0.0
        (t0, o0), (t1, o1) = self.samples[0], self.samples[-1]
        return (o1 - o0) / (t1 - t0) if t1 > t0 else 0.0


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
    #: set when the platform refused the API key (401/403); uploads are paused meanwhile
    auth_error: str | None = None
    #: True once the platform accepted the key at least once (or no key is needed)
    api_key_accepted: bool | None = None
    #: why intake is paused (disk full, spool full), or None
    intake_paused: str | None = None
    #: the upload rate limit and its timetable (``upload.max_bandwidth``), once uploads are set up
    bandwidth: Throttle | None = None
    #: "events" | "polling" | "restarting"
    watcher: str = "starting"
    last_loop_tick: float = field(default_factory=time.monotonic)
    ready: bool = False
    stopping: bool = False

    def oldest_pending_age(self) -> float:
        return time.monotonic() - min(self.pending.values()) if self.pending else 0.0
