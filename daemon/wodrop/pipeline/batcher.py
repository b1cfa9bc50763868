"""Batch: append valid work orders to the open archive in the spool; seal it by size, count or age.

Crash-safety: the open archive is only ever in state ``open`` in the DB. A crash leaves it ``open``;
recovery discards the partial file (our own) and packs its work orders again from ``processing/``, so
a half-written archive is never uploaded. Sealing order: close the zip (central directory, fsync) ->
DB ``seal_batch`` with size and checksums -> hand the id to the uploaders.
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from wodrop import metrics
from wodrop.archive import BatchArchiveWriter, SourceChanged
from wodrop.fsops import utc_stamp
from wodrop.logs import get_logger
from wodrop.pipeline.finish import Finisher
from wodrop.pipeline.guard import survive
from wodrop.runtime import Runtime
from wodrop.units import format_size
from wodrop.workorder.validate import WorkOrderReport

log = get_logger("wodrop.batcher")

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
SPOOL_FULL = "the spool disk is full"
# zip overhead per entry (local header + zip64 extra + central directory record), an upper bound
_ENTRY_OVERHEAD = 200


def estimated_size(report: WorkOrderReport) -> int:
    """Bytes the archive grows by for this work order (exact enough to seal before crossing max_bytes)."""
    return report.total_bytes + sum(_ENTRY_OVERHEAD + 2 * len(f"{report.id}/{f.name}".encode())
                                    for f in report.files)


@dataclass
class _Open:
    id: int
    name: str
    path: Path
    writer: BatchArchiveWriter
    oldest: float | None = None  # monotonic time the first work order went in
    items: list[tuple[int, WorkOrderReport]] = field(default_factory=list)

    @property
    def ids(self) -> set[str]:
        return {r.id for _, r in self.items}


class SpoolSlots:
    """At most ``batch.max_sealed`` sealed batches wait in the spool; sealing waits for a free slot."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._cond = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.used < self.limit)
            self.used += 1

    def take(self) -> None:
        """Recovery: count a batch already in the spool, even past the limit."""
        self.used += 1

    async def release(self) -> None:
        async with self._cond:
            self.used = max(0, self.used - 1)
            self._cond.notify_all()

    @property
    def full(self) -> bool:
        return self.used >= self.limit


