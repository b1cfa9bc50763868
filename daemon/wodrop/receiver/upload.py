"""The upload URL, with Google Cloud Storage resumable-upload semantics.

``PUT /upload/{batch_id}?upload_id=TOKEN`` with ``Content-Range: bytes S-E/T`` (``T`` may be ``*``):

- the server's committed offset is the truth: bytes below it that are sent again are read and
  ignored; a chunk starting beyond it saves nothing and gets 308 with the current Range;
- every chunk but the last is a multiple of 262144 bytes, else 400;
- 308 + ``Range: bytes=0-N`` while incomplete (no Range when nothing is saved), 200 + object metadata
  (``size``, ``md5Hash``, ``crc32c``) once complete, also to later status queries (``bytes */T``);
- ``DELETE`` cancels (499, then 410); an expired session answers 404.

Plus a GCS-style initiate endpoint, ``POST /upload/storage/v1/b/{bucket}/o?uploadType=resumable``
(alias ``POST /upload/gcs``), answering 200 with ``Location: <upload URL>``, so unmodified GCS client
libraries can upload here.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from wodrop.receiver.api import auth_error
from wodrop.receiver.context import Receiver, json_error, receiver, upload_url
from wodrop.receiver.faults import CHUNK_FAULTS, QUERY_FAULTS, Fault, retry_after_seconds
from wodrop.receiver.store import ALIGN, PartWriter, Session

_CONTENT_RANGE = re.compile(r"bytes (?:(?P<start>\d+)-(?P<end>\d+)|\*)/(?P<total>\d+|\*)")
# What reading a body raises when the client goes away mid-way.
_DROPPED = (ConnectionError, asyncio.IncompleteReadError, HttpProcessingError)


class BadRequest(Exception):
    """A request GCS would refuse with 400; the message is the answer's detail."""


def parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``(start, end, total)``; start/end None for a status query, total None for ``*``."""
    m = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not m:
        raise BadRequest(f"Content-Range must be 'bytes S-E/T', 'bytes S-E/*' or 'bytes */T', not {value!r}")
    total = None if m["total"] == "*" else int(m["total"])
    if m["start"] is None:
        return None, None, total
    start, end = int(m["start"]), int(m["end"])
    if end < start:
        raise BadRequest(f"Content-Range {value!r}: the last byte is before the first")
    if total is not None and end >= total:
        raise BadRequest(f"Content-Range {value!r}: the range goes past the total size")
    return start, end, total


def _incomplete(s: Session) -> web.Response:
    headers = {"Range": f"bytes=0-{s.committed - 1}"} if s.committed else {}
    return web.Response(status=308, headers=headers)


def _gone(s: Session) -> web.Response | None:
    if s.status == "expired":
        return json_error(404, "The upload session has expired.")
    if s.status == "cancelled":
        return json_error(410, "The upload session was cancelled.")
    return None


async def _lookup(request: web.Request) -> Session | None:
    s = await receiver(request).sessions.get(request.match_info["batch_id"])
    token = request.query.get("upload_id", "")
    if s is None or not hmac.compare_digest(token.encode(), s.token.encode()):
        return None
    return s


async def _fault_answer(r: Receiver, s: Session, fault: Fault) -> web.Response | None:
    """The answer a request-level fault gives instead of the real one (None: handle normally)."""
    if fault.kind == "slow":
        await asyncio.sleep(fault.arg)
        return None
    if fault.kind == "status":
        return json_error(int(fault.arg), f"injected fault: {fault}")
    if fault.kind == "throttle":
        return json_error(429, "Too many requests (injected).", **{"Retry-After": retry_after_seconds(fault)})
    if fault.kind == "expire":
        async with s.lock:
            if s.status != "uploaded":
                await r.sessions.end(s, "expired")
        return _gone(s) or web.json_response(s.object_meta)
    return None  # reset / partial act while the body is read


async def put_upload(request: web.Request) -> web.Response:
    """Answer, then read whatever of the body the answer did not need (an early 308/400/429/5xx):
    the client gets the answer and can reuse the connection, as with a server that drains."""
    response = await _put(request)
    transport = request.transport
    if transport is not None and not transport.is_closing() and not request.content.is_eof():
        try:
            async for data, _ in request.content.iter_chunks():
                receiver(request).stats.add("bytes_received", len(data))
        except _DROPPED:
            pass
    return response


async def _put(request: web.Request) -> web.Response:
    r = receiver(request)
    s = await _lookup(request)
    if s is None:
        return json_error(404, "No such upload session.")
    try:
        start, end, total = parse_content_range(request.headers.get("Content-Range"))
    except BadRequest as e:
        return json_error(400, str(e))
    is_query = start is None
    r.stats.add("status_queries" if is_query else "chunks")
    fault = r.faults.draw(QUERY_FAULTS if is_query else CHUNK_FAULTS) if r.faults else None
    if fault is not None:
        r.stats.fault(fault.kind)
        if (answer := await _fault_answer(r, s, fault)) is not None:
            return answer
    async with s.lock:
        if (gone := _gone(s)) is not None:
            return gone
        if s.status == "uploaded":
            return web.json_response(s.object_meta)
        try:
            await _declare_total(r, s, total)
        except BadRequest as e:
            return json_error(400, str(e))
        if start is None or end is None:
            if s.total is not None and s.committed == s.total:
                meta = await r.sessions.finalize(s)
                r.stats.add("uploads_completed")
                return web.json_response(meta)
            return _incomplete(s)
        try:
            return await _receive(request, r, s, start, end, fault)
        except BadRequest as e:
            return json_error(400, str(e))


async def _declare_total(r: Receiver, s: Session, total: int | None) -> None:
    if total is None or total == s.total:
        return
    if s.total is not None:
        raise BadRequest(f"the total size was declared as {s.total}, this request says {total}")
    if total < s.committed:
        raise BadRequest(f"total size {total} is less than the {s.committed} bytes already saved")
    s.total = total
    await r.sessions.save(s)


async def _receive(
    request: web.Request, r: Receiver, s: Session, start: int, end: int, fault: Fault | None
) -> web.Response:
    """Save a chunk's new bytes; the caller holds the session lock."""
    length = end - start + 1
    final = s.total is not None and end + 1 == s.total
    if not final and length % ALIGN:
        raise BadRequest(
            f"a chunk that is not the last must be a multiple of {ALIGN} bytes; this one is {length}"
        )
    if request.content_length is not None and request.content_length != length:
        raise BadRequest(f"the body is {request.content_length} bytes, Content-Range says {length}")
    if start > s.committed:
        return _incomplete(s)  # a gap: nothing saved, the client resends from the Range
    if s.status == "created":
        s.status = "uploading"
        await r.sessions.save(s)

    skip = s.committed - start  # already saved: read and ignored
    new = length - skip
    limit = cut = None
    if fault is not None and fault.kind == "partial":
        limit = int(r.faults.fraction() * max(new, 0)) // ALIGN * ALIGN
    elif fault is not None and fault.kind == "reset":
        cut = int(r.faults.fraction() * length)
    digest = await r.sessions.digest(s)
    backup = digest.copy()
    writer = PartWriter(r.sessions.store.part(s.batch_id), digest, limit=limit)
    read, dropped = 0, False
    try:
        async for data, _ in request.content.iter_chunks():  # as received: no re-joining
            pos, read = read, read + len(data)
            r.stats.add("bytes_received", len(data))
            if read > length:
                await writer.abort(s.committed)
                s.digest = backup
                raise BadRequest(f"the body is longer than the {length} bytes Content-Range announces")
            if read > skip:
                await writer.feed(data if pos >= skip else data[skip - pos :])
            if cut is not None and read >= cut:
                dropped = True
                break
    except _DROPPED:
        dropped = True
    if not dropped and read < length:
        await writer.abort(s.committed)
        s.digest = backup
        raise BadRequest(f"the body is {read} bytes, Content-Range announces {length}")
    saved = await writer.finish(final=final and not dropped)
    s.committed += saved
    r.stats.add("bytes_saved", saved)
    if dropped:
        if request.transport is not None:
            request.transport.abort()  # an injected reset; or the client is already gone
        return _incomplete(s)
    if s.committed == s.total:
        meta = await r.sessions.finalize(s)
        r.stats.add("uploads_completed")
        return web.json_response(meta)
    return _incomplete(s)


async def cancel_upload(request: web.Request) -> web.Response:
    """GCS answers a DELETE on a resumable session with 499 (client closed request) and drops it."""
    s = await _lookup(request)
    if s is None:
        return json_error(404, "No such upload session.")
    async with s.lock:
        if (gone := _gone(s)) is not None:
            return gone
        if s.status != "uploaded":
            await receiver(request).sessions.end(s, "cancelled")
    return web.Response(status=499)


async def initiate(request: web.Request) -> web.Response:
    """GCS ``uploadType=resumable`` initiation: metadata JSON in, ``Location`` out."""
    if (refused := auth_error(request, ("Bearer", "Token"))) is not None:
        return refused
    if request.query.get("uploadType") != "resumable":
        return json_error(400, "only uploadType=resumable is supported")
    body: Any = {}
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            return json_error(400, "the body must be the object's metadata as JSON")
    name = request.query.get("name") or (body.get("name") if isinstance(body, dict) else None)
    if not isinstance(name, str) or not name:
        return json_error(400, "the object needs a name (query 'name' or metadata 'name')")
    length = request.headers.get("X-Upload-Content-Length")
    if length is not None and not length.isdigit():
        return json_error(400, "X-Upload-Content-Length must be a number of bytes")
    r = receiver(request)
    s = await r.sessions.create(name, int(length) if length is not None else None)
    r.stats.add("sessions_created")
    return web.Response(status=200, headers={"Location": upload_url(request, s.batch_id, s.token)})


def add_routes(app: web.Application) -> None:
    app.router.add_put("/upload/{batch_id}", put_upload)
    app.router.add_delete("/upload/{batch_id}", cancel_upload)
    app.router.add_post("/upload/storage/v1/b/{bucket}/o", initiate)
    app.router.add_post("/upload/gcs", initiate)
