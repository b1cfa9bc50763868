"""Drive one archive through a resumable upload: the protocol decides, the transport sends.

Memory stays at one chunk per upload: the chunk is read from disk as one ``bytes`` (so a retry can
resend it) and dropped before the next one is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import aiofiles
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
) -> ServerCopy:
    """Upload ``archive`` (``size`` bytes) to ``upload_url``, resuming from what the server holds.

    ``known_offset`` is the last offset the server confirmed (from the state DB): a hint, checked by
    a status query. ``on_offset(n)`` runs after every newly confirmed offset so the caller can persist
    it; ``on_retry(cause, delay, message)`` before every backoff. Returns what the server reported about
    its copy, after checking it against ``expected`` when given. Raises the ``UploadError``s of
    :mod:`wodrop.upload.protocol`.
    """
    register_secret(upload_url)
    session = ResumableUpload(size, chunk_size, known_offset=known_offset)
    state = RetryState(retry)
    reported = session.offset
    async with aiofiles.open(archive, "rb") as f:
        while not session.complete:
            req = session.next_request()
            body = b""
            if req.length:
                await f.seek(req.start)
                body = await f.read(req.length)
                if len(body) != req.length:
                    raise ArchiveChanged(f"{archive.name} is shorter than {size} bytes: it changed on disk")
            try:
                status, headers, answer = await put(http, upload_url, body, req.headers, limiter)
            except Exception as exc:
                transient = classify_exception(exc, upload_url)
                if transient is None:
                    raise
                session.failed()
            else:
                transient = session.receive(status, headers, answer, now=time.time())
            del body
            if session.offset != reported:
                if session.offset > reported:
                    state.progressed()
                reported = session.offset
                if on_offset is not None:
                    on_offset(reported)
            if transient is not None:
                await pause(state, transient, on_retry)
    assert session.server_copy is not None
    check_server_copy(session.server_copy, size, expected)
    return session.server_copy
