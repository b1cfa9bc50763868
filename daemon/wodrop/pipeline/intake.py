"""Intake: rescan the inbox, settle folders, claim complete ones into ``processing/``.

Claim order: rename ``inbox/WO`` -> ``processing/WO`` first (``claim.renamed``), then record it in the
DB. A crash between the two leaves a folder in ``processing/`` the DB doesn't know; recovery adopts
it. A rename that fails because the folder is gone means another instance (or a person) took it: not
an error.

One folder's trouble stays with that folder: a folder wodrop may not move (another user's, the inbox
read-only), one whose name is not valid UTF-8 (it could never be a work-order id, and is left alone),
or one that cannot even be checked is held in the inbox with the reason in ``inbox.waiting`` and
tried again with a backoff, while the others are claimed.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import time
from pathlib import Path

from wodrop import metrics, waiting
from wodrop.failpoints import failpoint
from wodrop.fsops import rename_noreplace
from wodrop.logs import get_logger
from wodrop.pipeline.batcher import SpoolSlots
from wodrop.pipeline.guard import Parked, describe
from wodrop.pipeline.scan import scan_inbox
from wodrop.pipeline.settle import FolderSnapshot, Settler
from wodrop.runtime import Runtime
from wodrop.waiting import WaitingFolder, display_name
from wodrop.workorder.validate import validate_work_order

log = get_logger("wodrop.intake")
INBOX_UNREACHABLE = "the inbox cannot be read"
NOT_UTF8 = ("its name is not valid UTF-8, so it cannot be a work-order id: rename it (wodrop leaves it "
            "alone)")
SAME_NAME = "a work order of that name is still being processed; it is claimed when that one is done"
#: how often the waiting list is written for ``wodrop status`` (when it changed)
WAITING_SAVE_INTERVAL = 2.0


def claim(inbox: Path, processing: Path, name: str) -> Path | None:
    """Atomically take ``inbox/name``; None when another process got there first or a work order of
    that name is still in ``processing/`` (it then waits in the inbox, untouched). Other OSErrors
    (permission denied, read-only) are the folder's problem and raised."""
    dest = processing / name
    try:
        rename_noreplace(inbox / name, dest)
    except (FileNotFoundError, FileExistsError):
        return None
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY):
            return None
        raise
    return dest


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Intake:
    def __init__(self, runtime: Runtime, slots: SpoolSlots) -> None:
        self.rt, self.slots = runtime, slots
        self.wake = asyncio.Event()
        #: set when the inbox comes back after being unreachable: the watcher must watch it anew
        self.restart_watcher = asyncio.Event()
        self._strays: set[str] = set()
        #: folders held for a reason of their own (cannot move, bad name, same name in processing)
        self._held: dict[str, str] = {}
        self._backoff: Parked[str] = Parked()
        self._retry_at: dict[str, float] = {}
        #: claimed but not yet recorded (the DB failed): recorded on the next pass, or adopted at start-up
        self._unrecorded: list[tuple[str, Path]] = []
        self._saved: tuple[tuple[str, str], ...] | None = None
        self._saved_at = 0.0

    def _paused(self) -> str | None:
        if self.rt.intake_paused:
            return self.rt.intake_paused
        if self.slots.full:
            return f"{self.slots.used} sealed batches are waiting for upload (batch.max_sealed)"
        return None

    async def run(self, out: asyncio.Queue[int], recovered: list[int]) -> None:
        for recovered_id in recovered:
            await out.put(recovered_id)
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
                log.warning("inbox_stray_file", name=display_name(s),
                            hint="only folders are work orders; this file is left alone")
            self._strays = set(strays)
            await self._record_unrecorded(out)
            now = time.monotonic()
            for gone in set(self._held) - set(snapshots):
                self._held.pop(gone)
                self._retry_at.pop(gone, None)
                self._backoff.succeeded(gone)
            for name in snapshots:
                if not _utf8(name) and name not in self._held:
                    log.warning("inbox_name_not_utf8", folder=display_name(name), action="left in the inbox")
                    self._held[name] = NOT_UTF8
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
                if self._held.get(name) == NOT_UTF8 or self._retry_at.get(name, 0.0) > now:
                    continue
                try:
                    wo_id = await self._take(name, settler, now)
                except Exception as e:  # this folder's trouble: hold it, go on with the others
                    self._hold(name, e)
                    continue
                if wo_id is not None:
                    await out.put(wo_id)
            self._publish_waiting(snapshots, settler, paused)
            tick = cfg.watch.rescan_interval
            if snapshots:
                tick = min(tick, max(0.25, cfg.watch.settle / 4))
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=tick)
            except TimeoutError:
                pass

    async def _take(self, name: str, settler: Settler, now: float) -> int | None:
        """Check, claim and record one settled folder; its id, or None when it is not taken now."""
        cfg = self.rt.cfg
        if cfg.watch.ready_marker is None:
            report = await asyncio.to_thread(validate_work_order, cfg.paths.inbox / name, cfg.format)
            if "truncated_image" in report.codes and settler.hold(name, now):
                log.info("work_order_looks_incomplete", work_order=name,
                         action=f"waiting {cfg.watch.settle:g}s more for the copy to finish")
                return None
        path = await asyncio.to_thread(claim, cfg.paths.inbox, cfg.paths.processing, name)
        if path is None:
            if (cfg.paths.processing / name).exists():
                if self._held.get(name) != SAME_NAME:
                    log.info("work_order_waiting", work_order=name, reason=SAME_NAME)
                    self._held[name] = SAME_NAME
            else:
                settler.forget(name)  # taken by another instance
            return None
        failpoint("claim.renamed")
        self._held.pop(name, None)
        self._retry_at.pop(name, None)
        self._backoff.succeeded(name)
        settler.forget(name)
        try:
            wo_id = self.rt.db.add_work_order(name, path)
        except sqlite3.Error as e:
            log.error("claim_not_recorded", work_order=name, error=str(e),
                      action="recording it again shortly")
            self._unrecorded.append((name, path))
            return None
        log.info("work_order_claimed", work_order=name)
        return wo_id

    async def _record_unrecorded(self, out: asyncio.Queue[int]) -> None:
        while self._unrecorded:
            name, path = self._unrecorded[0]
            try:
                wo_id = self.rt.db.add_work_order(name, path)
            except sqlite3.Error:
                return
            self._unrecorded.pop(0)
            log.info("work_order_claimed", work_order=name, note="recorded after a DB error")
            await out.put(wo_id)

    def _hold(self, name: str, e: Exception) -> None:
        reason = (waiting.claim_failed_reason(e, self.rt.cfg.paths.inbox) if isinstance(e, OSError)
                  else f"cannot be checked: {describe(e)}")
        delay = self._backoff.park(name, time.monotonic())
        self._retry_at[name] = time.monotonic() + delay
        if self._held.get(name) != reason:
            log.warning("work_order_held", work_order=display_name(name), reason=reason,
                        retry_in=round(delay))
        self._held[name] = reason

    def _publish_waiting(self, snapshots: dict[str, FolderSnapshot], settler: Settler,
                         paused: str | None) -> None:
        """``Runtime.waiting`` for /api/status, and the file ``wodrop status`` reads (when it changed)."""
        now_mono, now = time.monotonic(), time.time()
        first_seen = settler.pending()
        entries: dict[str, WaitingFolder] = {}
        for name in snapshots:
            reason = self._held.get(name) or settler.reason(name, now_mono)
            if paused and reason.startswith("ready"):
                reason = f"ready, but intake is paused: {paused}"
            since = now - (now_mono - first_seen.get(name, now_mono))
            entries[name] = WaitingFolder(display_name(name), since, reason)
            if reason != (w.reason if (w := self.rt.waiting.get(name)) else None):
                log.debug("folder_waiting", folder=display_name(name), reason=reason)
        self.rt.waiting = entries
        kinds = tuple(sorted((w.name, w.reason.split(":")[0]) for w in entries.values()))
        if kinds != self._saved and now - self._saved_at >= WAITING_SAVE_INTERVAL:
            try:
                waiting.save(waiting.waiting_path(self.rt.cfg.paths.state), entries.values(), now)
            except OSError as e:
                log.warning("waiting_list_not_saved", error=e.strerror)
            self._saved, self._saved_at = kinds, now
