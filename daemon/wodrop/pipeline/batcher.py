"""Batch: append valid work orders to the open archive in the spool; seal it by size, count or age, or
as soon as it has been quiet for ``batch.linger`` while an uploader has nothing to send.

Crash-safety: the open archive is only ever in state ``open`` in the DB. A crash leaves it ``open``;
recovery discards the partial file (our own) and packs its work orders again from ``processing/``, so
a half-written archive is never uploaded. Adding: write into the archive (``batch.appended``) -> DB
``assign_to_batch`` (``batch.assigned``). Sealing: close the zip (central directory, fsync;
``seal.closed``) -> DB ``seal_batch`` with size and checksums (``seal.recorded``) -> queue for upload.

A full spool disk never deadlocks: the open archive is sealed (reason ``space``) so it can be uploaded
and its space freed, and new work waits (intake paused) until there is room. One work order that keeps
failing is parked with a backoff; the others go on.
"""

from __future__ import annotations

import asyncio
import errno
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from wodrop import metrics
from wodrop.archive import BatchArchiveWriter, SourceChanged
from wodrop.failpoints import failpoint
from wodrop.fsops import utc_stamp
from wodrop.ledger import Ledger
from wodrop.logs import get_logger
from wodrop.pipeline.finish import Finisher, remove_spool_file
from wodrop.pipeline.guard import Isolation, describe
from wodrop.pipeline.validation import is_sent
from wodrop.runtime import Runtime
from wodrop.state import StateDB
from wodrop.units import format_size
from wodrop.workorder.validate import WorkOrderReport

log = get_logger("wodrop.batcher")

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
SPOOL_FULL = "the spool disk is full"
#: how often a quiet open archive looks again for an idle uploader (batch.linger)
_IDLE_RECHECK = 0.25
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
    last_added: float = 0.0  # monotonic time the last one did
    items: list[tuple[int, WorkOrderReport]] = field(default_factory=list)

    @property
    def ids(self) -> set[str]:
        return {r.id for _, r in self.items}


