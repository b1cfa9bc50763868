"""The receiver's aiohttp application and a way to run it inside another program (the daemon's
zero-config mode, tests)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from wodrop.receiver import api, upload
from wodrop.receiver.context import RECEIVER_KEY, STATS_KEY, Receiver
from wodrop.receiver.faults import FaultPlan
from wodrop.receiver.sessions import Sessions
from wodrop.receiver.stats import ReceiverStats
from wodrop.receiver.store import Store

# Bodies are streamed, never read whole; this only bounds what request.read()/json() may buffer.
CLIENT_MAX_SIZE = 128 * 1024 * 1024
READ_BUFSIZE = 1024 * 1024


@web.middleware
async def _count_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request.app[STATS_KEY].add("requests")
    return await handler(request)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS_KEY].snapshot())


def build_app(
    store: Path, *, api_key: str | None = None, faults: FaultPlan | str | None = None,
    seed: int | None = None, strict_paths: bool = False, processing_time: float = 0.0,
    require_metadata_keys: Sequence[str] = (),
) -> web.Application:
    """The receiver storing to ``store``. ``faults`` is a :class:`FaultPlan` or a ``--faults`` SPEC
    (then ``seed`` seeds its RNG); a bad SPEC raises :class:`~wodrop.receiver.faults.FaultSpecError`.
    ``strict_paths``: only the vendor client's API paths and headers (see :func:`api.add_routes`);
    ``processing_time`` and ``require_metadata_keys`` shape the emulated processing after an upload."""
    plan = faults if isinstance(faults, FaultPlan) else FaultPlan.parse(faults, seed)
    stats = ReceiverStats()
    app = web.Application(client_max_size=CLIENT_MAX_SIZE, middlewares=[_count_requests])
    app[STATS_KEY] = stats
    app[RECEIVER_KEY] = Receiver(Sessions(Store(store), require_metadata_keys), stats, plan, api_key,
                                 processing_time)
    api.add_routes(app, strict=strict_paths)
    upload.add_routes(app)
    app.router.add_get("/_receiver/stats", _stats)
    return app


class RunningReceiver:
    """A receiver listening on a socket; ``url`` is its site root (API and upload URLs live under it)."""

    def __init__(self, runner: web.AppRunner, app: web.Application, url: str) -> None:
        self._runner = runner
        self.app = app
        self.url = url

    @property
    def stats(self) -> dict[str, Any]:
        return self.app[STATS_KEY].snapshot()

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_receiver(store: Path, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> RunningReceiver:
    """Build the app (``kw`` as :func:`build_app`) and serve it; ``port=0`` picks a free port."""
    app = build_app(store, **kw)
    # A bigger read buffer than aiohttp's 64 KiB: fewer pause/resume cycles on multi-MiB bodies.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, read_bufsize=READ_BUFSIZE)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return RunningReceiver(runner, app, f"http://{shown}:{bound_port}")
