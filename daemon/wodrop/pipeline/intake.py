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
import os
import sqlite3
import time
from pathlib import Path

from wodrop import metrics, waiting
from wodrop.failpoints import failpoint
from wodrop.fsops import rename_noreplace
from wodrop.logs import get_logger
from wodrop.pipeline.batcher import SpoolSlots
from wodrop.pipeline.guard import Parked, describe
from wodrop.pipeline.scan import InboxScanner, ScanResult
from wodrop.pipeline.settle import Settler
from wodrop.runtime import Runtime
from wodrop.waiting import WaitingFolder, display_name, is_utf8
from wodrop.workorder.validate import validate_work_order

log = get_logger("wodrop.intake")
INBOX_UNREACHABLE = "the inbox cannot be read"
NOT_UTF8 = ("its name is not valid UTF-8, so it cannot be a work-order id: rename it (wodrop leaves it "
            "alone)")
SAME_NAME = "a work order of that name is still being processed; it is claimed when that one is done"
#: how often the waiting list is written for ``wodrop status`` (when it changed)
WAITING_SAVE_INTERVAL = 2.0
#: the list is written again this often even when nothing changed, so ``wodrop status`` can tell a
#: running daemon's list ("as of 12s ago") from one left by a daemon that stopped
WAITING_REFRESH = 30.0


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
        self._scanner = InboxScanner()
        #: names held at the last publication of the waiting list (a release changes their reason)
        self._held_shown: set[str] = set()
        #: the waiting list changed in kind since it was last saved
        self._dirty = True
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
        self.rt.pending = settler.first_seen
        paused_logged: str | None = None
        while True:
            cfg = self.rt.cfg  # SIGHUP may have replaced it
            settler.settle, settler.ready_marker = cfg.watch.settle, cfg.watch.ready_marker
            extra = tuple(cfg.watch.extra_temp_patterns)
            self.wake.clear()  # before the scan: a change seen while it runs makes another one at once
            try:
                scan = await asyncio.to_thread(self._scanner.scan, cfg.paths.inbox, cfg.watch.ready_marker,
                                               extra)
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
            for s in set(scan.strays) - self._strays:
                linked = os.path.islink(cfg.paths.inbox / s)
                log.warning("inbox_stray_file", name=display_name(s),
                            hint="a symbolic link: wodrop never follows links; move the folder itself in"
                            if linked else "only folders are work orders; this file is left alone")
            self._strays = set(scan.strays)
            await self._record_unrecorded(out)
            now = time.monotonic()
            for gone in [name for name in self._held if name not in scan.snapshots]:
                self._held.pop(gone)
                self._retry_at.pop(gone, None)
                self._backoff.succeeded(gone)
            for name in scan.changed:  # a name never changes: looking at new ones is enough
                if not is_utf8(name) and name not in self._held:
                    log.warning("inbox_name_not_utf8", folder=display_name(name), action="left in the inbox")
                    self._held[name] = NOT_UTF8
            ready = settler.apply(scan.changed, scan.gone, now)
            metrics.PENDING_FOLDERS.set(len(self.rt.pending))
            metrics.OLDEST_PENDING_AGE.set(self.rt.oldest_pending_age())
            paused = self._paused()
            if paused != paused_logged:
                if paused:
                    log.warning("intake_paused", reason=paused, pending=len(scan.snapshots))
                else:
                    log.info("intake_resumed")
                paused_logged = paused
            tick = cfg.watch.rescan_interval
            if scan.snapshots:
                tick = min(tick, max(0.25, cfg.watch.settle / 4))
            for name in ready if not paused else []:
                if self._paused():
                    break
                if self._held.get(name) == NOT_UTF8 or self._retry_at.get(name, 0.0) > now:
                    continue
                if time.monotonic() - now >= tick and await self._changed(name, settler):
                    continue
                try:
                    wo_id = await self._take(name, settler, now)
                except Exception as e:  # this folder's trouble: hold it, go on with the others
                    self._hold(name, e)
                    continue
                if wo_id is not None:
                    await out.put(wo_id)
            self._publish_waiting(scan, settler, paused)
            if self._dirty:  # a change not written yet (saves are spaced): come back to write it
                tick = min(tick, max(0.1, self._saved_at + WAITING_SAVE_INTERVAL - time.time()))
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=tick)
            except TimeoutError:
                pass

    async def _changed(self, name: str, settler: Settler) -> bool:
        """Claims wait for room in the validator's queue, for minutes after a big drop: a folder
        found complete that long ago is looked at again before it is taken (it may have changed
        since it settled: its settle clock then starts again). True when it is not to be taken now."""
        cfg = self.rt.cfg
        try:
            snap = await asyncio.to_thread(self._scanner.look_again, cfg.paths.inbox, name,
                                           cfg.watch.ready_marker, tuple(cfg.watch.extra_temp_patterns))
        except OSError:
            return True  # gone, or the inbox cannot be read: the next scan tells
        if snap is None:
            return False
        settler.apply({name: snap}, [], time.monotonic())
        return True

    def _forget(self, name: str, settler: Settler) -> None:
        """The folder left the inbox (claimed, or taken by another instance): off the settler, the
        scanner (a folder of that name seen later is a new one) and the waiting list."""
        settler.forget(name)
        self._scanner.forget(name)
        if self.rt.waiting.pop(name, None) is not None:
            self._dirty = True

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
                self._forget(name, settler)  # taken by another instance
            return None
        failpoint("claim.renamed")
        self._held.pop(name, None)
        self._retry_at.pop(name, None)
        self._backoff.succeeded(name)
        self._forget(name, settler)
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

    def _publish_waiting(self, scan: ScanResult, settler: Settler, paused: str | None) -> None:
        """``Runtime.waiting`` for /api/status, and the file ``wodrop status`` reads (when it changed
        in kind: a folder came or went, or its reason before the colon changed).

        Kept up to date in place, at a cost that follows the changes: a folder's reason is worked out
        again only when its snapshot changed, when it can change with time or with the pause
        (:attr:`Settler.live`: settling, or ready), or when the folder is held for a reason of its own
        (or just was). Every other reason ("no ready marker yet", "a temporary file is present",
        "empty folder") depends on the snapshot alone."""
        shown = self.rt.waiting
        for name in scan.gone:
            if shown.pop(name, None) is not None:
                self._dirty = True
        held = set(self._held)
        now_mono, now = time.monotonic(), time.time()
        for name in {*scan.changed, *settler.live, *held, *self._held_shown}:
            first_seen = settler.first_seen.get(name)
            if first_seen is None:  # claimed, or gone
                if shown.pop(name, None) is not None:
                    self._dirty = True
                continue
            reason = self._held.get(name) or settler.reason(name, now_mono)
            if paused and reason.startswith("ready"):
                reason = f"ready, but intake is paused: {paused}"
            old = shown.get(name)
            if old is not None and old.reason == reason:
                continue
            since = old.since if old is not None else now - (now_mono - first_seen)
            shown[name] = WaitingFolder(display_name(name), since, reason)
            log.debug("folder_waiting", folder=display_name(name), reason=reason)
            if old is None or old.reason.split(":")[0] != reason.split(":")[0]:
                self._dirty = True
        self._held_shown = held
        since_saved = now - self._saved_at
        if (self._dirty and since_saved >= WAITING_SAVE_INTERVAL) or since_saved >= WAITING_REFRESH:
            try:
                waiting.save(waiting.waiting_path(self.rt.cfg.paths.state), shown.values(), now)
            except OSError as e:
                log.warning("waiting_list_not_saved", error=e.strerror)
            self._dirty, self._saved_at = False, now
