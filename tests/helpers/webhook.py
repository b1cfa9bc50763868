"""A webhook listener on 127.0.0.1, on its own thread and loop (for async tests and daemon subprocesses
alike): it records every request and answers as the test says."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web

#: how to answer the n-th request (1-based): a status code, or None to hang until the listener stops
#: (then it answers 503)
Answer = Callable[[int], int | None]


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        return doc

    @property
    def event(self) -> str:
        return str(self.json["event"])

    def signed_with(self, secret: bytes) -> bool:
        expected = "sha256=" + hmac.new(secret, self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("X-Wodrop-Signature", ""), expected)


class WebhookThread:
    """``with WebhookThread(answer=lambda n: 503) as hook: ... hook.url, hook.requests``"""

    def __init__(self, answer: Answer = lambda n: 204, body: bytes = b"") -> None:
        self.answer, self.body = answer, body
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhook", daemon=True)
        self._runner: web.AppRunner | None = None
        self._released: asyncio.Event | None = None
        self.url = ""

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def events(self) -> list[str]:
        return [r.event for r in self.requests]

    def wait_for(self, predicate: Callable[[list[Request]], bool], timeout: float = 30,
                 what: str = "requests") -> list[Request]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.requests
            if predicate(got):
                return got
            time.sleep(0.05)
        received = [r.body[:300] for r in self.requests]
        raise AssertionError(f"timed out waiting for {what}; received: {received}")

    def wait_for_event(self, event: str, count: int = 1, timeout: float = 30) -> list[Request]:
        got = self.wait_for(lambda rs: sum(r.event == event for r in rs) >= count, timeout,
                            f"{count} x {event}")
        return [r for r in got if r.event == event]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            self._requests.append(Request(request.path_qs, dict(request.headers), body))
            n = len(self._requests)
        status = self.answer(n)
        if status is None:
            assert self._released is not None
            await self._released.wait()
            status = 503
        return web.Response(status=status, body=self.body if status != 204 else None)

    async def _start(self) -> None:
        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hooks/wodrop"

    async def _stop(self) -> None:
        assert self._released is not None and self._runner is not None
        self._released.set()  # hanging requests end before the server does
        await self._runner.cleanup()

    def __enter__(self) -> WebhookThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
