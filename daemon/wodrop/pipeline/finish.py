"""Finish: move work orders out of ``processing/`` to ``done/`` or ``failed/`` (+ report), crash-safely.

Order of steps for one work order (a crash between any two is repaired at start-up, because the DB
records the destination *before* the rename; each gap has a named fail point):

1. pick a free destination name (``WO``, else ``WO.<UTC stamp>``, fitted to 255 bytes; for failed/
   the report's name must be free too)
2. DB: ``plan_move`` records that destination                      -- fail point ``finish.planned``
3. failed/ only: write the report (temp file + fsync + rename)      -- fail point ``finish.reported``
4. rename ``processing/WO`` -> destination (no-clobber, atomic)     -- fail point ``finish.moved``
5. DB: ``finish_work_order`` (done/failed, path = destination)

A batch is finished only after all its work orders are: its DB state goes to done/failed last, then its
archive is removed from the spool (``batch.finished``: a crash there leaves an orphan that recovery
removes). One folder that cannot be moved (``failed/`` not writable, the share gone) does not hold
the others back: they are moved, and the batch is tried again later for the rest.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from wodrop import metrics
from wodrop.claims import Claims
from wodrop.config import Config
from wodrop.failpoints import failpoint
from wodrop.fsops import (
    REPORT_SUFFIX,
    failure_report,
    free_names,
    fsync_dir,
    rename_noreplace,
    report_path,
    write_json_atomic,
)
from wodrop.lifecycle import BatchState, Origin, WorkOrderState
from wodrop.logs import get_logger
from wodrop.notify import Notifier
from wodrop.state import StateDB, WorkOrderRow

log = get_logger("wodrop.finish")


def _pick_destination(row: WorkOrderRow, target_dir: Path, failed: bool) -> Path:
    """Reuse a destination planned before a crash if it is still free, else take a free name."""
    suffixes = ("", REPORT_SUFFIX) if failed else ("",)
    if row.dest and Path(row.dest).parent == target_dir and not os.path.lexists(row.dest):
        return Path(row.dest)
    return target_dir / next(iter(free_names(target_dir, row.name, suffixes)))


def _move(src: Path, dest: Path, report: dict[str, Any] | None) -> None:
    if report is not None:  # with the folder's inode: `wodrop retry` finds it after a rename in failed/
        write_json_atomic(report_path(dest), {**report, "folder_inode": os.lstat(src).st_ino})
        failpoint("finish.reported")
    rename_noreplace(src, dest)
    fsync_dir(dest.parent)
    failpoint("finish.moved")


def _check_reachable(folder: Path) -> None:
    """A folder missing from processing/ means it was moved, unless processing/ itself is gone (share
    unmounted): then raise, and the finish is tried again when the share is back."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(2, "the processing folder cannot be reached (share unmounted?)", str(folder))


