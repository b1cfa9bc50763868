"""``wodrop upload ARCHIVE [--batch-id ID | --upload-url URL]``: one upload that a re-run resumes.

The session (batch id, upload URL) is written to the state DB before the first byte, and the offset
the server confirms after every chunk (the same session routine as the daemon's:
:mod:`wodrop.upload.session`); a re-run of the same command on the same file (same path, size and
mtime) finds that record and resumes from what the server holds, which a status query tells.

These records have origin ``cli``: the daemon sharing the state DB never resumes, finishes or deletes
them (the archive is the user's file). A file already uploaded is refused unless ``--again``.
"""

from __future__ import annotations

import argparse
import asyncio
import stat
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from tqdm import tqdm

from wodrop.cli import EXIT_FAILED, EXIT_OK, UsageError, load_cli_config
from wodrop.config import Config
from wodrop.digest import Expected, Stopped, crc32c_of_file
from wodrop.lifecycle import BatchState, Origin
from wodrop.logs import get_logger, setup_logging
from wodrop.redact import redact, register_secret
from wodrop.secrets import SecretError, resolve_api_key
from wodrop.state import BatchRow, StateDB
from wodrop.units import format_duration, format_size
from wodrop.upload import api
from wodrop.upload.bandwidth import Throttle
from wodrop.upload.protocol import (
    RetryPolicy,
    ServerCopy,
    SessionExpired,
    UploadError,
    UploadGaveUp,
    UploadRejected,
    check_server_copy,
)
from wodrop.upload.session import SessionHooks, upload_session
from wodrop.upload.transport import make_session, retry_policy

log = get_logger("wodrop.upload")


class Progress:
    """A tqdm bar on a terminal; otherwise a log line every ~5 s or 10 % (for journald and CI logs)."""

    def __init__(self, name: str, total: int, initial: int, *, bar: bool) -> None:
        self.total, self.offset = total, initial
        self._bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=name, file=sys.stderr, dynamic_ncols=True) if bar else None
        self._t0 = self._last_t = time.monotonic()
        self._start, self._last_pct = initial, self._percent(initial)

    def _percent(self, offset: int) -> int:
        return 100 * offset // self.total if self.total else 100

    def update(self, offset: int) -> None:
        if self._bar is not None:
            self._bar.update(offset - self.offset)
        self.offset = offset
        now = time.monotonic()
        pct = self._percent(offset)
        due = now - self._last_t >= 5 or pct >= self._last_pct + 10 or offset == self.total
        if self._bar is None and due:
            rate = (offset - self._start) / max(now - self._t0, 1e-6)
            eta = (self.total - offset) / rate if rate > 0 else None
            log.info("upload_progress", offset=offset, total=self.total, percent=pct,
                     rate=f"{format_size(rate)}/s", eta=format_duration(eta) if eta is not None else None)
            self._last_t, self._last_pct = now, pct

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclass
class Job:
    cfg: Config
    args: argparse.Namespace
    archive: Path
    size: int
    mtime_ns: int
    key: str | None
    db: StateDB

    @property
    def retry(self) -> RetryPolicy:
        return retry_policy(self.cfg.upload)

    def on_retry(self, cause: str, delay: float, message: str) -> None:
        log.warning("upload_retry", cause=cause, delay=round(delay, 2), message=message)


def _reusable(row: BatchRow, args: argparse.Namespace) -> bool:
    """Whether the recorded session is the one this command line asks for."""
    if row.upload_url is None:
        return False
    if args.upload_url:
        return bool(row.upload_url == args.upload_url)
    if args.batch_id:
        return bool(row.remote_batch_id == args.batch_id)
    return row.remote_batch_id is not None


