"""Start-up recovery: make the DB and the folders agree again after a crash, before intake starts.

Batches first, then work orders (a discarded batch hands its work orders back to ``claimed``):
- ``open`` batch: its archive is partial -> delete it (our own spool file), mark ``discarded``, and
  its work orders (still in ``processing/``) are packed again.
- ``sealed``/``uploading``: queued for upload; an ``uploading`` one resumes from the server's offset.
  If its archive vanished from the spool, it is discarded and its work orders packed again.
- ``uploaded``: the server has every byte; only the moves to ``done/`` are completed.
- ``claimed`` work orders: validated again (idempotent), or, if a move to ``failed/`` had already
  renamed the folder, that move is recorded.
- folders in ``processing/`` the DB does not know (crash between claim and DB insert): adopted.
- spool files no active batch refers to: removed (they are ours).
"""

from __future__ import annotations

import os
from pathlib import Path

from wodrop.logs import get_logger
from wodrop.pipeline.batcher import SpoolSlots
from wodrop.pipeline.finish import Finisher
from wodrop.state import ACTIVE_BATCH_STATES, StateDB

log = get_logger("wodrop.recovery")


def _discard(db: StateDB, batch_id: int, archive: Path, why: str) -> None:
    try:
        archive.unlink()
    except FileNotFoundError:
        pass
    db.unassign_batch(batch_id)
    db.finish_batch(batch_id, "discarded", error=why)


async def recover(db: StateDB, finisher: Finisher, processing: Path, spool: Path,
                  slots: SpoolSlots) -> tuple[list[int], list[int]]:
    """Returns (work-order ids to validate, batch ids to upload)."""
    to_upload: list[int] = []
    for b in db.batches(["open"]):
        _discard(db, b.id, Path(b.archive_path), "partial archive rebuilt after a restart")
        log.info("recovery_open_batch_rebuilt", batch=b.name, work_orders=b.work_order_count)
    for b in db.batches(["sealed", "uploading"]):
        if not Path(b.archive_path).exists():
            _discard(db, b.id, Path(b.archive_path), "archive missing from the spool; packed again")
            log.warning("recovery_archive_missing", batch=b.name, archive=b.archive_path)
            continue
        slots.take()
        to_upload.append(b.id)
        log.info("recovery_resume_upload", batch=b.name, state=b.state, offset=b.committed_offset,
                 size=b.size)
    for b in db.batches(["uploaded"]):
        log.info("recovery_finish_uploaded", batch=b.name)
        await finisher.finish_batch(b.id, ok=True)

    to_validate: list[int] = []
    for wo in db.work_orders(states=["claimed"]):
        if os.path.lexists(wo.path):
            to_validate.append(wo.id)
        elif wo.dest and os.path.lexists(wo.dest):
            db.finish_work_order(wo.id, "failed", Path(wo.dest), stage="validation")
        else:
            log.error("recovery_work_order_vanished", work_order=wo.name, path=wo.path)
            db.finish_work_order(wo.id, "failed", Path(wo.path), stage="validation", errors=[{
                "code": "unreadable", "file": None,
                "message": "The folder disappeared from processing/ while wodrop was stopped.",
            }])
    known = {wo.path for wo in db.work_orders(states=["claimed", "batched"])}
    for entry in sorted(os.scandir(processing), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".") and entry.path not in known:
            to_validate.append(db.add_work_order(entry.name, Path(entry.path)))
            log.info("recovery_adopted", work_order=entry.name)

    active = {b.archive_path for b in db.batches(ACTIVE_BATCH_STATES)}
    for f in spool.iterdir():
        if f.is_file() and str(f) not in active:
            f.unlink()
            log.info("recovery_spool_orphan_removed", file=f.name)
    return to_validate, to_upload
