"""Intake: rescan the inbox, settle folders, claim complete ones into ``processing/``.

Claim order: rename ``inbox/WO`` -> ``processing/WO`` first, then record it in the DB. A crash between
the two leaves a folder in ``processing/`` the DB doesn't know; recovery adopts it. A rename that fails
because the folder is gone means another instance (or a person) took it: not an error.
"""

from __future__ import annotations

import asyncio
import errno
import time
from pathlib import Path

from wodrop import metrics
from wodrop.fsops import rename_noreplace
from wodrop.logs import get_logger
from wodrop.pipeline.batcher import SpoolSlots
from wodrop.pipeline.scan import scan_inbox
from wodrop.pipeline.settle import Settler
from wodrop.runtime import Runtime
from wodrop.workorder.validate import validate_work_order

log = get_logger("wodrop.intake")
INBOX_UNREACHABLE = "the inbox cannot be read"


def claim(inbox: Path, processing: Path, name: str) -> Path | None:
    """Atomically take ``inbox/name``; None when another process got there first or a work order of
    that name is still in ``processing/`` (it then waits in the inbox, untouched)."""
    dest = processing / name
    try:
        rename_noreplace(inbox / name, dest)
    except FileNotFoundError:
        return None
    except FileExistsError:
        return None
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY):
            return None
        raise
    return dest


class Intake:
    def __init__(self, runtime: Runtime, slots: SpoolSlots) -> None:
        self.rt, self.slots = runtime, slots
        self.wake = asyncio.Event()
        #: set when the inbox comes back after being unreachable: the watcher must watch it anew
        self.restart_watcher = asyncio.Event()
        self._strays: set[str] = set()
        self._blocked: set[str] = set()

    def _paused(self) -> str | None:
        if self.rt.intake_paused:
            return self.rt.intake_paused
        if self.slots.full:
            return f"{self.slots.used} sealed batches are waiting for upload (batch.max_sealed)"
        return None

    async def run(self, out: asyncio.Queue[int], recovered: list[int]) -> None:
        for wo_id in recovered:
            await out.put(wo_id)
        cfg = self.rt.cfg
        settler = Settler(cfg.watch.settle, cfg.watch.ready_marker)
        paused_logged: str | None = None
        while True:
            cfg = self.rt.cfg  # SIGHUP may have replaced it
            settler.settle, settler.ready_marker = cfg.watch.settle, cfg.watch.ready_marker
            extra = tuple(cfg.watch.extra_temp_patterns)
            try:
                snapshots, strays = await asyncio.to_thread(
                    scan_inbox, cfg.paths.inbox, cfg.watch.ready_marker, extra
                )
            except OSError as e:
                # Share unmounted, stale NFS handle, inbox removed: wait for it, never die of it.
                if self.rt.intake_paused != INBOX_UNREACHABLE:
                    log.error("inbox_unreachable", inbox=str(cfg.paths.inbox), error=str(e), retry_in=5)
                self.rt.intake_paused = INBOX_UNREACHABLE
                await asyncio.sleep(5)
                continue
            if self.rt.intake_paused == INBOX_UNREACHABLE:
                self.rt.intake_paused = None
                self.restart_watcher.set()
                log.info("inbox_reachable_again", inbox=str(cfg.paths.inbox))
            for s in set(strays) - self._strays:
                log.warning("inbox_stray_file", name=s,
                            hint="only folders are work orders; this file is left alone")
            self._strays = set(strays)
            now = time.monotonic()
            ready = settler.update(snapshots, now)
            self.rt.pending = settler.pending()
            metrics.PENDING_FOLDERS.set(len(self.rt.pending))
            metrics.OLDEST_PENDING_AGE.set(self.rt.oldest_pending_age())
            paused = self._paused()
            if paused != paused_logged:
                if paused:
                    log.warning("intake_paused", reason=paused, pending=len(snapshots))
                else:
                    log.info("intake_resumed")
                paused_logged = paused
            for name in ready if not paused else []:
                if self._paused():
                    break
                if cfg.watch.ready_marker is None:
                    report = await asyncio.to_thread(validate_work_order, cfg.paths.inbox / name, cfg.format)
                    if "truncated_image" in report.codes and settler.hold(name, now):
                        log.info("work_order_looks_incomplete", work_order=name,
                                 action=f"waiting {cfg.watch.settle:g}s more for the copy to finish")
                        continue
                path = await asyncio.to_thread(claim, cfg.paths.inbox, cfg.paths.processing, name)
                if path is None:
                    if (cfg.paths.processing / name).exists():
                        if name not in self._blocked:
                            log.info("work_order_waiting", work_order=name,
                                     reason="a work order of that name is still being processed")
                            self._blocked.add(name)
                    else:
                        settler.forget(name)  # taken by another instance
                    continue
                self._blocked.discard(name)
                settler.forget(name)
                wo_id = self.rt.db.add_work_order(name, path)
                log.info("work_order_claimed", work_order=name)
                await out.put(wo_id)
            tick = cfg.watch.rescan_interval
            if snapshots:
                tick = min(tick, max(0.25, cfg.watch.settle / 4))
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=tick)
            except TimeoutError:
                pass
