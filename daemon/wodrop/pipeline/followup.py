"""Follow-up: after a batch's upload, poll the platform (``GET /v0.2/batches/{id}``) until its processing
ends, and put what it reports where people look.

Its own stage, reading due batches from the state DB (``followup``/``followup_next_at``: a restart
resumes where it was, and a crash mid-poll only repeats a read), with its own HTTP timeouts: a slow or
silent API delays the follow-up, never an upload. Per poll: the status is recorded (a new one is logged
and resets the backoff, :mod:`wodrop.upload.processing`); errors the platform lists for a work order
wodrop sent in that batch go to ``done/<WO>.platform.json`` (the shape of ``<WO>.error.json``, stage
``platform``); a final status, ``followup.timeout`` after the upload, or repeated 404s end it.

Crash order for a report: the DB records the errors and the report's path first (``followup.planned``),
then the file is written. A file at the recorded path is rewritten only when it is ours (a regular file
of ours holding this work order's platform report): someone may have put their own there between a
crash and the write. Any other file is never replaced: the report takes a suffixed name, recorded
before it is written, as on a first write.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from wodrop import metrics
from wodrop.config import Config
from wodrop.failpoints import failpoint
from wodrop.fsops import failure_report, fit_name, free_names, write_json_atomic
from wodrop.lifecycle import FollowupState, Origin
from wodrop.logs import get_logger
from wodrop.pipeline.guard import Isolation
from wodrop.runtime import Runtime
from wodrop.state import BatchRow, WorkOrderRow
from wodrop.upload.api import get_batch_progress
from wodrop.upload.processing import LOST_AFTER, Progress, clean, next_poll_at, read_progress
from wodrop.upload.protocol import AuthRefused, RetryPolicy, UploadError, load_json

log = get_logger("wodrop.followup")
REPORT_SUFFIX = ".platform.json"
#: attempts within one poll (a dropped connection, a 503); then the poll is tried again on the schedule
POLL_ATTEMPTS = 3
#: a report of ours is smaller (101 entries of at most ~5 KB): a larger file is not read, and not ours
REPORT_MAX_BYTES = 1024 * 1024


class AuthGate(Protocol):
    """The uploads' pause while the key is refused (``pipeline.uploads.Uploads``)."""

    async def auth_ready(self) -> None: ...
    async def auth_refused(self, err: AuthRefused) -> None: ...
    def auth_accepted(self) -> None: ...


def first_poll_at(cfg: Config, row: BatchRow) -> float | None:
    """When to first poll a batch that is being marked uploaded; None: it is not followed."""
    if row.origin != Origin.DAEMON or not row.remote_batch_id or not cfg.followup.active(cfg.api.url):
        return None
    return time.time() + cfg.followup.poll_interval


def report_path_for(folder: Path) -> Path:
    """``done/<WO>.platform.json`` next to the folder, or a suffixed name when that one is taken."""
    return folder.parent / fit_name(next(iter(free_names(folder.parent, folder.name, (REPORT_SUFFIX,)))),
                                    REPORT_SUFFIX)


