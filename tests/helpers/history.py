"""Past activity in a real state DB, for the status page's "last 24 hours" chart: rows made through
StateDB (the real transitions), then their times moved back with a second connection, as another
process would see them (the DB API stamps the present)."""

from __future__ import annotations

import sqlite3

from wodrop.lifecycle import BatchState, WorkOrderState

from helpers.statusdb import StatusFixture


def backdate(fx: StatusFixture, table: str, row_id: int, **stamps: float) -> None:
    with sqlite3.connect(fx.cfg.paths.db) as raw:
        cols = ", ".join(f"{k} = ?" for k in stamps)
        raw.execute(f"UPDATE {table} SET {cols} WHERE id = ?", (*stamps.values(), row_id))


def uploaded_batch(fx: StatusFixture, name: str, size: int, orders: int) -> tuple[int, list[int]]:
    """A batch of ``orders`` work orders that the server confirmed (state ``uploaded``, folders not
    moved yet): returns its id and its work orders' ids."""
    db = fx.db
    batch = db.create_batch(name, fx.cfg.paths.spool / f"{name}.zip")
    wos = []
    for i in range(orders):
        wo = db.add_work_order(f"{name}-WO_{i}", fx.cfg.paths.processing / f"{name}-WO_{i}")
        db.assign_to_batch(wo, batch, size // orders, 1)
        wos.append(wo)
    db.seal_batch(batch, size=size, sha256="2" * 64, md5=None, crc32c=None, work_order_count=orders,
                  seal_reason="age")
    db.set_session(batch, None, f"https://storage.example.test/upload?upload_id=history-{name}-0001")
    db.mark_uploaded(batch, size)
    return batch, wos


def delivered_batch(fx: StatusFixture, name: str, size: int, orders: int, at: float) -> int:
    """A batch uploaded at unix time ``at``, its work orders moved to done/ a few seconds later."""
    batch, wos = uploaded_batch(fx, name, size, orders)
    for wo in wos:
        fx.db.finish_work_order(wo, WorkOrderState.DONE, fx.cfg.paths.done / str(wo))
        backdate(fx, "work_orders", wo, finished_at=at + 2)
    fx.db.finish_batch(batch, BatchState.DONE)
    backdate(fx, "batches", batch, uploaded_at=at, finished_at=at + 3)
    return batch


def failed_work_order(fx: StatusFixture, name: str, at: float) -> int:
    """A work order that failed validation at unix time ``at`` (now in failed/)."""
    wo = fx.db.add_work_order(name, fx.cfg.paths.processing / name)
    fx.db.finish_work_order(wo, WorkOrderState.FAILED, fx.cfg.paths.failed / name, stage="validation",
                            errors=[{"code": "no_images", "file": None, "message": f"{name} has no images"}])
    backdate(fx, "work_orders", wo, finished_at=at)
    return wo