class Finisher:
    """Every move out of ``processing/`` goes through here (validation failures and batch outcomes)."""

    def __init__(self, cfg: Config, db: StateDB, notifier: Notifier) -> None:
        self.cfg, self.db, self.notifier = cfg, db, notifier
        self.claims = Claims(cfg.paths.done, db.instance_id(), cfg.paths.processing)

    async def _release_claim(self, name: str) -> None:
        """The id is finished here (in the ledger if delivered): other instances may take copies of it.
        A claim that cannot be removed now is released at the next start."""
        try:
            await asyncio.to_thread(self.claims.release, name)
        except OSError as e:
            log.warning("claim_not_released", work_order=name, error=e.strerror,
                        note="released at the next start; until then other instances refuse this id")

    async def release_stale_claims(self) -> None:
        """Start-up: drop this instance's claims on ids it no longer has in flight (a crash between
        finishing a work order and releasing its claim)."""
        in_flight = {row.name for row in self.db.work_orders(
            states=[WorkOrderState.CLAIMED, WorkOrderState.BATCHED])}
        try:
            await asyncio.to_thread(self.claims.release_stale, in_flight)
        except OSError as e:
            log.warning("claims_not_checked", error=e.strerror)

    async def _finish(self, row: WorkOrderRow, *, failed: bool, stage: str | None = None,
                      errors: list[dict[str, Any]] | None = None,
                      report: dict[str, Any] | None = None) -> Path:
        """Move one work order (with ``report`` next to it, for failed/)."""
        target_dir = self.cfg.paths.failed if failed else self.cfg.paths.done
        src = Path(row.path)
        dest = await asyncio.to_thread(_pick_destination, row, target_dir, failed)
        self.db.plan_move(row.id, dest)
        failpoint("finish.planned")
        try:
            await asyncio.to_thread(_move, src, dest, report)
        except FileExistsError:
            # Someone created that name between our check and the rename: plan another one.
            return await self._finish(self.db.work_order(row.id), failed=failed, stage=stage, errors=errors,
                                      report=report)
        self.db.finish_work_order(row.id, WorkOrderState.FAILED if failed else WorkOrderState.DONE, dest,
                                  stage=stage, errors=errors)
        await self._release_claim(row.name)
        return dest

    async def fail_work_order(self, row: WorkOrderRow, stage: str, errors: list[dict[str, Any]]) -> Path:
        report = failure_report(row.name, stage, errors)
        dest = await self._finish(row, failed=True, stage=stage, errors=errors, report=report)
        metrics.WORK_ORDERS.labels(outcome="invalid" if stage == "validation" else "rejected").inc()
        log.warning("work_order_failed", work_order=row.name, stage=stage, dest=str(dest),
                    codes=sorted({e["code"] for e in errors}), errors=[e["message"] for e in errors][:5])
        self.notifier.emit("work_order_failed", work_order=row.name, stage=stage, path=str(dest),
                           report=report)
        return dest

    async def finish_batch(self, batch_id: int, *, ok: bool, reason: str | None = None) -> None:
        """Move the batch's work orders to done/ (uploaded) or failed/ (rejected), then close it.

        Raises the first error met after trying every work order (the caller tries again later)."""
        batch = self.db.batch(batch_id)
        if batch.origin != Origin.DAEMON:
            raise ValueError(f"batch {batch.name} was not packed by the daemon; not the daemon's to finish")
        errors = [{"code": "upload_rejected", "file": None,
                   "message": f"The platform refused batch {batch.name}: {reason}"}] if not ok else None
        first_error: Exception | None = None
        for row in self.db.work_orders(batch_id=batch_id, states=[WorkOrderState.BATCHED]):
            try:
                await self._finish_one(batch.name, row, ok, errors)
            except Exception as e:
                log.error("work_order_finish_failed", work_order=row.name, batch=batch.name,
                          error=f"{type(e).__name__}: {e}", action="trying again later")
                first_error = first_error or e
        if first_error is not None:
            raise first_error
        self.db.finish_batch(batch_id, BatchState.DONE if ok else BatchState.FAILED, error=reason)
        failpoint("batch.finished")
        await asyncio.to_thread(remove_spool_file, self.cfg.paths.spool, Path(batch.archive_path))
        log.info("batch_finished", batch=batch.name, outcome="done" if ok else "failed",
                 work_orders=batch.work_order_count, size=batch.size)

    async def _finish_one(self, batch: str, row: WorkOrderRow, ok: bool,
                          errors: list[dict[str, Any]] | None) -> None:
        if not os.path.lexists(row.path):
            _check_reachable(Path(row.path).parent)
            # Crash after the rename, before the DB knew (or a person moved it): record where it is.
            where = Path(row.dest) if row.dest and os.path.lexists(row.dest) else Path(row.path)
            if where == Path(row.path):
                log.error("work_order_missing", work_order=row.name, path=row.path,
                          note="not in processing/ any more; its batch was handled anyway")
            self.db.finish_work_order(row.id, WorkOrderState.DONE if ok else WorkOrderState.FAILED, where,
                                      stage=None if ok else "upload", errors=errors)
            await self._release_claim(row.name)
            return
        if ok:
            dest = await self._finish(row, failed=False)
            metrics.WORK_ORDERS.labels(outcome="done").inc()
            log.info("work_order_done", work_order=row.name, batch=batch, dest=str(dest))
        else:
            assert errors is not None
            await self.fail_work_order(row, "upload", errors)

    async def deliver_again(self, row: WorkOrderRow) -> Path:
        """A folder recovery adopted that the ledger shows as delivered already: to done/, not sent."""
        dest = await self._finish(row, failed=False)
        metrics.WORK_ORDERS.labels(outcome="done").inc()
        log.warning("work_order_already_delivered", work_order=row.name, dest=str(dest),
                    note="the delivered-ids ledger shows it was uploaded before; not uploaded again")
        return dest


def remove_spool_file(spool: Path, path: Path) -> None:
    """Remove one of the daemon's own spool archives. Refuses anything outside the spool: the daemon
    never deletes a user's file (a ``wodrop upload`` archive, a path a damaged DB row points at)."""
    if path.parent != spool or not path.name.startswith("batch-"):
        log.error("spool_unlink_refused", path=str(path), spool=str(spool),
                  note="not a spool archive of this daemon; left alone")
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass
