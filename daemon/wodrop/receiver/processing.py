"""The platform's processing after an upload, emulated (``--processing-time``).

A batch whose upload completed reads ``pending`` for the first half of the processing time, then
``processing``, then its verdict: ``done``, or ``failed`` when the whole batch is unusable (not a zip, no
work order in it). A single batch's answer then carries ``errors`` from its errors file (one entry per
problem: ``{"work_order", "code", "file", "message"}``, ``work_order`` null for a problem of the whole
batch); the list of batches does not (it would read every errors file). Times are wall-clock seconds
from the upload's completion, kept in the session, so a restarted receiver goes on where it was.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from wodrop.receiver.store import Session, Store


def stage(uploaded_at: float | None, now: float, processing_time: float) -> str | None:
    """``pending``/``processing`` while the emulated processing runs; None once it is over (an upload
    from before the receiver recorded completion times counts as processed)."""
    if uploaded_at is None:
        return None
    elapsed = now - uploaded_at
    if elapsed < processing_time / 2:
        return "pending"
    return "processing" if elapsed < processing_time else None


def verdict(report: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(final status, errors) from a batch's errors file."""
    whole = [{"work_order": None, **e} for e in report.get("errors") or []]
    per_work_order = [{"work_order": wo.get("id"), **e}
                      for wo in report.get("work_orders") or [] for e in wo.get("errors") or []]
    return ("failed" if whole else "done"), whole + per_work_order


async def progress(store: Store, s: Session, processing_time: float, *, errors: bool) -> dict[str, Any]:
    """``{"status"[, "errors"]}`` of a batch whose upload is complete (``errors``: read its errors file)."""
    now_stage = stage(s.uploaded_at, time.time(), processing_time)
    if now_stage is not None:
        return {"status": now_stage, **({"errors": []} if errors else {})}
    if not errors and s.verdict is not None:
        return {"status": s.verdict}
    report = await asyncio.to_thread(store.read_report, s.batch_id)
    if report is None:
        return {"status": "failed", "errors": [{"work_order": None, "code": "no_report", "file": None,
                                                "message": "the batch's errors file is missing"}]}
    status, found = verdict(report)
    return {"status": status, **({"errors": found} if errors else {})}
