"""Start-up recovery: make the DB and the folders agree again after a crash, before intake starts.

Only the daemon's own batches (origin ``daemon``) are looked at: a ``wodrop upload`` of a user's
archive is never resumed, finished or deleted here.

Batches first, then work orders (a discarded batch hands its work orders back to ``claimed``):
- ``open`` batch: its archive is partial -> discarded (DB first, then our own spool file); its work
  orders (still in ``processing/``) are packed again.
- ``sealed``/``uploading``: queued for upload; an ``uploading`` one resumes from the server's offset.
  If its archive vanished from the spool, it is discarded and its work orders packed again.
- ``uploaded``: queued too; the workers only complete the moves to ``done/``.
- ``claimed`` work orders: validated again (idempotent), or, if a move had already renamed the
  folder, that move is recorded.
- folders in ``processing/`` the DB does not know (crash between claim and DB insert, or a lost DB):
  adopted. One the delivered-ids ledger shows as delivered (same id, files and bytes) goes to
  ``done/`` without being sent again.
- spool files no active batch refers to: removed (they are ours).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from wodrop.config import Config
from wodrop.ledger import Ledger
from wodrop.lifecycle import ACTIVE_BATCH_STATES, BatchState, Origin, WorkOrderState
from wodrop.logs import get_logger
from wodrop.pipeline.batcher import SpoolSlots, discard
from wodrop.pipeline.finish import Finisher, remove_spool_file
from wodrop.state import StateDB
from wodrop.waiting import display_name, is_utf8
from wodrop.workorder.validate import validate_work_order

log = get_logger("wodrop.recovery")


async def _recover_batches(db: StateDB, spool: Path, slots: SpoolSlots) -> list[int]:
    to_upload: list[int] = []
    for b in db.batches([BatchState.OPEN], origin=Origin.DAEMON):
        await discard(db, spool, b.id, Path(b.archive_path), "partial archive rebuilt after a restart")
        log.info("recovery_open_batch_rebuilt", batch=b.name, work_orders=b.work_order_count)
    queued = (BatchState.SEALED, BatchState.UPLOADING, BatchState.UPLOADED)
    for b in db.batches(queued, origin=Origin.DAEMON):
        if b.state != BatchState.UPLOADED and not Path(b.archive_path).exists():
            await discard(db, spool, b.id, Path(b.archive_path),
                          "archive missing from the spool; packed again")
            log.warning("recovery_archive_missing", batch=b.name, archive=b.archive_path)
            continue
        slots.take()
        to_upload.append(b.id)
        log.info("recovery_resume_upload", batch=b.name, state=b.state, offset=b.committed_offset,
                 size=b.size)
    return to_upload


def _recover_claimed(db: StateDB, cfg: Config) -> list[int]:
    to_validate: list[int] = []
    for wo in db.work_orders(states=[WorkOrderState.CLAIMED]):
        if os.path.lexists(wo.path):
            to_validate.append(wo.id)
        elif wo.dest and os.path.lexists(wo.dest):
            done = Path(wo.dest).parent == cfg.paths.done
            db.finish_work_order(wo.id, WorkOrderState.DONE if done else WorkOrderState.FAILED, Path(wo.dest),
                                 stage=None if done else "validation")
        else:
            log.error("recovery_work_order_vanished", work_order=wo.name, path=wo.path)
            db.finish_work_order(wo.id, WorkOrderState.FAILED, Path(wo.path), stage="validation", errors=[{
                "code": "unreadable", "file": None,
                "message": "The folder disappeared from processing/ while wodrop was stopped.",
            }])
    return to_validate


async def _adopt(db: StateDB, finisher: Finisher, ledger: Ledger, cfg: Config) -> tuple[list[int], int]:
    """(work orders to validate, how many folders were adopted in all)."""
    to_validate: list[int] = []
    adopted = 0
    known = {wo.path for wo in db.work_orders(states=[WorkOrderState.CLAIMED, WorkOrderState.BATCHED])}
    with os.scandir(cfg.paths.processing) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        if entry.path in known or not entry.is_dir(follow_symlinks=False):
            continue
        if not is_utf8(entry.name):
            log.error("recovery_name_not_utf8", folder=display_name(entry.name),
                      hint="rename it to a valid work-order id and move it back to the inbox")
            continue
        wo_id = db.add_work_order(entry.name, Path(entry.path))
        adopted += 1
        log.info("recovery_adopted", work_order=entry.name)
        delivered = ledger.delivered(entry.name)
        if delivered is not None:
            report = await asyncio.to_thread(validate_work_order, Path(entry.path), cfg.format,
                                             ready_marker=cfg.watch.ready_marker)
            if report.valid and (len(report.files), report.total_bytes) == (delivered.files, delivered.bytes):
                await finisher.deliver_again(db.work_order(wo_id))
                continue
        to_validate.append(wo_id)
    return to_validate, adopted


async def recover(db: StateDB, finisher: Finisher, ledger: Ledger, cfg: Config,
                  slots: SpoolSlots) -> tuple[list[int], list[int]]:
    """Returns (work-order ids to validate, batch ids to upload or finish)."""
    spool = cfg.paths.spool
    to_upload = await _recover_batches(db, spool, slots)
    to_validate = _recover_claimed(db, cfg)
    adopted_to_validate, adopted = await _adopt(db, finisher, ledger, cfg)
    to_validate += adopted_to_validate
    active = {b.archive_path for b in db.batches(ACTIVE_BATCH_STATES, origin=Origin.DAEMON)}
    orphans = [f for f in spool.iterdir() if f.is_file() and str(f) not in active]
    if db.created and (adopted or orphans):
        log.warning("state_db_new", adopted=adopted, spool_orphans=len(orphans),
                    note="the state DB is new but work was left by an earlier run: adopted; the "
                         "delivered-ids ledger keeps anything already sent from being sent again")
    for f in orphans:
        await asyncio.to_thread(remove_spool_file, spool, f)
        log.info("recovery_spool_orphan_removed", file=f.name)
    return to_validate, to_upload
