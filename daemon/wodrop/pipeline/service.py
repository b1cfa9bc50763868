"""``wodrop run``: start-up checks, recovery, and the pipeline's tasks under one TaskGroup.

Stages are joined by bounded queues, so a slow stage holds the ones before it back and folders simply
wait in the inbox. SIGTERM/SIGINT cancel the tasks: every state that matters is already in the DB or
on disk (offsets after each chunk, the open archive is rebuilt at the next start), so stopping is quick
and a half-written archive is never uploaded. SIGHUP reloads the config (the settings that can change
live: watch, format, batch limits, log level, upload.max_bandwidth, followup).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from wodrop import metrics, notify
from wodrop.config import Config, ConfigError, load_config
from wodrop.fsops import NotSameFilesystem, check_same_filesystem
from wodrop.ledger import Ledger
from wodrop.logs import get_logger, setup_logging
from wodrop.pipeline.batcher import Batcher, SpoolSlots
from wodrop.pipeline.finish import Finisher
from wodrop.pipeline.followup import Followup
from wodrop.pipeline.intake import Intake
from wodrop.pipeline.recovery import recover
from wodrop.pipeline.uploads import Uploads
from wodrop.pipeline.validation import validator
from wodrop.pipeline.watch import filesystem_type, is_network_fs, watch_inbox
from wodrop.runtime import Runtime
from wodrop.sdnotify import Notifier, watchdog_loop
from wodrop.secrets import SecretError, resolve_api_key
from wodrop.state import StateDB, StateError
from wodrop.upload.transport import make_session
from wodrop.workorder.validate import WorkOrderReport

log = get_logger("wodrop.run")
QUEUE_SIZE = 64


class StartupError(Exception):
    """The daemon cannot start as configured (message for the operator; exit code 2)."""


def absolute(cfg: Config) -> Config:
    """Pin relative paths to the start-up directory: the DB stores paths and must find them again."""
    paths = cfg.paths.model_copy(update={k: Path(v).absolute() for k, v in cfg.paths.model_dump().items()})
    return cfg.model_copy(update={"paths": paths})


def prepare_folders(cfg: Config) -> None:
    p = cfg.paths
    for key, folder in (("inbox", p.inbox), ("processing", p.processing), ("done", p.done),
                        ("failed", p.failed), ("state", p.state), ("spool", p.spool)):
        if not folder.is_dir():
            try:
                folder.mkdir(parents=True)
            except OSError as e:
                raise StartupError(f"paths.{key}: cannot create {folder} ({e.strerror})") from None
            log.info("folder_created", key=key, path=str(folder))
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StartupError(f"paths.{key}: {folder} is not writable by this user (uid {os.getuid()})")
    for folder in (p.state, p.spool):
        make_private(folder)
    state_fs = filesystem_type(p.state)
    if is_network_fs(state_fs):
        log.warning("state_on_network_filesystem", path=str(p.state), fstype=state_fs,
                    hint="SQLite locking is unreliable on network filesystems: use a local disk")
    try:
        check_same_filesystem(
            {"inbox": p.inbox, "processing": p.processing, "done": p.done, "failed": p.failed}
        )
    except NotSameFilesystem as e:
        raise StartupError(str(e)) from None


def make_private(folder: Path) -> None:
    """The state DB and the spool hold upload URLs and customers' photos: 0700 (when it is ours)."""
    try:
        st = os.stat(folder)
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.chmod(folder, st.st_mode & 0o700 | 0o700)
            log.info("folder_made_private", path=str(folder))
    except OSError as e:
        log.warning("folder_mode_unchanged", path=str(folder), error=e.strerror)


