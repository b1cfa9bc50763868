"""Upload: ``upload.concurrency`` workers take sealed batches and push them with resumable uploads.

Order per batch: the shared session routine (:mod:`wodrop.upload.session`: create the remote batch ->
DB ``set_session`` -> PUT spans, DB ``set_offset`` after each) -> the server holds every byte ->
append the batch's ids to the delivered-ids ledger (``upload.ledgered``) -> DB ``mark_uploaded``
(``upload.marked``) -> finish (moves). On restart a batch in ``uploading`` resumes from the server's
offset (status query; a complete one answers 200 at once); one in ``uploaded`` only has its moves
completed, so nothing is uploaded twice. A batch that fails unexpectedly is parked with a backoff and
the workers go on with the others.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from wodrop import metrics
from wodrop.digest import Expected
from wodrop.failpoints import failpoint
from wodrop.ledger import Delivery, Ledger
from wodrop.lifecycle import BatchState, WorkOrderState
from wodrop.logs import get_logger
from wodrop.pipeline.batcher import SpoolSlots, discard
from wodrop.pipeline.finish import Finisher
from wodrop.pipeline.followup import first_poll_at
from wodrop.pipeline.guard import Isolation, next_item
from wodrop.runtime import Runtime, UploadProgress
from wodrop.state import BatchRow
from wodrop.units import format_duration, format_size
from wodrop.upload.api import check_key, create_batch
from wodrop.upload.bandwidth import Bandwidth, Throttle
from wodrop.upload.protocol import (
    ArchiveChanged,
    AuthRefused,
    RetryPolicy,
    SessionExpired,
    UploadError,
    UploadGaveUp,
    UploadRejected,
)
from wodrop.upload.session import SessionHooks, upload_session
from wodrop.upload.transport import OnRetry, retry_policy

log = get_logger("wodrop.upload")
AUTH_RETRY_SECONDS = 60.0


class Uploads:
    """The upload stage: workers, shared bandwidth, and the pause while the API key is refused."""

    def __init__(self, runtime: Runtime, finisher: Finisher, slots: SpoolSlots, http: aiohttp.ClientSession,
                 api_url: str, api_key: str, repack: asyncio.Queue[int], ledger: Ledger) -> None:
        self.rt, self.db, self.finisher, self.slots = runtime, runtime.db, finisher, slots
        self.ledger = ledger
        self._guard: Isolation[int] = Isolation("upload", runtime.stuck, lambda b: f"batch {self._name(b)}")
        self.http, self.api_url, self.api_key = http, api_url, api_key
        #: the validation queue: work orders of an archive that went bad in the spool start over there
        self.repack = repack
        # Always a limiter (no limit by default), so that a timetable or a SIGHUP can start limiting an
        # upload already running; the throttle keeps its rate on upload.max_bandwidth's timetable.
        self.throttle = runtime.bandwidth = Throttle(runtime.cfg.upload.bandwidth)
        self.limiter: Bandwidth = self.throttle.limiter
        self._auth_ok = asyncio.Event()
        self._auth_ok.set()

    def _policy(self) -> RetryPolicy:
        return retry_policy(self.rt.cfg.upload, forever=True)

    def _on_retry(self, row: BatchRow) -> OnRetry:
        def on_retry(cause: str, delay: float, message: str) -> None:
            metrics.RETRIES.labels(cause=cause).inc()
            self.db.record_error(row.id, message)
            log.warning("upload_retry", batch=row.name, cause=cause, retry_in=round(delay, 2), error=message)
        return on_retry

    async def check_key(self) -> None:
        """At start-up: tell readiness whether the platform accepts the key, before any batch is due.
        Only a 401/403 is a refusal; a platform without a batch list (404/405: the vendor's own client
        never lists) or another answer leaves it to the first upload. Glitches (a 5xx, a proxy's page, a
        redirect) are retried in the background, said once; nothing waits for the check."""
        told = False

        def not_yet(_cause: str, _delay: float, message: str) -> None:
            nonlocal told
            if not told:
                told = True
                log.info("api_key_check_not_yet", reason=message,
                         note="tried again in the background; uploads do not wait for it")

        while True:
            try:
                checked = await check_key(self.http, self.api_url, self.api_key, retry=self._policy(),
                                          on_retry=not_yet)
            except AuthRefused as e:
                await self.auth_refused(e)
                continue
            except UploadError as e:
                log.info("api_key_check_skipped", reason=e.reason)
                return
            if checked:
                self.auth_accepted()
            else:
                log.info("api_key_check_unavailable", reason="the platform API does not list batches "
                         "(HTTP 404/405)", note="the first upload tells whether the key is accepted")
            return

    def _name(self, batch_id: int) -> str:
        try:
            return self.db.batch(batch_id).name
        except Exception:  # the DB itself may be what failed
            return f"#{batch_id}"

    async def worker(self, queue: asyncio.Queue[int]) -> None:
        while True:
            batch_id = await next_item(queue, self._guard.parked)
            if batch_id is not None:
                await self._guard.run(batch_id, self.upload_batch(batch_id))

    async def auth_ready(self) -> None:
        """Wait while the key is refused (uploads and the follow-up pause together)."""
        await self._auth_ok.wait()

    async def auth_refused(self, err: AuthRefused) -> None:
        """Don't fail work orders for a bad key: report it loudly, pause every worker, retry slowly."""
        if self._auth_ok.is_set():
            log.error("api_key_refused", error=str(err), retry_in=AUTH_RETRY_SECONDS,
                      hint="check CUSTOMER_API_KEY / api.api_key_file; uploads are paused, nothing is lost")
        self._auth_ok.clear()
        self.rt.auth_error = str(err)  # the whole reason, said once: "the platform refused the API key ..."
        metrics.API_KEY_OK.set(0)
        metrics.RETRIES.labels(cause="auth").inc()
        await asyncio.sleep(AUTH_RETRY_SECONDS)
        self._auth_ok.set()  # let one attempt through; it clears again if still refused

    def auth_accepted(self) -> None:
        if self.rt.auth_error is not None:
            log.info("api_key_accepted")
        self.rt.auth_error, self.rt.api_key_accepted = None, True
        metrics.API_KEY_OK.set(1)

    async def _open_session(self, row: BatchRow) -> tuple[str | None, str]:
        await self.auth_ready()
        remote_id, url = await create_batch(self.http, self.api_url, self.api_key, row.name,
                                            retry=self._policy(), on_retry=self._on_retry(row))
        self.auth_accepted()
        log.info("upload_session_created", batch=row.name, remote_batch_id=remote_id)
        return remote_id, url

    async def _archive_lost(self, row: BatchRow, why: str) -> None:
        """The sealed archive vanished or changed in the spool (our own file, but a disk or a person
        can still damage it): never upload it; pack its work orders again from processing/."""
        log.error("batch_archive_lost", batch=row.name, error=why, action="packing its work orders again")
        for wo_id in await discard(self.db, self.rt.cfg.paths.spool, row.id, Path(row.archive_path), why):
            await self.repack.put(wo_id)

    def _hooks(self, row: BatchRow, progress: UploadProgress) -> SessionHooks:
        confirmed = [row.committed_offset]  # what the server confirmed (progress.sent runs ahead of it)

        def on_expired(e: SessionExpired) -> None:
            metrics.RETRIES.labels(cause="session_expired").inc()
            log.warning("upload_session_expired", batch=row.name, error=str(e),
                        action="creating a new session, starting from byte 0")
            confirmed[0] = 0
            progress.restart()

        def on_offset(offset: int) -> None:
            metrics.BYTES_UPLOADED.inc(max(0, offset - confirmed[0]))
            confirmed[0] = offset
            progress.update(offset)

        def on_start(remote: str | None, known: int | None) -> None:
            log.info("upload_started", batch=row.name, size=row.size, offset=known or 0,
                     resumed=bool(known), remote_batch_id=remote)

        return SessionHooks(open=lambda: self._open_session(self.db.batch(row.id)), on_expired=on_expired,
                            on_offset=on_offset, on_retry=self._on_retry(row), on_start=on_start,
                            on_progress=progress.update)

    async def _record_delivery(self, row: BatchRow) -> None:
        """The server holds the batch: tell every instance on the share (the ledger), before the DB."""
        now = time.time()
        await asyncio.to_thread(self.ledger.record, [
            Delivery(wo.name, row.name, row.remote_batch_id, now, self.ledger.path.stem, wo.files, wo.bytes)
            for wo in self.db.work_orders(batch_id=row.id, states=[WorkOrderState.BATCHED])
        ])
        failpoint("upload.ledgered")

    async def upload_batch(self, batch_id: int) -> None:
        row = self.db.batch(batch_id)
        assert row.size is not None
        if row.state == BatchState.UPLOADED:  # uploaded before a crash or a failed move: only finish
            await self.finisher.finish_batch(batch_id, ok=True)
            await self.slots.release()
            return
        if row.state not in (BatchState.SEALED, BatchState.UPLOADING):
            log.error("upload_skipped", batch=row.name, state=row.state, note="not waiting for an upload")
            await self.slots.release()
            return
        progress = UploadProgress(batch_id, row.name, row.size, row.committed_offset)
        self.rt.uploads[batch_id] = progress
        started = time.monotonic()
        try:
            while True:
                row = self.db.batch(batch_id)
                assert row.size is not None
                try:
                    await upload_session(
                        self.db, batch_id, self.http, Path(row.archive_path), self._hooks(row, progress),
                        chunk_size=self.rt.cfg.upload.chunk_size, retry=self._policy(), limiter=self.limiter,
                        expected=Expected(row.size, row.md5, row.crc32c),
                    )
                except AuthRefused as e:
                    await self.auth_refused(e)
                    continue
                except (ArchiveChanged, FileNotFoundError) as e:
                    await self._archive_lost(row, str(e))
                    break
                except UploadRejected as e:
                    remote = self.db.batch(batch_id).remote_batch_id  # the session may be newer than row
                    log.error("batch_rejected", batch=row.name, reason=e.reason, remote_batch_id=remote)
                    self.db.record_error(batch_id, e.reason)
                    self.rt.notifier.emit("batch_rejected", batch=row.name, reason=e.reason,
                                          remote_batch_id=remote, work_orders=[
                                              wo.name for wo in self.db.work_orders(
                                                  batch_id=batch_id, states=[WorkOrderState.BATCHED])])
                    await self.finisher.finish_batch(batch_id, ok=False, reason=e.reason)
                    break
                except (UploadGaveUp, UploadError) as e:  # not raised with max_retries=None; be safe
                    log.error("upload_failed", batch=row.name, error=str(e), retry_in=AUTH_RETRY_SECONDS)
                    self.db.record_error(batch_id, str(e))
                    await asyncio.sleep(AUTH_RETRY_SECONDS)
                    continue
                row = self.db.batch(batch_id)
                assert row.size is not None
                await self._record_delivery(row)
                self.db.mark_uploaded(batch_id, row.size, follow_at=first_poll_at(self.rt.cfg, row))
                failpoint("upload.marked")
                elapsed = time.monotonic() - started
                metrics.UPLOAD_DURATION.observe(elapsed)
                metrics.LAST_UPLOAD.set(time.time())
                log.info("batch_uploaded", batch=row.name, remote_batch_id=row.remote_batch_id,
                         size=row.size, size_human=format_size(row.size),
                         duration=format_duration(elapsed),
                         rate=f"{format_size(row.size / elapsed if elapsed > 0 else 0)}/s")
                await self.finisher.finish_batch(batch_id, ok=True)
                break
        finally:
            self.rt.uploads.pop(batch_id, None)
        await self.slots.release()