class TooLargeForSpool(Exception):
    """A work order that cannot fit in the spool's disk even when the spool is empty."""

    def __init__(self, need: int, total: int) -> None:
        super().__init__(f"needs {need} bytes, the spool's disk has {total}")
        self.need, self.total = need, total


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
                 uploads: asyncio.Queue[int], ledger: Ledger) -> None:
        self.rt, self.db, self.finisher = runtime, runtime.db, finisher
        self.slots, self.uploads, self.ledger = slots, uploads, ledger
        self.open: _Open | None = None
        self._seq = 0
        #: work orders of a discarded archive (disk full, I/O error), packed again before new ones
        self._requeue: list[tuple[int, WorkOrderReport]] = []
        self._guard: Isolation[tuple[int, WorkOrderReport]] = Isolation(
            "batch", runtime.stuck, lambda item: f"work order {item[1].id}")

    async def run(self, inbox: asyncio.Queue[tuple[int, WorkOrderReport]]) -> None:
        while True:
            now = time.monotonic()
            item = self._requeue.pop(0) if self._requeue else self._guard.parked.pop_due(now)
            if item is None:
                waits = [self._guard.parked.next_in(now), self._seal_in(now)]
                timeout = min((w for w in waits if w is not None), default=None)
                try:
                    item = await asyncio.wait_for(inbox.get(), timeout)
                except TimeoutError:
                    if (reason := self._seal_due(time.monotonic())) is not None:
                        await self._seal_or_drop(reason)
                    continue
            await self._add_safely(*item)

    def _uploader_idle(self) -> bool:
        """An upload slot waits for work: fewer archives sealed or uploading than upload.concurrency."""
        return self.slots.used < self.rt.cfg.upload.concurrency and self.rt.auth_error is None

    def _seal_due(self, now: float) -> str | None:
        """Why the open archive is to be sealed now without a new work order: its oldest work order
        reached ``batch.max_age``, or (``idle``) nothing was added for ``batch.linger``, no claimed work
        order is on its way to it, and an uploader has nothing to send: waiting longer would only leave
        the link unused."""
        o, cfg = self.open, self.rt.cfg.batch
        if o is None or o.oldest is None:
            return None
        if now >= o.oldest + cfg.max_age:
            return "age"
        if cfg.linger and now >= o.last_added + cfg.linger and self._uploader_idle() \
                and not self.db.any_claimed():
            return "idle"
        return None

    def _seal_in(self, now: float) -> float | None:
        """Seconds until :meth:`_seal_due` may say yes (once quiet, it looks again every
        ``_IDLE_RECHECK``: an upload slot may free up)."""
        o, cfg = self.open, self.rt.cfg.batch
        if o is None or o.oldest is None:
            return None
        due = o.oldest + cfg.max_age - now
        if cfg.linger:
            quiet = o.last_added + cfg.linger - now
            due = min(due, quiet if quiet > 0 else _IDLE_RECHECK)
        return max(0.0, due)

    async def _add_safely(self, wo_id: int, report: WorkOrderReport) -> None:
        """An unexpected error leaves the open archive in an unknown state: drop it (its other work
        orders are packed again at once) and park this one with a backoff."""
        if not await self._guard.run((wo_id, report), self.add(wo_id, report)):
            await self._lost_open_batch("unexpected error while packing", keep=wo_id)

    async def _claimed_elsewhere(self, wo_id: int, name: str) -> bool:
        """Claim the id before it goes into an archive; a copy another instance is sending right now
        fails as a duplicate (an OSError parks the work order: nothing is packed without a claim)."""
        held = await asyncio.to_thread(self.finisher.claims.take, name)
        if held is None:
            return False
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(held.at))
        await self.finisher.fail_work_order(self.db.work_order(wo_id), "validation", [{
            "code": "duplicate_work_order", "file": None,
            "message": f"Work order {name} is being sent to the platform by another wodrop instance "
                       f"({held.instance}, since {since}); it was not sent again. If that instance is gone "
                       f"for good, delete {held.path} and use wodrop retry.",
        }])
        return True

    async def add(self, wo_id: int, report: WorkOrderReport) -> None:
        cfg = self.rt.cfg
        if cfg.format.on_duplicate == "reject" and await is_sent(self.rt, self.ledger, report.id, wo_id):
            # Checked again here because the batcher is the one place that sees every earlier copy.
            await self.finisher.fail_work_order(self.db.work_order(wo_id), "validation", [{
                "code": "duplicate_work_order", "file": None,
                "message": f"Work order {report.id} was already sent to the platform; it was not sent again.",
            }])
            return
        if cfg.format.on_duplicate == "reject" and await self._claimed_elsewhere(wo_id, report.id):
            return
        est = estimated_size(report)
        if self.open is not None and self.open.items and (
            self.open.writer.size + est > cfg.batch.max_bytes or report.id in self.open.ids
        ):
            await self.seal("size" if report.id not in self.open.ids else "duplicate")
        try:
            await self._wait_for_space(est)
        except TooLargeForSpool as e:
            # Nothing else holds spool space and the whole disk is too small: waiting would block every
            # work order behind this one forever.
            await self.finisher.fail_work_order(self.db.work_order(wo_id), "validation", [{
                "code": "too_large_for_spool", "file": None,
                "message": f"Work order {report.id} needs {format_size(e.need)} in the spool, but the "
                           f"spool's disk holds only {format_size(e.total)} in all (paths.state). Give the "
                           "spool a larger disk, or split the work order, then use wodrop retry.",
            }])
            if self.rt.intake_paused == SPOOL_FULL:
                self.rt.intake_paused = None
            return
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
            if e.errno in _DISK_FULL:
                # The writer rolled this work order back; what is already in the archive is whole:
                # seal it so it can be uploaded and free its space, and try this one again later.
                log.error("spool_disk_full", batch=batch.name, work_order=report.id,
                          action="sealing the open batch; this work order waits for space")
                self.rt.intake_paused = SPOOL_FULL
                self._requeue.append((wo_id, report))
                await self._seal_or_drop("space")
                await asyncio.sleep(1)  # don't spin on a full disk
                return
            raise
        failpoint("batch.appended")
        self.db.assign_to_batch(wo_id, batch.id, report.total_bytes, len(report.files))
        failpoint("batch.assigned")
        batch.items.append((wo_id, report))
        batch.last_added = time.monotonic()
        if batch.oldest is None:
            batch.oldest = batch.last_added
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
        # unique across restarts too (a crash and a restart within one second must not reuse a name)
        name = f"batch-{utc_stamp()}Z-{self._seq:04d}-{secrets.token_hex(3)}"
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
        try:
            digest = await asyncio.to_thread(batch.writer.close)
        except BaseException:
            await self.slots.release()
            raise
        failpoint("seal.closed")
        self.db.seal_batch(batch.id, size=digest.size, sha256=digest.sha256, md5=digest.md5,
                           crc32c=digest.crc32c, work_order_count=len(batch.items), seal_reason=reason)
        failpoint("seal.recorded")
        self.open = None
        metrics.BATCHES_SEALED.labels(reason=reason).inc()
        metrics.BATCH_SIZE.observe(digest.size)
        log.info("batch_sealed", batch=batch.name, reason=reason, size=digest.size,
                 size_human=format_size(digest.size), work_orders=len(batch.items), sha256=digest.sha256)
        await self.uploads.put(batch.id)

    async def _seal_or_drop(self, reason: str) -> None:
        """Seal the open archive; if even that fails (no room for the central directory, a DB error),
        drop it and pack its work orders again."""
        try:
            await self.seal(reason)
        except Exception as e:
            log.exception("batch_seal_failed", batch=self.open.name if self.open else None, reason=reason)
            await self._lost_open_batch(f"cannot finish the batch archive: {describe(e)}")

    async def _lost_open_batch(self, why: str, keep: int | None = None) -> None:
        """The open archive cannot be completed: drop it, pack its work orders again (but ``keep``,
        which its own backoff brings back)."""
        batch = self.open
        if batch is None:
            return
        self.open = None
        await asyncio.to_thread(batch.writer.abort)
        await discard(self.db, self.rt.cfg.paths.spool, batch.id, batch.path, why)
        self._requeue.extend(item for item in batch.items if item[0] != keep)
        log.error("batch_discarded", batch=batch.name, reason=why, work_orders=len(batch.items))

    async def _wait_for_space(self, need: int) -> None:
        """Don't start writing what cannot fit. When the spool is short of room, seal the open archive
        first (it can then be uploaded and free its space: waiting while holding it would deadlock),
        then wait, intake paused, until there is room."""
        spool = self.rt.cfg.paths.spool
        while True:
            free = shutil.disk_usage(spool).free
            if free >= need + self.rt.cfg.batch.min_free_space:
                if self.rt.intake_paused == SPOOL_FULL:
                    self.rt.intake_paused = None
                    log.info("spool_space_back", free=free)
                return
            if self.open is not None and self.open.items:
                log.warning("spool_short_of_space", free=format_size(free), batch=self.open.name,
                            action="sealing the open batch so it can be uploaded")
                await self._seal_or_drop("space")
                continue
            total = shutil.disk_usage(spool).total
            if self.slots.used == 0 and need > total:  # could not fit even on an empty disk
                raise TooLargeForSpool(need, total)
            if self.rt.intake_paused != SPOOL_FULL:
                log.error("spool_disk_full", free=format_size(free),
                          need=format_size(need + self.rt.cfg.batch.min_free_space), spool=str(spool))
            self.rt.intake_paused = SPOOL_FULL
            await asyncio.sleep(5)


async def discard(db: StateDB, spool: Path, batch_id: int, archive: Path, why: str) -> list[int]:
    """The one way to drop a batch: DB first (batch discarded and its work orders back to claimed, in
    one transaction), then the archive (``discard.recorded``: a crash in between leaves an orphan that
    recovery removes). Returns the work orders to pack again."""
    ids = db.discard_batch(batch_id, why)
    failpoint("discard.recorded")
    await asyncio.to_thread(remove_spool_file, spool, archive)
    return ids
