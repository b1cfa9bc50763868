"""Drive one archive through a resumable upload: the protocol decides, the transport sends.

PUT bodies are streamed from the archive file in pieces (``PIECE`` bytes, read in a worker thread):
memory stays at a piece or two per upload whatever ``upload.chunk_size`` (the span one PUT carries),
and a retry re-reads from disk. A span is one request; the server's answer after it (``308`` +
``Range``) is what moves the offset, never what was sent.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp

from wodrop.redact import register_secret
from wodrop.upload.bandwidth import Bandwidth
from wodrop.upload.protocol import (
    ArchiveChanged,
    ExpectedDigest,
    ResumableUpload,
    RetryPolicy,
    RetryState,
    ServerCopy,
    check_server_copy,
)
from wodrop.upload.transport import OnRetry, classify_exception, pause, put

#: bytes read from disk and handed to the socket at a time
PIECE = 1024 * 1024
#: bytes per bandwidth-token acquisition under ``upload.max_bandwidth``: a smooth rate
PACED = 64 * 1024


class _Span:
    """The body of one PUT: bytes [start, start+length) of the archive, read as they are sent.

    A short read (the archive changed on disk) cannot be raised through aiohttp (it would become a
    connection error, retried forever): it is recorded here and raised after the request."""

    def __init__(self, fd: int, name: str, start: int, length: int, limiter: Bandwidth | None,
                 on_progress: Callable[[int], None] | None) -> None:
        self.fd, self.name, self.start, self.length, self.limiter = fd, name, start, length, limiter
        self.on_progress = on_progress
        self.changed: ArchiveChanged | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pos, end = self.start, self.start + self.length
        while pos < end:
            n = min(PIECE, end - pos)
            data = await asyncio.to_thread(os.pread, self.fd, n, pos)
            if len(data) != n:
                self.changed = ArchiveChanged(f"{self.name} is shorter than it was: it changed on disk")
                raise self.changed
            if self.limiter is None or self.limiter.rate is None:  # no limit now: whole pieces
                yield data
            else:
                view = memoryview(data)
                for i in range(0, n, PACED):
                    await self.limiter.acquire(min(PACED, n - i))
                    yield bytes(view[i : i + PACED])
            pos += n
            if self.on_progress is not None:
                self.on_progress(pos)


async def upload_archive(
    http: aiohttp.ClientSession,
    archive: Path,
    upload_url: str,
    *,
    size: int,
    chunk_size: int,
    retry: RetryPolicy,
    limiter: Bandwidth | None = None,
    known_offset: int | None = None,
    expected: ExpectedDigest | None = None,
    on_offset: Callable[[int], None] | None = None,
    on_retry: OnRetry | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ServerCopy:
    """Upload ``archive`` (``size`` bytes) to ``upload_url``, resuming from what the server holds.

    ``known_offset`` is the last offset the server confirmed (from the state DB): a hint, checked by
    a status query. ``on_offset(n)`` runs after every newly confirmed offset so the caller can
    persist it; ``on_retry(cause, delay, message)`` before every backoff; ``on_progress(n)`` as bytes
    are handed to the socket (for progress displays only: not confirmed, never persisted). Returns
    what the server reported about its copy, after checking it against ``expected`` when given.
    Raises the ``UploadError``s of :mod:`wodrop.upload.protocol`.
    """
    register_secret(upload_url)
    session = ResumableUpload(size, chunk_size, known_offset=known_offset)
    state = RetryState(retry)
    reported = session.offset
    fd = await asyncio.to_thread(os.open, archive, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != size:
            raise ArchiveChanged(f"{archive.name} is not {size} bytes any more: it changed on disk")
        while not session.complete:
            req = session.next_request()
            span = _Span(fd, archive.name, req.start, req.length, limiter, on_progress) \
                if req.length else None
            try:
                status, headers, answer = await put(http, upload_url, span, req.length, req.headers)
            except Exception as exc:
                if span is not None and span.changed is not None:
                    raise span.changed from None
                transient = classify_exception(exc, upload_url)
                if transient is None:
                    raise
                session.failed()
            else:
                transient = session.receive(status, headers, answer, now=time.time())
            if session.offset != reported:
                if session.offset > reported:
                    state.progressed()
                reported = session.offset
                if on_offset is not None:
                    on_offset(reported)
            if transient is not None:
                await pause(state, transient, on_retry)
    finally:
        os.close(fd)
    assert session.server_copy is not None
    check_server_copy(session.server_copy, size, expected)
    return session.server_copy
