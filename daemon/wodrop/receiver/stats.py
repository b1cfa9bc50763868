"""Counters a test or benchmark reads to see what the receiver really got (not what a client thinks
it sent): resent bytes, faults injected, sessions."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

COUNTERS = (
    "requests",  # every HTTP request
    "bytes_received",  # body bytes read on upload URLs, including resent/ignored ones
    "bytes_saved",  # bytes appended to stored files
    "chunks",  # PUTs with a body
    "status_queries",  # empty PUTs (bytes */T)
    "sessions_created",
    "uploads_completed",
)


class ReceiverStats:
    """Thread-safe: updated on the receiver's loop, read from any thread (ReceiverThread, tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self._faults: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**self._counts, "faults_injected": dict(self._faults)}