class Batcher:
    def __init__(self, runtime: Runtime, finisher: Finisher, slots: SpoolSlots,
                 uploads: asyncio.Queue[int]) -> None:
        self.rt, self.db, self.finisher = runtime, runtime.db, finisher
        self.slots, self.uploads = slots, uploads
        self.open: _Open | None = None
        self._seq = 0
        #: work orders of a discarded archive (disk full, I/O error), packed again before new ones
        self._requeue: list[tuple[int, WorkOrderReport]] = []

    async def run(self, inbox: asyncio.Queue[tuple[int, WorkOrderReport]]) -> None:
        while True:
            if self._requeue:
                await self._add_safely(*self._requeue.pop(0))
                continue
            timeout = None
            if self.open is not None and self.open.oldest is not None:
                timeout = max(0.0, self.open.oldest + self.rt.cfg.batch.max_age - time.monotonic())
            try:
                wo_id, report = await asyncio.wait_for(inbox.get(), timeout)
            except TimeoutError:
                await self.seal("age")
                continue
            await self._add_safely(wo_id, report)

    async def _add_safely(self, wo_id: int, report: WorkOrderReport) -> None:
        """An unexpected error leaves the open archive in an unknown state: drop it, pack again."""
        if not await survive("batch", report.id, self.add(wo_id, report)):
            await self._lost_open_batch("unexpected error while packing")
            if not any(i == wo_id for i, _ in self._requeue):
                self._requeue.append((wo_id, report))

    async def add(self, wo_id: int, report: WorkOrderReport) -> None:
        cfg = self.rt.cfg
        if cfg.format.on_duplicate == "reject" and self.db.is_duplicate(report.id, exclude_id=wo_id):
            # Checked again here because the batcher is the one place that sees every earlier copy.
            await self.finisher.fail_work_order(self.db.work_order(wo_id), "validation", [{
                "code": "duplicate_work_order", "file": None,
                "message": f"Work order {report.id} was already sent to the platform; it was not sent again.",
            }])
            return
        est = estimated_size(report)
        if self.open is not None and self.open.items and (
            self.open.writer.size + est > cfg.batch.max_bytes or report.id in self.open.ids
        ):
            await self.seal("size" if report.id not in self.open.ids else "duplicate")
        await self._wait_for_space(est)
        if self.open is None:
            self.open = await self._new_batch()
        batch = self.open
        try:
            await asyncio.to_thread(batch.writer.add_work_order, report)
        except SourceChanged as e:
            await self.finisher.fail_work_order(self.db.work_order(wo_id), "validation", [{
                "code": "unreadable", "file": getattr(e, "file", None),
                "message": f"A file changed while it was being packed ({e}); copy the folder again.",
            }])
            return
        except OSError as e:
            if e.filename is not None and e.filename != str(batch.path) and e.errno not in _DISK_FULL:
                # A source file could not be read; the writer rolled that work order back.
                await self.finisher.fail_work_order(self.db.work_order(wo_id), "validation", [{
                    "code": "unreadable", "file": Path(e.filename).name,
                    "message": f"{Path(e.filename).name} cannot be read ({e.strerror}); check permissions.",
                }])
                return
            await self._lost_open_batch(f"cannot write the batch archive: {e.strerror or e}")
            self._requeue.append((wo_id, report))
            if e.errno in _DISK_FULL:
                self.rt.intake_paused = SPOOL_FULL
            await asyncio.sleep(5)  # don't spin on a failing disk
            return
        self.db.assign_to_batch(wo_id, batch.id, report.total_bytes, len(report.files))
        batch.items.append((wo_id, report))
        if batch.oldest is None:
            batch.oldest = time.monotonic()
        log.info("work_order_batched", work_order=report.id, batch=batch.name, bytes=report.total_bytes,
                 files=len(report.files), batch_size=batch.writer.size)
        if est > cfg.batch.max_bytes:
            await self.seal("single")
        elif len(batch.items) >= cfg.batch.max_work_orders:
            await self.seal("count")
        elif batch.writer.size >= cfg.batch.max_bytes:
            await self.seal("size")

    async def _new_batch(self) -> _Open:
        self._seq += 1
        name = f"batch-{utc_stamp()}Z-{self._seq:04d}"
        spool = self.rt.cfg.paths.spool
        path = spool / f"{name}.zip"
        writer = await asyncio.to_thread(BatchArchiveWriter, path)
        batch_id = self.db.create_batch(name, path)
        log.info("batch_opened", batch=name)
        return _Open(batch_id, name, path, writer)

    async def seal(self, reason: str) -> None:
        batch = self.open
        if batch is None or not batch.items:
            return
        await self.slots.acquire()  # back-pressure: wait while the spool holds max_sealed batches
        digest = await asyncio.to_thread(batch.writer.close)
        self.db.seal_batch(batch.id, size=digest.size, sha256=digest.sha256, md5=digest.md5,
                           crc32c=digest.crc32c, work_order_count=len(batch.items), seal_reason=reason)
        self.open = None
        metrics.BATCHES_SEALED.labels(reason=reason).inc()
        metrics.BATCH_SIZE.observe(digest.size)
        log.info("batch_sealed", batch=batch.name, reason=reason, size=digest.size,
                 size_human=format_size(digest.size), work_orders=len(batch.items), sha256=digest.sha256)
        await self.uploads.put(batch.id)

    async def _lost_open_batch(self, why: str) -> None:
        """The open archive cannot be completed (disk full, I/O error): drop it, keep its work orders."""
        batch = self.open
        if batch is None:
            return
        self.open = None
        await asyncio.to_thread(batch.writer.abort)
        self.db.unassign_batch(batch.id)
        self.db.finish_batch(batch.id, "discarded", error=why)
        self._requeue.extend(batch.items)
        log.error("batch_discarded", batch=batch.name, reason=why, work_orders=len(batch.items))

    async def _wait_for_space(self, need: int) -> None:
        """Don't start writing what cannot fit: wait (intake paused) until the spool disk has room."""
        spool = self.rt.cfg.paths.spool
        while True:
            free = shutil.disk_usage(spool).free
            if free >= need + self.rt.cfg.batch.min_free_space:
                if self.rt.intake_paused == SPOOL_FULL:
                    self.rt.intake_paused = None
                    log.info("spool_space_back", free=free)
                return
            if self.rt.intake_paused != SPOOL_FULL:
                log.error("spool_disk_full", free=format_size(free),
                          need=format_size(need + self.rt.cfg.batch.min_free_space), spool=str(spool))
            self.rt.intake_paused = SPOOL_FULL
            await asyncio.sleep(5)