async def _open_session(job: Job, http: aiohttp.ClientSession) -> tuple[str | None, str]:
    """Open (or look up) the session this command line names (the routine persists it before any PUT)."""
    args, cfg = job.args, job.cfg
    if args.upload_url:
        return None, args.upload_url
    assert cfg.api.url is not None and job.key is not None
    if args.batch_id:
        data = await api.get_batch(http, cfg.api.url, job.key, args.batch_id, retry=job.retry,
                                   on_retry=job.on_retry)
        remote, url = args.batch_id, api.upload_url_of(data)
    else:
        remote, url = await api.create_batch(http, cfg.api.url, job.key, job.archive.stem,
                                             retry=job.retry, on_retry=job.on_retry)
    log.info("upload_session_created", batch=remote)
    return remote, url


def _expired_message(args: argparse.Namespace) -> str | None:
    """What to tell the user when a session they named expired (None: we can open a new one)."""
    if args.upload_url:
        return "the upload session has expired; ask for a new upload URL"
    if args.batch_id:
        return (f"the upload session of batch {args.batch_id} has expired; "
                "run without --batch-id to create a new batch")
    return None


async def _hash(job: Job, row_id: int, stop: threading.Event) -> Expected:
    """crc32c of the archive, in a thread while the upload runs (the check only matters at the end)."""
    expected = await asyncio.to_thread(crc32c_of_file, job.archive, stop)
    assert expected.crc32c is not None
    job.db.set_digest(row_id, md5=None, crc32c=expected.crc32c)
    return expected


async def _transfer(job: Job, http: aiohttp.ClientSession, row: BatchRow) -> ServerCopy:
    """Resume the recorded session or open one, and upload; an expired session is replaced by a new
    batch when the API is ours to call (the user named neither a URL nor a batch)."""
    cfg, db = job.cfg, job.db
    if row.upload_url is not None and not _reusable(row, job.args):
        db.clear_session(row.id, "a different session was asked for on the command line")
        row = db.batch(row.id)
    throttle = Throttle(cfg.upload.bandwidth)  # a timetable is followed while the upload runs
    progress = Progress(job.archive.name, job.size, row.committed_offset,
                        bar=sys.stderr.isatty() and not job.args.no_progress)
    resuming, sessions = False, 0

    def on_start(remote: str | None, known: int | None) -> None:
        nonlocal resuming, sessions
        sessions += 1
        resuming = bool(known)
        if resuming:
            log.info("upload_resuming", batch=remote, db_offset=known, total=job.size)

    def on_offset(offset: int) -> None:
        nonlocal resuming
        if resuming:  # the first offset the server confirms: what the resume really starts from
            log.info("upload_resumed", offset=offset, total=job.size)
            resuming = False
        progress.update(offset)

    def on_expired(_e: SessionExpired) -> None:
        message = _expired_message(job.args)
        if message is not None:
            raise SessionExpired(message)
        if cfg.upload.max_retries is not None and sessions > cfg.upload.max_retries:
            raise UploadGaveUp(f"upload sessions keep expiring, gave up after {sessions}")
        log.warning("upload_session_expired", action="starting again from byte 0 in a new batch")
        progress.update(0)

    hooks = SessionHooks(open=lambda: _open_session(job, http), on_expired=on_expired, on_offset=on_offset,
                         on_retry=job.on_retry, on_start=on_start, on_progress=progress.update)
    try:
        async with throttle.following() as limiter:
            return await upload_session(db, row.id, http, job.archive, hooks,
                                        chunk_size=cfg.upload.chunk_size, retry=job.retry, limiter=limiter)
    finally:
        progress.close()


def _already_uploaded(job: Job) -> str | None:
    """When this very file (path, size, mtime) was uploaded before: a sentence saying when and where."""
    row = job.db.find_cli_batch(job.archive, job.size, job.mtime_ns, [BatchState.DONE])
    if row is None:
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(row.finished_at or row.updated_at))
    where = f"to batch {row.remote_batch_id}" if row.remote_batch_id else "to an upload URL"
    return (f"{job.archive.name} was already uploaded on {when} {where}; not sending it again "
            "(pass --again to upload it once more)")


