"""The daemon's HTTP status server on ``status.listen``: ``/healthz``, ``/readyz``, ``/metrics``,
``/api/status`` and the status page ``/``.

It runs on the daemon's own event loop, so ``/healthz`` answering at all proves the loop is alive. DB
reads are sub-millisecond and called directly; the folder checks of ``/readyz`` touch the share,
which can hang (a dead NFS server), so they run on one dedicated thread with a time limit.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wodrop import metrics
from wodrop.commands.healthcheck import HEALTH_HEADER
from wodrop.config import parse_listen
from wodrop.lifecycle import BatchState
from wodrop.redact import redact
from wodrop.runtime import Runtime
from wodrop.status.collect import LOOP_STALE_AFTER, collect_status
from wodrop.status.page import render_page

RUNTIME = web.AppKey("runtime", Runtime)
FOLDER_CHECK_TIMEOUT = 2.0
FOLDERS = ("inbox", "processing", "done", "failed", "state")
# Known label values, created at zero so that rate() and increase() alerts work from the first scrape.
_KNOWN_LABELS = (
    (metrics.WORK_ORDERS, ("done", "invalid", "rejected")),
    (metrics.BATCHES_SEALED, ("size", "count", "age", "single", "duplicate", "space")),
    (metrics.RETRIES, ("timeout", "connection", "server_error", "throttled", "session_expired", "auth")),
)
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
}


def check_folders(folders: dict[str, Path]) -> list[str]:
    """Every problem with the working folders, in words (empty when all are usable)."""
    problems = []
    for key, path in folders.items():
        try:
            if not stat.S_ISDIR(os.stat(path).st_mode):
                problems.append(f"{key} folder {path} is not a directory")
            elif not os.access(path, os.W_OK | os.X_OK):
                problems.append(f"{key} folder {path} is not writable by this user")
        except FileNotFoundError:
            problems.append(f"{key} folder {path} does not exist")
        except OSError as e:
            problems.append(f"{key} folder {path} cannot be read ({e.strerror})")
    return problems


class _FolderProbe:
    """Runs :func:`check_folders` on one thread; a probe stuck on a hung share is awaited again by
    the next request instead of piling up threads."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="wodrop-readyz")
        self._pending: asyncio.Future[list[str]] | None = None

    async def run(self, folders: dict[str, Path]) -> list[str]:
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().run_in_executor(self._executor, check_folders, folders)
        try:
            return await asyncio.wait_for(asyncio.shield(self._pending), FOLDER_CHECK_TIMEOUT)
        except TimeoutError:
            return [f"folders: the filesystem did not answer within {FOLDER_CHECK_TIMEOUT:.0f} s "
                    "(a hung network share?)"]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


_PROBE = web.AppKey("folder_probe", _FolderProbe)


def _text(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, headers=_HEADERS)


async def healthz(request: web.Request) -> web.Response:
    """``ok`` or ``stuck``, in the body and in the header that tells ``wodrop healthcheck`` it is wodrop."""
    age = time.monotonic() - request.app[RUNTIME].last_loop_tick
    health, status, body = ("stuck", 503, f"stuck: the pipeline has not ticked for {age:.0f} s\n") \
        if age > LOOP_STALE_AFTER else ("ok", 200, "ok\n")
    return web.Response(text=body, status=status, headers={**_HEADERS, HEALTH_HEADER: health})


async def readyz(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    paths = rt.cfg.paths
    problems = await request.app[_PROBE].run({k: getattr(paths, k) for k in FOLDERS})
    if not rt.db.ok():
        problems.append(f"state DB {paths.db} does not answer")
    if rt.auth_error is not None:  # the whole reason already ("the platform refused the API key ...")
        problems.append(f"uploads paused: {rt.auth_error}")
    if rt.intake_paused:
        problems.append(f"intake paused: {rt.intake_paused}")
    problems += [f"{item} is stuck: {reason}" for item, reason in sorted(rt.stuck.items())]
    if rt.stopping:
        problems.append("shutting down")
    elif not rt.ready:
        problems.append("starting: recovery or the first inbox scan has not finished")
    if problems:  # each reason once, even when two checks see the same thing
        return _text(redact("not ready:\n" + "".join(f"- {p}\n" for p in dict.fromkeys(problems))), 503)
    return _text("ready\n")


def refresh_gauges(rt: Runtime) -> None:
    """Gauges that mirror state rather than count events: set them just before a scrape."""
    counts = rt.db.counts()["batches"]
    for state in BatchState:
        metrics.BATCHES.labels(state).set(counts.get(state, 0))
    metrics.PENDING_FOLDERS.set(len(rt.pending))
    metrics.OLDEST_PENDING_AGE.set(rt.oldest_pending_age())
    metrics.API_KEY_OK.set(0 if rt.auth_error else 1)
    last = rt.db.last_uploaded_at()
    if last is not None:
        metrics.LAST_UPLOAD.set(last)


async def metrics_handler(request: web.Request) -> web.Response:
    refresh_gauges(request.app[RUNTIME])
    return web.Response(body=generate_latest(metrics.REGISTRY),
                        headers={**_HEADERS, "Content-Type": CONTENT_TYPE_LATEST})


async def api_status(request: web.Request) -> web.Response:
    return web.json_response(collect_status(request.app[RUNTIME].db, request.app[RUNTIME]),
                             headers=_HEADERS)


async def page(request: web.Request) -> web.Response:
    status = collect_status(request.app[RUNTIME].db, request.app[RUNTIME])
    return web.Response(text=render_page(status), content_type="text/html", headers=_HEADERS)



def build_status_app(runtime: Runtime) -> web.Application:
    app = web.Application()
    app[RUNTIME] = runtime
    app[_PROBE] = _FolderProbe()

    async def close_probe(app: web.Application) -> None:
        app[_PROBE].close()

    app.on_cleanup.append(close_probe)
    for metric, values in _KNOWN_LABELS:
        for value in values:
            metric.labels(value)
    app.router.add_get("/", page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/api/status", api_status)
    return app


async def start_status_server(runtime: Runtime, listen: str) -> web.AppRunner:
    """Start serving; the caller owns the runner and calls ``await runner.cleanup()`` on shutdown.
    ``runner.addresses`` tells the bound address (useful with port 0)."""
    runner = web.AppRunner(build_status_app(runtime), access_log=None, handle_signals=False)
    await runner.setup()
    host, port = parse_listen(listen)
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
