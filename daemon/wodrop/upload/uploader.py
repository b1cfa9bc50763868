"""Drive one archive through a resumable upload: the protocol decides, the transport sends.

PUT bodies are streamed from the archive file in pieces (``PIECE`` bytes, read in a worker thread):
memory stays at a piece or two per upload whatever ``upload.chunk_size`` (the span one PUT carries),
and a retry re-reads from disk. A span is one request; the server's answer after it (``308`` +
``Range``) is what moves the offset, never what was sent.

The offset reached is reported piece by piece as the connection takes the bytes (aiohttp asks for the
next piece once it wrote the last one, waiting while the socket is full): a stall check or a rate sees
the data move within a span, not only when the server confirms it at the span's end. Under a bandwidth
limit a piece is an eighth of a second's worth, so that even a slow link shows steady movement.
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
#: at most this many bytes per bandwidth-token acquisition under ``upload.max_bandwidth``: a smooth rate
PACED = 64 * 1024
#: under a limit, a piece is this many seconds' worth (at least ``MIN_PACED`` bytes): at the lowest
#: limit (1 KiB/s) bytes still move every half second, under ``notify.stall_after``'s 1 s floor
PACE_SECONDS = 0.125
MIN_PACED = 512


def paced_piece(rate: float) -> int:
    """Bytes to send per token acquisition at ``rate`` bytes/s."""
    return max(MIN_PACED, min(PACED, int(rate * PACE_SECONDS)))


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
            view, i = memoryview(data), 0
            while i < n:
                rate = self.limiter.rate if self.limiter is not None else None
                size = n - i if rate is None else min(paced_piece(rate), n - i)  # no limit now: the rest
                if self.limiter is not None and rate is not None:
                    await self.limiter.acquire(size)
                yield data if size == n else bytes(view[i : i + size])
                i += size  # resumed: the connection took the piece
                if self.on_progress is not None:
                    self.on_progress(pos + i)
            pos += n


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
    persist it; ``on_retry(cause, delay, message)`` before every backoff; ``on_progress(offset)`` as the
    connection takes body bytes, with the archive offset they reach (a display and the stall check: not
    confirmed, never persisted; it goes back when bytes are sent again). Returns
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
