"""One upload session's life, shared by the daemon and ``wodrop upload``: open, persist, PUT, resume,
renew after expiry, verify.

Order (each gap a named fail point, each crash resumable):
1. open a remote session (create a batch, look one up, or a given URL) ``upload.session_created``
2. DB ``set_session`` (batch id + URL) *before* the first PUT         ``upload.session_saved``
3. PUT spans; after each confirmed offset, DB ``set_offset``          ``upload.span_sent``
4. the server holds every byte (checked against the expected digest)  ``upload.confirmed``
The caller then records the outcome (ledger, ``mark_uploaded``). On restart the DB's URL and offset
are resumed (the remote batch id registered as public, as the API does for a new one: logs show it,
the URL stays masked); the server's answer to a status query is the truth, the DB's offset a hint. A
session the server forgot (404/410) is cleared in the DB and, where the caller may, replaced by a new
one from byte 0.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from wodrop.failpoints import failpoint
from wodrop.redact import register_public, register_secret
from wodrop.state import StateDB
from wodrop.upload.bandwidth import Bandwidth
from wodrop.upload.protocol import ExpectedDigest, RetryPolicy, ServerCopy, SessionExpired
from wodrop.upload.transport import OnRetry
from wodrop.upload.uploader import upload_archive

#: opens a remote session: (remote batch id or None, upload URL)
Opener = Callable[[], Awaitable[tuple[str | None, str]]]


@dataclass
class SessionHooks:
    """What differs between the daemon and the one-shot command."""

    open: Opener
    #: called after an expiry was recorded; raise to give up (a URL the user named cannot be renewed)
    on_expired: Callable[[SessionExpired], None]
    on_offset: Callable[[int], None] | None = None
    on_retry: OnRetry | None = None
    #: called with (remote batch id, resumed offset or None) when a transfer starts
    on_start: Callable[[str | None, int | None], None] | None = None
    #: the archive offset reached by the bytes the connection took (a display and the stall check;
    #: ``on_offset`` is what the server confirmed)
    on_progress: Callable[[int], None] | None = None


async def upload_session(
    db: StateDB, batch_id: int, http: aiohttp.ClientSession, archive: Path, hooks: SessionHooks, *,
    chunk_size: int, retry: RetryPolicy, limiter: Bandwidth | None = None,
    expected: ExpectedDigest | None = None,
) -> ServerCopy:
    """Upload batch ``batch_id``'s archive to completion through its persisted session (opening or
    renewing one as needed). Returns the server's copy, checked against ``expected`` when given."""
    while True:
        row = db.batch(batch_id)
        assert row.size is not None
        if row.upload_url is None:
            remote, url = await hooks.open()
            failpoint("upload.session_created")
            db.set_session(batch_id, remote, url)
            failpoint("upload.session_saved")
            known: int | None = None
        else:
            remote, url, known = row.remote_batch_id, row.upload_url, row.committed_offset
            register_secret(url)
        register_public(remote)
        if hooks.on_start is not None:
            hooks.on_start(remote, known)

        def on_offset(offset: int) -> None:
            failpoint("upload.span_sent")
            db.set_offset(batch_id, offset)
            if hooks.on_offset is not None:
                hooks.on_offset(offset)

        try:
            copy = await upload_archive(
                http, archive, url, size=row.size, chunk_size=chunk_size, retry=retry, limiter=limiter,
                known_offset=known, expected=expected, on_offset=on_offset, on_retry=hooks.on_retry,
                on_progress=hooks.on_progress,
            )
        except SessionExpired as e:
            db.clear_session(batch_id, str(e))
            hooks.on_expired(e)
            continue
        failpoint("upload.confirmed")
        return copy
