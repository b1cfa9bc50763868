"""Validate claimed work orders: invalid ones go to ``failed/`` with a report, valid ones to the batcher.

One work order's error (its folder vanished with the share, ``failed/`` not writable, a name too odd
for the filesystem) parks that work order with a backoff; the ones behind it go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from wodrop.ledger import Ledger
from wodrop.logs import get_logger
from wodrop.pipeline.finish import Finisher
from wodrop.pipeline.guard import Isolation, next_item
from wodrop.runtime import Runtime
from wodrop.workorder.validate import WorkOrderReport, validate_work_order

log = get_logger("wodrop.validate")


def _answer(value: bool) -> Callable[[str], bool]:
    return lambda _name: value


async def is_sent(runtime: Runtime, ledger: Ledger, name: str, exclude_id: int) -> bool:
    """Was this id sent already, by this instance (state DB) or any instance on the share (ledger)?"""
    if runtime.db.is_duplicate(name, exclude_id=exclude_id):
        return True
    await asyncio.to_thread(ledger.refresh)
    return ledger.delivered(name) is not None


async def validator(runtime: Runtime, finisher: Finisher, ledger: Ledger, inbox: asyncio.Queue[int],
                    out: asyncio.Queue[tuple[int, WorkOrderReport]]) -> None:
    guard: Isolation[int] = Isolation("validate", runtime.stuck,
                                      lambda wo_id: f"work order {_name(runtime, wo_id)}")
    while True:
        wo_id = await next_item(inbox, guard.parked)
        if wo_id is not None:
            await guard.run(wo_id, _validate_one(runtime, finisher, ledger, wo_id, out))


def _name(runtime: Runtime, wo_id: int) -> str:
    try:
        return runtime.db.work_order(wo_id).name
    except Exception:  # the DB itself may be what failed
        return f"#{wo_id}"


async def _validate_one(runtime: Runtime, finisher: Finisher, ledger: Ledger, wo_id: int,
                        out: asyncio.Queue[tuple[int, WorkOrderReport]]) -> None:
    db = runtime.db
    row = db.work_order(wo_id)
    cfg = runtime.cfg
    # The DB lives on this thread: decide the duplicate question here, hand the answer to the thread.
    reject = cfg.format.on_duplicate == "reject"
    dup = reject and await is_sent(runtime, ledger, row.name, wo_id)
    report = await asyncio.to_thread(
        validate_work_order, Path(row.path), cfg.format, ready_marker=cfg.watch.ready_marker,
        is_duplicate=_answer(dup) if reject else None,
    )
    if report.valid:
        log.info("work_order_valid", work_order=row.name, files=len(report.files),
                 bytes=report.total_bytes)
        await out.put((wo_id, report))
    else:
        await finisher.fail_work_order(row, "validation", [e.to_dict() for e in report.errors])
