"""Finish: move work orders out of ``processing/`` to ``done/`` or ``failed/`` (+ report), crash-safely.

Order of steps for one work order (a crash between any two is repaired by :meth:`Finisher.resume_move`
at start-up, because the DB records the destination *before* the rename):

1. pick a free destination name (``WO``, else ``WO.<UTC stamp>``; for failed/ the report's name too)
2. DB: ``plan_move`` records that destination
3. failed/ only: write ``<dest>.error.json`` (temp file + fsync + rename: never half a report)
4. rename ``processing/WO`` -> destination (no-clobber; atomic on one filesystem)
5. DB: ``finish_work_order`` (state done/failed, path = destination)

A batch is finished only after all its work orders are: its DB state goes to done/failed last, then its
archive is removed from the spool (a crash before that leaves an orphan archive that recovery removes).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from wodrop import metrics
from wodrop.config import Config
from wodrop.fsops import failure_report, free_names, fsync_dir, rename_noreplace, write_json_atomic
from wodrop.logs import get_logger
from wodrop.state import StateDB, WorkOrderRow

log = get_logger("wodrop.finish")
REPORT_SUFFIX = ".error.json"


def _pick_destination(row: WorkOrderRow, target_dir: Path, failed: bool) -> Path:
    """Reuse a destination planned before a crash if it is still free, else take a free name."""
    suffixes = ("", REPORT_SUFFIX) if failed else ("",)
    if row.dest and Path(row.dest).parent == target_dir and not os.path.lexists(row.dest):
        return Path(row.dest)
    return target_dir / next(iter(free_names(target_dir, row.name, suffixes)))


def _move(src: Path, dest: Path, report: dict[str, Any] | None) -> None:
    if report is not None:
        write_json_atomic(dest.with_name(dest.name + REPORT_SUFFIX), report)
    rename_noreplace(src, dest)
    fsync_dir(dest.parent)


class Finisher:
    """Every move out of ``processing/`` goes through here (validation failures and batch outcomes)."""

    def __init__(self, cfg: Config, db: StateDB) -> None:
        self.cfg, self.db = cfg, db

    async def _finish(self, row: WorkOrderRow, *, failed: bool, stage: str | None = None,
                      errors: list[dict[str, Any]] | None = None) -> Path:
        target_dir = self.cfg.paths.failed if failed else self.cfg.paths.done
        src = Path(row.path)
        dest = await asyncio.to_thread(_pick_destination, row, target_dir, failed)
        self.db.plan_move(row.id, dest)
        report = failure_report(row.name, stage or "validation", errors or []) if failed else None
        try:
            await asyncio.to_thread(_move, src, dest, report)
        except FileExistsError:
            # Someone created that name between our check and the rename: plan another one.
            return await self._finish(self.db.work_order(row.id), failed=failed, stage=stage, errors=errors)
        self.db.finish_work_order(row.id, "failed" if failed else "done", dest, stage=stage, errors=errors)
        return dest

    async def fail_work_order(self, row: WorkOrderRow, stage: str, errors: list[dict[str, Any]]) -> Path:
        dest = await self._finish(row, failed=True, stage=stage, errors=errors)
        metrics.WORK_ORDERS.labels(outcome="invalid" if stage == "validation" else "rejected").inc()
        log.warning("work_order_failed", work_order=row.name, stage=stage, dest=str(dest),
                    codes=sorted({e["code"] for e in errors}), errors=[e["message"] for e in errors][:5])
        return dest

    async def finish_batch(self, batch_id: int, *, ok: bool, reason: str | None = None) -> None:
        """Move the batch's work orders to done/ (uploaded) or failed/ (rejected), then close it."""
        batch = self.db.batch(batch_id)
        errors = [{"code": "upload_rejected", "file": None,
                   "message": f"The platform refused batch {batch.name}: {reason}"}] if not ok else None
        for row in self.db.work_orders(batch_id=batch_id, states=["batched"]):
            if not os.path.lexists(row.path):
                # Crash after the rename, before the DB knew (or a person moved it): record where it is.
                where = Path(row.dest) if row.dest and os.path.lexists(row.dest) else Path(row.path)
                if where == Path(row.path):
                    log.error("work_order_missing", work_order=row.name, path=row.path,
                              note="not in processing/ any more; its batch was handled anyway")
                self.db.finish_work_order(row.id, "done" if ok else "failed", where,
                                          stage=None if ok else "upload", errors=errors)
                continue
            if ok:
                dest = await self._finish(row, failed=False)
                metrics.WORK_ORDERS.labels(outcome="done").inc()
                log.info("work_order_done", work_order=row.name, batch=batch.name, dest=str(dest))
            else:
                assert errors is not None
                await self.fail_work_order(row, "upload", errors)
        self.db.finish_batch(batch_id, "done" if ok else "failed", error=reason)
        await asyncio.to_thread(_remove_quietly, Path(batch.archive_path))
        log.info("batch_finished", batch=batch.name, outcome="done" if ok else "failed",
                 work_orders=batch.work_order_count, size=batch.size)


def _remove_quietly(path: Path) -> None:
    """Remove one of our own spool archives (never a user's file)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