def lock_instance(folder: Path, what: str) -> int:
    """One daemon per state dir and per processing dir (recovery adopts what is in processing/, so two
    instances sharing it would steal each other's work). Several instances may share one *inbox*."""
    fd = os.open(folder / ".wodrop.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StartupError(
            f"another wodrop is already using {folder} ({what}); give each instance its own "
            "paths.processing and paths.state (they may share the inbox, done and failed folders)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


async def cancel_all(tasks: list[asyncio.Task[None]], rounds: int = 50, every: float = 0.2) -> None:
    """Cancel the pipeline's tasks, and cancel again any that survived: on Python 3.11,
    ``asyncio.wait_for`` swallows a cancellation that lands as its inner future completes (CPython
    gh-86296), which left a stage running after SIGTERM and the daemon never exiting."""
    pending = [t for t in tasks if not t.done()]
    for _ in range(rounds):
        if not pending:
            return
        for t in pending:
            t.cancel()
        _, still = await asyncio.wait(pending, timeout=every)
        pending = list(still)
        if pending:
            log.warning("stage_ignored_cancel", tasks=[t.get_name() for t in pending],
                        action="cancelling again")


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = absolute(cfg)
        self.stop = asyncio.Event()
        self.notifier = Notifier()

    async def run(self) -> None:
        cfg = self.cfg
        prepare_folders(cfg)
        locks = [lock_instance(cfg.paths.state, "paths.state"), lock_instance(cfg.paths.processing,
                                                                              "paths.processing")]
        try:
            db = StateDB(cfg.paths.db)
        except StateError as e:
            raise StartupError(str(e)) from None
        try:
            db.check()
            ledger = Ledger(cfg.paths.done, db.instance_id())
            ledger.open()
        except StateError as e:
            db.close()
            raise StartupError(str(e)) from None
        except OSError as e:
            db.close()
            raise StartupError(f"paths.done: cannot use the delivered-ids ledger in {cfg.paths.done} "
                               f"({e.strerror})") from None
        try:
            async with self._platform(cfg) as (api_url, api_key):
                await self._run(cfg, db, ledger, api_url, api_key)
        finally:
            db.close()
            for fd in locks:
                os.close(fd)

    @contextlib.asynccontextmanager
    async def _platform(self, cfg: Config) -> AsyncIterator[tuple[str, str]]:
        """The platform API to upload to, or an embedded local receiver when ``api.url`` is not set."""
        if cfg.api.url:
            try:
                key = resolve_api_key(cfg)
            except SecretError as e:
                raise StartupError(str(e)) from None
            if not key:
                raise StartupError(
                    "no API key: set CUSTOMER_API_KEY (or DEEPOMATIC_API_KEY), api.api_key_file, "
                    "or a systemd credential named api_key"
                )
            yield cfg.api.url, key
            return
        from wodrop.receiver import start_receiver

        store = cfg.local_receiver_store
        receiver = await start_receiver(store)
        log.warning("embedded_receiver", url=receiver.url, store=str(store),
                    note="api.url is not set: batches go to a local test receiver, NOT to the platform")
        try:
            yield receiver.url, "local-receiver"
        finally:
            await receiver.stop()

    async def _run(self, cfg: Config, db: StateDB, ledger: Ledger, api_url: str, api_key: str) -> None:
        rt = Runtime(cfg=cfg, db=db, notifier=notify.from_config(cfg.notify))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload, rt)

        finisher = Finisher(cfg, db, rt.notifier)
        slots = SpoolSlots(cfg.batch.max_sealed)
        to_validate, to_upload = await recover(db, finisher, ledger, cfg, slots)
        await finisher.release_stale_claims()
        validate_q: asyncio.Queue[int] = asyncio.Queue(QUEUE_SIZE)
        batch_q: asyncio.Queue[tuple[int, WorkOrderReport]] = asyncio.Queue(QUEUE_SIZE)
        upload_q: asyncio.Queue[int] = asyncio.Queue()
        for batch_id in to_upload:
            upload_q.put_nowait(batch_id)

        status_runner = None
        if cfg.status.listen:
            from wodrop.status.server import start_status_server

            try:
                status_runner = await start_status_server(rt, cfg.status.listen)
            except OSError as e:
                raise StartupError(f"status.listen {cfg.status.listen}: {e.strerror or e}") from None
            log.info("status_server_started", listen=[f"{a[0]}:{a[1]}" for a in status_runner.addresses])

        intake = Intake(rt, slots)
        async with make_session(cfg.upload) as http:
            uploads = Uploads(rt, finisher, slots, http, api_url, api_key, validate_q, ledger)
            batcher = Batcher(rt, finisher, slots, upload_q, ledger)
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks = [
                        self._task(tg, "watch",
                                   watch_inbox(rt, intake.wake, self.stop, intake.restart_watcher)),
                        self._task(tg, "intake", intake.run(validate_q, to_validate)),
                        self._task(tg, "validate", validator(rt, finisher, ledger, validate_q, batch_q)),
                        self._task(tg, "batch", batcher.run(batch_q)),
                        self._task(tg, "heartbeat", self._heartbeat(rt)),
                        self._task(tg, "watchdog", watchdog_loop(self.notifier, rt)),
                        self._task(tg, "check-key", uploads.check_key()),
                        self._task(tg, "bandwidth", uploads.throttle.run()),
                        self._task(tg, "followup", Followup(rt, http, api_url, api_key, uploads).run()),
                        self._task(tg, "notify", notify.deliver(rt, http)),
                        self._task(tg, "notify-stalls", notify.watch_stalls(rt)),
                    ]
                    tasks += [self._task(tg, f"upload-{i}", uploads.worker(upload_q))
                              for i in range(cfg.upload.concurrency)]
                    rt.ready = True
                    self.notifier.ready("started")
                    log.info("wodrop_started", inbox=str(cfg.paths.inbox), api=api_url,
                             recovered_work_orders=len(to_validate), resumed_batches=len(to_upload),
                             concurrency=cfg.upload.concurrency, watch=rt.watcher)
                    await self.stop.wait()
                    rt.stopping, rt.ready = True, False
                    self.notifier.stopping()
                    await cancel_all(tasks)
            finally:
                if status_runner is not None:
                    await status_runner.cleanup()
                self.notifier.close()
        log.info("wodrop_stopped")

    @staticmethod
    def _task(tg: asyncio.TaskGroup, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return tg.create_task(coro, name=name)

    def _request_stop(self, sig: signal.Signals) -> None:
        if not self.stop.is_set():
            log.info("stopping", signal=sig.name)
        self.stop.set()

    def _reload(self, rt: Runtime) -> None:
        """SIGHUP: re-read the config; apply what can change live, keep the rest, never crash."""
        self.notifier.reloading()
        try:
            new = absolute(load_config(self.cfg.source))
        except ConfigError as e:
            log.error("reload_failed", error=str(e), note="keeping the current configuration")
            self.notifier.ready("reload failed; running with the previous configuration")
            return
        if (new.paths != rt.cfg.paths or new.api != rt.cfg.api or new.status != rt.cfg.status
                or new.notify != rt.cfg.notify):
            log.warning("reload_needs_restart",
                        note="paths, api, status and notify settings apply after a restart")
        upload = rt.cfg.upload.model_copy(update={"max_bandwidth": new.upload.max_bandwidth})
        live = rt.cfg.model_copy(update={"watch": new.watch, "format": new.format, "batch": new.batch,
                                         "log": new.log, "upload": upload, "followup": new.followup})
        rt.cfg = live
        setup_logging(live.log.level, live.log.format)
        if rt.bandwidth is not None:  # the running uploads too
            rt.bandwidth.replace(live.upload.bandwidth)
        log.info("config_reloaded", source=str(self.cfg.source))
        self.notifier.ready("config reloaded")

    @staticmethod
    async def _heartbeat(rt: Runtime) -> None:
        """Proof of a live loop for /healthz (a blocked loop stops updating it)."""
        while True:
            rt.last_loop_tick = time.monotonic()
            metrics.PENDING_FOLDERS.set(len(rt.pending))
            await asyncio.sleep(1.0)