def is_ours(path: Path, work_order: str) -> bool | None:
    """Whether ``path`` holds our platform report of ``work_order``: a regular file (no link followed)
    owned by this user, with that report's JSON. None: nothing is there. Blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:  # (a dangling link is ELOOP)
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENXIO):  # a link, not ours to read
            return False
        raise
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > REPORT_MAX_BYTES:
            return False
        try:
            data = load_json(f.read(REPORT_MAX_BYTES))
        except ValueError:
            return False
    return isinstance(data, dict) and data.get("work_order") == work_order and data.get("stage") == "platform"


class Followup:
    def __init__(self, runtime: Runtime, http: aiohttp.ClientSession, api_url: str, api_key: str,
                 auth: AuthGate) -> None:
        self.rt, self.db, self.http, self.auth = runtime, runtime.db, http, auth
        self.api_url, self.api_key = api_url, api_key
        self._guard: Isolation[int] = Isolation("followup", runtime.stuck, self._label)
        self._held: set[int] = set()  # batches parked by the guard after an unexpected error

    def _label(self, batch_id: int) -> str:
        try:
            return f"batch {self.db.batch(batch_id).name} (platform follow-up)"
        except Exception:  # the DB itself may be what failed
            return f"batch #{batch_id} (platform follow-up)"

    async def run(self) -> None:
        while True:
            self._count()
            cfg = self.rt.cfg
            if not cfg.followup.active(cfg.api.url):
                await asyncio.sleep(cfg.followup.poll_interval)
                continue
            while (item := self._guard.parked.pop_due(time.monotonic())) is not None:
                self._held.discard(item)
            now = time.time()
            due = self.db.followups_due(now, limit=100 + len(self._held))
            ready = [r for r in due if r.id not in self._held]
            for row in ready:
                if not await self._guard.run(row.id, self.poll(row.id)):
                    self._held.add(row.id)
            if not ready:
                await asyncio.sleep(self._idle(now, cfg.followup.poll_interval))

    def _idle(self, now: float, longest: float) -> float:
        """Until the next poll is due or a parked batch may be tried again; at most ``longest``."""
        waits = [longest]
        nxt = self.db.next_followup_at()
        if nxt is not None and nxt > now:
            waits.append(nxt - now)
        if (parked := self._guard.parked.next_in(time.monotonic())) is not None:
            waits.append(parked)
        return max(min(waits), 0.05)

    def _count(self) -> None:
        counts = self.db.followup_counts()
        for s in FollowupState:
            metrics.PLATFORM_BATCHES.labels(str(s)).set(counts.get(str(s), 0))

    def _policy(self) -> RetryPolicy:
        up = self.rt.cfg.upload
        return RetryPolicy(up.retry_initial_delay, up.retry_max_delay, max_retries=POLL_ATTEMPTS - 1)

    async def poll(self, batch_id: int) -> None:
        """Ask the platform about one batch and record what it says."""
        row = self.db.batch(batch_id)
        if row.followup != FollowupState.FOLLOWING:
            return
        if not row.remote_batch_id:  # a damaged row: nothing to ask the platform about
            self._end(row, FollowupState.LOST, message="no platform batch id is recorded for this batch")
            return
        await self.auth.auth_ready()
        cfg = self.rt.cfg
        sent: dict[str, list[WorkOrderRow]] = {}
        for wo in self.db.work_orders(batch_id=row.id):
            sent.setdefault(wo.name, []).append(wo)
        # A poll is bounded as a whole: a 429 asking for an hour, or a server that trickles, must not
        # hold the other batches' polls back for longer than one request may take.
        limit = cfg.upload.connect_timeout + cfg.upload.read_timeout
        try:
            async with asyncio.timeout(limit):
                data = await get_batch_progress(self.http, self.api_url, self.api_key, row.remote_batch_id,
                                                retry=self._policy())
            progress = None if data is None else read_progress(data, cfg.followup.done_statuses,
                                                               cfg.followup.failed_statuses, sent)
        except AuthRefused as e:
            await self.auth.auth_refused(e)
            return
        except TimeoutError:
            self._poll_failed(row, f"the platform API did not answer within {limit:.0f} s")
            return
        except UploadError as e:
            self._poll_failed(row, e.reason)
            return
        self.auth.auth_accepted()
        if progress is None:
            self._not_found(row)
        else:
            await self._progress(row, progress, sent)

    def _deadline(self, row: BatchRow) -> float:
        return (row.uploaded_at or row.updated_at) + self.rt.cfg.followup.timeout

    def _next_at(self, row: BatchRow, now: float, polls: int) -> float:
        return next_poll_at(now, polls, self.rt.cfg.followup.poll_interval, self._deadline(row))

    def _poll_failed(self, row: BatchRow, reason: str) -> None:
        now = time.time()
        if now >= self._deadline(row):
            self._end(row, FollowupState.TIMEOUT, message=f"no final status; the last poll failed: {reason}",
                      poll_error=reason)
            return
        next_at = self._next_at(row, now, row.followup_polls + 1)
        if reason != row.followup_error:
            log.warning("followup_poll_failed", batch=row.name, error=reason, retry_in=round(next_at - now))
        self.db.followup_polled(row.id, next_at=next_at, error=reason)

    def _not_found(self, row: BatchRow) -> None:
        now = time.time()
        reason = f"the platform does not know batch {row.remote_batch_id} (HTTP 404)"
        if row.followup_misses + 1 >= LOST_AFTER:
            self._end(row, FollowupState.LOST, message=f"{reason}, {LOST_AFTER} times in a row",
                      poll_error=reason)
        elif now >= self._deadline(row):
            self._end(row, FollowupState.TIMEOUT, message=reason, poll_error=reason)
        else:
            next_at = self._next_at(row, now, row.followup_polls + 1)
            log.warning("followup_batch_not_found", batch=row.name, remote_batch_id=row.remote_batch_id,
                        retry_in=round(next_at - now), note=f"the follow-up ends after {LOST_AFTER} in a row")
            self.db.followup_polled(row.id, next_at=next_at, error=reason, missed=True)

    def _end(self, row: BatchRow, outcome: FollowupState, *, status: str | None = None,
             message: str | None = None, errors: int | None = None, poll_error: str | None = None) -> None:
        self.db.end_followup(row.id, outcome, status=status, message=message, errors=errors,
                             poll_error=poll_error)
        self._count()
        final = status or row.platform_status
        if outcome in (FollowupState.DONE, FollowupState.FAILED):
            log.info("batch_processed", batch=row.name, platform_status=final, outcome=str(outcome),
                     errors=errors or 0, message=message)
            self.rt.notifier.emit("batch_processed", batch=row.name, platform_status=final,
                                  outcome=str(outcome), errors=errors or 0)
        else:
            log.warning("followup_ended", batch=row.name, outcome=str(outcome), platform_status=final,
                        reason=message)

    async def _progress(self, row: BatchRow, progress: Progress, sent: dict[str, list[WorkOrderRow]]) -> None:
        now = time.time()
        if progress.status != row.platform_status:
            log.info("platform_status", batch=row.name, status=progress.status, previous=row.platform_status,
                     final=progress.outcome is not None)
        await self._report_work_orders(row, progress, sent)
        if progress.outcome is not None:
            message = clean("; ".join(progress.batch_errors), 1000) if progress.batch_errors else None
            self._end(row, FollowupState(progress.outcome), status=progress.status, message=message,
                      errors=progress.total)
        elif now >= self._deadline(row):
            self._end(row, FollowupState.TIMEOUT, status=progress.status, errors=progress.total,
                      message=f"no final status within followup.timeout (last: {progress.status})")
        else:
            polls = 0 if progress.status != row.platform_status else row.followup_polls + 1
            self.db.followup_polled(row.id, status=progress.status, next_at=self._next_at(row, now, polls))

    async def _report_work_orders(self, row: BatchRow, progress: Progress,
                                  sent: dict[str, list[WorkOrderRow]]) -> None:
        """Each work order the platform names that wodrop sent in this batch gets its report; names the
        batch did not hold are only logged (never a path: nothing is written outside done/)."""
        if progress.unknown:
            log.warning("platform_error_unknown_work_order", batch=row.name, count=progress.unknown,
                        work_orders=list(progress.unknown_shown),
                        note="not a work order of this batch: not written")
        for name, errors in progress.work_orders.items():
            for wo in sent[name]:
                await self._report(row, wo, errors)

    async def _report(self, row: BatchRow, wo: WorkOrderRow, errors: list[dict[str, Any]]) -> None:
        folder = Path(wo.path)
        if folder.parent != self.rt.cfg.paths.done:
            log.warning("platform_report_not_written", batch=row.name, work_order=wo.name, path=wo.path,
                        reason="the work order is not in done/")
            return
        recorded = Path(wo.platform_report) if wo.platform_report else None
        if recorded is not None and recorded.parent != folder.parent:  # a damaged row: never look elsewhere
            raise ValueError(f"platform report {recorded} is not next to {folder}")
        ours = None if recorded is None else await asyncio.to_thread(is_ours, recorded, wo.name)
        if recorded is not None and ours is False:
            log.warning("platform_report_path_taken", work_order=wo.name, batch=row.name, path=str(recorded),
                        note="a file wodrop did not write is there: left alone; the report takes a new name")
        path = recorded if recorded is not None and ours is not False else \
            await asyncio.to_thread(report_path_for, folder)
        changed = wo.platform_error_list != errors or path != recorded
        report = failure_report(wo.name, "platform", errors)
        if changed:
            self.db.record_platform_errors(wo.id, errors, path)
            failpoint("followup.planned")
        if changed or ours is not True:
            await asyncio.to_thread(write_json_atomic, path, report)
        if changed:
            log.warning("work_order_platform_errors", work_order=wo.name, batch=row.name, report=str(path),
                        codes=sorted({e["code"] for e in errors})[:10], errors=len(errors))
            self.rt.notifier.emit("work_order_failed", work_order=wo.name, stage="platform", report=report)
