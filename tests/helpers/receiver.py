"""A reference receiver on its own thread and event loop: usable from sync tests, async tests (whose
loop is another one) and subprocess clients alike."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from wodrop.receiver import RunningReceiver, start_receiver


class ReceiverThread:
    """``with ReceiverThread(tmp_path / "received", faults="reset:0.1", seed=1) as rx: rx.url``"""

    def __init__(self, store: Path, **build_app_kwargs: Any) -> None:
        self.store = Path(store)
        self._kwargs = build_app_kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="receiver", daemon=True)
        self._running: RunningReceiver | None = None

    @property
    def url(self) -> str:
        assert self._running is not None, "use ReceiverThread as a context manager"
        return self._running.url

    @property
    def stats(self) -> dict[str, Any]:
        """A consistent snapshot (the counters are lock-protected)."""
        assert self._running is not None, "use ReceiverThread as a context manager"
        return self._running.stats

    def __enter__(self) -> ReceiverThread:
        self._thread.start()
        start = start_receiver(self.store, **self._kwargs)
        self._running = asyncio.run_coroutine_threadsafe(start, self._loop).result(timeout=30)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._running is not None:
            asyncio.run_coroutine_threadsafe(self._running.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