def _find_or_create_row(job: Job) -> BatchRow:
    row = job.db.find_cli_batch(job.archive, job.size, job.mtime_ns,
                                [BatchState.SEALED, BatchState.UPLOADING])
    if row is None:
        name = f"{job.archive.stem}-cli-{uuid.uuid4().hex[:8]}"
        row = job.db.batch(job.db.create_batch(name, job.archive, origin=Origin.CLI, state=BatchState.SEALED,
                                               size=job.size, archive_mtime_ns=job.mtime_ns))
    return row


async def _upload(job: Job) -> int:
    db = job.db
    refusal = None if job.args.again else _already_uploaded(job)
    if refusal is not None:
        log.error("upload_refused", reason=refusal)
        print(f"wodrop upload: {refusal}", file=sys.stderr)
        return EXIT_FAILED
    row = _find_or_create_row(job)
    # Hash while uploading (the check only matters at the end); a resume reuses the cached digest.
    cached = Expected(job.size, row.md5, row.crc32c) if row.crc32c else None
    stop = threading.Event()
    hashing = None if cached else asyncio.create_task(_hash(job, row.id, stop))  # awaited below
    started = time.monotonic()
    try:
        async with make_session(job.cfg.upload) as http:
            copy = await _transfer(job, http, row)
        check_server_copy(copy, job.size, cached or (await hashing if hashing else None))
    except (UploadError, aiohttp.ClientError, OSError, Stopped) as e:
        message = str(e) if isinstance(e, UploadError) else redact(f"{type(e).__name__}: {e}")
        db.record_error(row.id, message)
        if isinstance(e, UploadRejected):
            db.finish_batch(row.id, BatchState.FAILED, message)
        log.error("upload_failed", error=message)
        print(f"wodrop upload: {message}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        stop.set()
        if hashing is not None:  # never left running: it stops at the next block once ``stop`` is set
            await asyncio.gather(hashing, return_exceptions=True)
    db.mark_uploaded(row.id, job.size)
    db.finish_batch(row.id, BatchState.DONE)
    remote = db.batch(row.id).remote_batch_id
    elapsed = time.monotonic() - started
    log.info("upload_complete", batch=remote, size=job.size, seconds=round(elapsed, 3))
    print(f"uploaded {job.archive.name} ({format_size(job.size)}) in {format_duration(elapsed)}"
          + (f" to batch {remote}" if remote else ""))
    return EXIT_OK


def _prepare(args: argparse.Namespace, cfg: Config) -> tuple[Path, int, int, str | None]:
    """Check the command line against the config before any network or DB work (usage errors: exit 2)."""
    archive = Path(args.archive).resolve()
    try:
        st = archive.stat()
    except FileNotFoundError:
        raise UsageError(f"{args.archive}: no such file") from None
    except OSError as e:
        raise UsageError(f"{args.archive}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{args.archive}: not a regular file")
    if args.upload_url:
        register_secret(args.upload_url)
        if not args.upload_url.startswith(("https://", "http://")):
            raise UsageError("--upload-url: expected an http(s) URL")
        return archive, st.st_size, st.st_mtime_ns, None
    if args.batch_id is not None and not args.batch_id.strip():
        raise UsageError("--batch-id: empty (leave it out to create a new batch)")
    if cfg.api.url is None:
        raise UsageError("set api.url or pass --upload-url")
    try:
        key = resolve_api_key(cfg)
    except SecretError as e:
        raise UsageError(str(e)) from None
    if not key:
        raise UsageError("no API key: set CUSTOMER_API_KEY (or DEEPOMATIC_API_KEY, or api.api_key_file)")
    return archive, st.st_size, st.st_mtime_ns, key


def run(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    setup_logging(cfg.log.level, cfg.log.format)
    archive, size, mtime_ns, key = _prepare(args, cfg)
    with StateDB(cfg.paths.db) as db:
        return asyncio.run(_upload(Job(cfg, args, archive, size, mtime_ns, key, db)))
