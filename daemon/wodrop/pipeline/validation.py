"""Validate claimed work orders: invalid ones go to ``failed/`` with a report, valid ones to the batcher."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from wodrop.logs import get_logger
from wodrop.pipeline.finish import Finisher
from wodrop.pipeline.guard import survive
from wodrop.runtime import Runtime
from wodrop.workorder.validate import WorkOrderReport, validate_work_order

log = get_logger("wodrop.validate")


def _answer(value: bool) -> Callable[[str], bool]:
    return lambda _name: value


async def validator(runtime: Runtime, finisher: Finisher, inbox: asyncio.Queue[int],
                    out: asyncio.Queue[tuple[int, WorkOrderReport]]) -> None:
    retry: list[int] = []
    while True:
        wo_id = retry.pop(0) if retry else await inbox.get()
        if not await survive("validate", str(wo_id), _validate_one(runtime, finisher, wo_id, out)):
            retry.append(wo_id)


async def _validate_one(runtime: Runtime, finisher: Finisher, wo_id: int,
                        out: asyncio.Queue[tuple[int, WorkOrderReport]]) -> None:
    db = runtime.db
    row = db.work_order(wo_id)
    cfg = runtime.cfg
    # The DB lives on this thread: decide the duplicate question here, hand the answer to the thread.
    dup = db.is_duplicate(row.name, exclude_id=wo_id)
    report = await asyncio.to_thread(
        validate_work_order, Path(row.path), cfg.format, ready_marker=cfg.watch.ready_marker,
        is_duplicate=_answer(dup) if cfg.format.on_duplicate == "reject" else None,
    )
    if report.valid:
        log.info("work_order_valid", work_order=row.name, files=len(report.files),
                 bytes=report.total_bytes)
        await out.put((wo_id, report))
    else:
        await finisher.fail_work_order(row, "validation", [e.to_dict() for e in report.errors])
