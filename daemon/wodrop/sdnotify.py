"""systemd ``Type=notify`` support: READY, STATUS, WATCHDOG, RELOADING, STOPPING datagrams.

The protocol is one AF_UNIX datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace), so no dependency is needed. Outside systemd every method is a no-op. The socket is
non-blocking: a full queue drops a notification rather than stalling the event loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

from wodrop.logs import get_logger
from wodrop.redact import redact
from wodrop.runtime import Runtime
from wodrop.status.collect import collect_status, summary_line

log = get_logger(__name__)

#: how often :func:`watchdog_loop` refreshes STATUS= (seconds)
STATUS_EVERY = 5.0


class Notifier:
    """Talks to the service manager named by ``NOTIFY_SOCKET`` in ``environ`` (default: os.environ)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | None = ("\0" + addr[1:] if addr.startswith("@") else addr) or None
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram; False when not sent (never raises)."""
        if self._addr is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), self._addr)
            return True
        except OSError as e:
            log.warning("sd_notify_failed", fields=[f.split("=", 1)[0] for f in fields], error=str(e))
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """Before a SIGHUP reload; send :meth:`ready` when it is done (``Type=notify-reload``)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of ``WATCHDOG_USEC``), or None when no watchdog is asked of us."""
        if self._addr is None or not self._watchdog_usec.isdigit() or int(self._watchdog_usec) == 0:
            return None
        if self._watchdog_pid and self._watchdog_pid != str(os.getpid()):
            return None  # meant for another process (we were started by a wrapper)
        return int(self._watchdog_usec) / 2e6

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def watchdog_loop(notifier: Notifier, runtime: Runtime, *, status_every: float = STATUS_EVERY) -> None:
    """Ping WATCHDOG=1 every :meth:`Notifier.watchdog_interval` and refresh STATUS= every
    ``status_every`` seconds, from the event loop itself: a blocked loop stops the pings and
    systemd restarts the daemon. Returns at once outside systemd; runs until cancelled."""
    if not notifier.enabled:
        return
    interval = notifier.watchdog_interval()
    step = min(interval, status_every) if interval else status_every
    last_status, last_text = -float("inf"), ""
    while True:
        if interval:
            notifier.watchdog()
        now = time.monotonic()
        if now - last_status >= status_every:
            last_status = now
            try:
                text = summary_line(collect_status(runtime.db, runtime, recent=5))
            except Exception as e:  # a status line must never take the watchdog down
                text = redact(f"status unavailable: {e}")
            if text != last_text and notifier.status(text):
                last_text = text
        await asyncio.sleep(step)
