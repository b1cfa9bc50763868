"""Resumable-upload protocol (Google Cloud Storage semantics) as a pure state machine: no I/O, no clock.

The transport asks :class:`ResumableUpload` what to send next, sends it, and feeds the answer back.
Keeping the decisions here (offsets, ``Content-Range``, what a 308 or a 200 means, when to query the
server, which failures are worth a retry and how long to wait) makes them testable without a socket,
in the spirit of h11 and google-resumable-media's ``_upload.py``.

Rules that matter and why:

* The server's ``Range`` is the only truth about what is saved: it may keep less than was sent.
* A status query (empty PUT, ``bytes */T``) follows any failure, but only once the server has
  confirmed a first byte: some servers (gcp-storage-emulator) answer it wrongly on an empty session,
  and resending from byte 0 is always safe because servers ignore bytes they already hold.
* Every chunk but the last is a multiple of 256 KiB, whatever the server saved.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from wodrop.redact import redact

#: GCS refuses non-final chunks that are not a multiple of this.
CHUNK_ALIGN = 262144
#: a Retry-After longer than this is treated as this (a broken header must not park an upload for days)
MAX_RETRY_AFTER = 3600.0
_RANGE = re.compile(r"^\s*bytes=0-(\d+)\s*$", re.IGNORECASE)
_DETAIL_MAX = 300

RetryCause = Literal["timeout", "connection", "server_error", "throttled"]
#: ends the message of a glitch that is retried (dropped from the message when retries run out)
RETRYING = "; retrying"
#: 4xx API answers that are no verdict on the batch even with a JSON body: a wrong address or a proxy
#: (404), a timeout (408), throttling (429); 401/403 are :class:`AuthRefused`
_API_NOT_VERDICTS = frozenset({404, 408, 429})
_HTML = re.compile(rb"^\s*(?:<!doctype\s+html|<html|<head|<body|<title|<!--)", re.IGNORECASE)
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_NOTE_MAX = 80


# ---- errors -------------------------------------------------------------------------------------


class UploadError(Exception):
    """An upload failed for good; the message is redacted and meant for a person."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))

    @property
    def reason(self) -> str:
        return str(self)


class SessionExpired(UploadError):
    """The upload URL is gone (404/410, or 499 after a cancel): only a new session can continue."""

    def __init__(self, message: str = "the upload session has expired") -> None:
        super().__init__(message)


class UploadRejected(UploadError):
    """The server refused the upload for good (a 4xx, or its copy differs from the archive)."""


class AuthRefused(UploadError):
    """The platform API refused the key (401/403): no retry will help until the key changes. ``source``
    says where the key came from (``secrets.key_source``: ``DEEPOMATIC_API_KEY``, ``api.api_key_file
    (/etc/...)``...), so the message points at what to fix; never the key itself."""

    def __init__(self, status: int, source: str | None = None) -> None:
        super().__init__(f"the platform refused the API key (HTTP {status}): check {source or 'the API key'}")
        self.status = status


class UploadGaveUp(UploadError):
    """Too many consecutive transient failures without progress (``upload.max_retries``)."""


class ArchiveChanged(UploadError):
    """The local archive no longer matches the size the upload was started with."""


class UnusableAnswer(UploadError):
    """A platform API answer that is no verdict (a 2xx that is not JSON or lacks ``upload_url`` or
    ``batch_id``): a glitch of a proxy or the platform, retried like a 5xx by the API calls. Seen by
    a caller only when it checks an answer outside them; it is never a reason to fail work orders."""

    @property
    def retry(self) -> Retry:
        return Retry("server_error", str(self) + RETRYING)


# ---- retry classification and backoff -----------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    """A transient failure: wait, then try again (after a status query when one is allowed)."""

    cause: RetryCause
    message: str
    #: seconds the server asked us to wait (``Retry-After``), overriding the backoff
    retry_after: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Truncated exponential backoff with full jitter. ``max_retries=None`` retries forever (daemon)."""

    initial_delay: float = 1.0
    max_delay: float = 60.0
    max_retries: int | None = 10


def backoff_delay(failures: int, initial: float, cap: float, rand: float) -> float:
    """Full jitter: uniform in ``[0, min(cap, initial * 2**(failures-1))]``; ``rand`` is in [0, 1)."""
    n = max(failures - 1, 0)
    ceiling = cap if n > 62 else min(cap, initial * 2.0**n)
    return max(0.0, ceiling * rand)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as delta-seconds or an HTTP date (``now`` is Unix time); None when absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class RetryState:
    """Counts consecutive failures; progress resets the count (a long upload on a flaky link goes on)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0

    def progressed(self) -> None:
        self.failures = 0

    def failed(self, retry: Retry, rand: float) -> float:
        """The delay before the next attempt; raises :class:`UploadGaveUp` past ``max_retries``."""
        self.failures += 1
        limit = self.policy.max_retries
        if limit is not None and self.failures > limit:
            what = retry.message.removesuffix(RETRYING)
            plural = "" if self.failures == 1 else "s"
            raise UploadGaveUp(f"{what}, gave up after {self.failures} attempt{plural}")
        if retry.retry_after is not None:
            return retry.retry_after
        return backoff_delay(self.failures, self.policy.initial_delay, self.policy.max_delay, rand)


class JSONTooDeep(ValueError):
    """JSON nested deeper than the parser goes (``json`` raises RecursionError, not ValueError)."""


def load_json(data: bytes | str) -> Any:
    """``json.loads`` whose every refusal is a ValueError: a hostile ``[[[[…`` nested past the recursion
    limit is :class:`JSONTooDeep`, bad JSON as ever."""
    try:
        return json.loads(data)
    except RecursionError:
        raise JSONTooDeep("JSON nested too deeply") from None


def detail_text(body: bytes) -> str:
    """The server's explanation from an error body (JSON ``detail``/``error``/``message`` or text),
    redacted: servers echo the upload URL, its ``upload_id`` or its path token in their errors."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data: Any = load_json(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("detail", "error", "message"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if isinstance(value, str) and value:
                text = value
                break
    # Redact before shortening: a cut through a secret would leave a prefix that no longer matches.
    text = redact(" ".join(text.split()))
    if len(text) > _DETAIL_MAX:
        text = text[: _DETAIL_MAX - 1] + "…"
    return text


def classify_status(status: int, headers: Mapping[str, str], body: bytes, *, now: float,
                    what: str = "the server") -> Retry | None:
    """A transient error status -> :class:`Retry`; a success or a status the caller handles -> None.

    Shared by upload and API calls: 408, 429 (with ``Retry-After``) and 5xx are worth a retry.
    """
    if status == 429:
        after = parse_retry_after(headers.get("Retry-After"), now)
        return Retry("throttled", f"{what} is throttling (HTTP 429)", after)
    if status == 408:
        return Retry("timeout", f"{what} timed out the request (HTTP 408)")
    if 500 <= status <= 599:
        detail = detail_text(body)
        return Retry("server_error", f"{what} failed (HTTP {status}{': ' + detail if detail else ''})")
    return None


def _short(text: str) -> str:
    """Redact, *then* shorten: a cut through a secret would leave a prefix the redactor cannot match."""
    text = redact(" ".join(text.split()))
    if len(text) > _NOTE_MAX:
        text = text[: _NOTE_MAX - 1] + "…"
    return text


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None (empty, not JSON, or JSON that is not an object)."""
    try:
        data = load_json(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def describe_body(body: bytes, content_type: str | None = None) -> str:
    """What an answer that is not the expected JSON holds, for a person: ``an HTML page ("Login")``."""
    if not body.strip():
        return "an empty body"
    ctype = (content_type or "").split(";")[0].strip().lower()
    if "html" in ctype or _HTML.match(body[:512]):
        m = _TITLE.search(body[:8192])
        title = _short(html.unescape(m.group(1).decode("utf-8", "replace"))) if m else ""
        return f"an HTML page ({title!r})" if title else "an HTML page"
    try:
        data = load_json(body)
    except JSONTooDeep:
        return "JSON nested too deeply"
    except (ValueError, UnicodeDecodeError):
        return f"a {ctype} body that is not JSON" if ctype else "a body that is not JSON"
    if isinstance(data, dict):
        return "a JSON object"
    return "a JSON array" if isinstance(data, list) else f"the JSON value {_short(json.dumps(data))}"


def _redirect_target(location: str | None) -> str:
    """Where a redirect points, without its query (often a login token) and redacted."""
    if not location:
        return ""
    target = location.strip().split("#", 1)[0].split("?", 1)[0]
    return f" to {_short(target)}" if target else ""


def classify_api_answer(status: int, headers: Mapping[str, str], body: bytes, *, now: float,
                        what: str = "the platform API",
                        handled: frozenset[int] = frozenset()) -> Retry | None:
    """A platform API answer that is no verdict -> :class:`Retry`; None: the caller reads the answer.

    None is left for a 2xx (whose content the caller checks, raising :class:`UnusableAnswer`), 401 and
    403 (:class:`AuthRefused`), the statuses in ``handled``, and real verdicts: a 4xx other than
    404/408/429 that carries the platform's own JSON error. Anything else (a redirect, an HTML page or
    an empty body from a proxy, a 404 from a wrong route, 408, 429, 5xx) is a glitch worth a retry:
    sending work orders to failed/ for it would be wrong.
    """
    if status in handled:
        return None
    retry = classify_status(status, headers, body, now=now, what=what)
    if retry is not None:
        return retry
    if 200 <= status <= 299 or status in (401, 403):
        return None
    if 300 <= status <= 399:
        return Retry("server_error", f"{what} answered HTTP {status}, a redirect"
                                     f"{_redirect_target(headers.get('Location'))} (check api.url){RETRYING}")
    if 400 <= status <= 499 and status not in _API_NOT_VERDICTS and json_object(body) is not None:
        return None
    if status == 404 and json_object(body) is not None:
        detail = detail_text(body)
        return Retry("server_error", f"{what} answered HTTP 404{': ' + detail if detail else ''}"
                                     f" (check api.url){RETRYING}")
    kind = describe_body(body, headers.get("Content-Type"))
    hint = " (check api.url)" if status == 404 else ""
    return Retry("server_error", f"{what} answered HTTP {status} with {kind}, not the platform's own "
                                 f"error{hint}{RETRYING}")


# ---- the upload state machine -------------------------------------------------------------------


class ExpectedDigest(Protocol):
    """What the archive should hash to: ``wodrop.digest.ArchiveDigest`` fits (md5/crc32c base64)."""

    @property
    def size(self) -> int: ...
    @property
    def md5(self) -> str | None: ...
    @property
    def crc32c(self) -> str | None: ...


@dataclass(frozen=True)
class ServerCopy:
    """What the server reported about the finished object (any field may be missing)."""

    size: int | None = None
    md5: str | None = None
    crc32c: str | None = None


@dataclass(frozen=True)
class ChunkRequest:
    """One PUT to make: archive bytes ``[start, end)`` (empty for a status query) and its headers."""

    start: int
    end: int
    headers: dict[str, str]
    query: bool

    @property
    def length(self) -> int:
        return self.end - self.start


def content_range(start: int, end: int, total: int) -> str:
    """``bytes S-E/T`` for bytes ``[start, end)``; ``bytes */T`` when there are none."""
    if end <= start:
        return f"bytes */{total}"
    return f"bytes {start}-{end - 1}/{total}"


def parse_range(value: str | None) -> int:
    """Bytes saved according to a 308's ``Range: bytes=0-N`` (N+1); absent means 0.

    Raises ValueError on anything else, which the caller treats as a server fault.
    """
    if value is None:
        return 0
    m = _RANGE.match(value)
    if not m:
        raise ValueError(f"malformed Range header {redact(value)[:60]!r}")
    return int(m.group(1)) + 1


def parse_server_copy(body: bytes) -> ServerCopy:
    """The object resource a GCS-like server returns on completion (non-JSON bodies carry nothing)."""
    try:
        data = load_json(body) if body else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return ServerCopy()
    size = data.get("size")
    try:
        size = int(size) if size is not None else None
    except (TypeError, ValueError):
        size = None
    md5, crc = data.get("md5Hash"), data.get("crc32c")
    return ServerCopy(size, md5 if isinstance(md5, str) else None, crc if isinstance(crc, str) else None)


def _b64_equal(a: str, b: str) -> bool:
    try:
        return base64.b64decode(a, validate=True) == base64.b64decode(b, validate=True)
    except (binascii.Error, ValueError):
        return a == b


def check_server_copy(copy: ServerCopy, size: int, expected: ExpectedDigest | None) -> None:
    """Raise :class:`UploadRejected` when what the server reports differs from the local archive."""
    problems = []
    if copy.size is not None and copy.size != size:
        problems.append(f"size {copy.size} instead of {size}")
    if expected is not None:
        if copy.md5 and expected.md5 and not _b64_equal(copy.md5, expected.md5):
            problems.append("md5 differs")
        if copy.crc32c and expected.crc32c and not _b64_equal(copy.crc32c, expected.crc32c):
            problems.append("crc32c differs")
    if problems:
        raise UploadRejected("the server's copy differs from the archive: " + ", ".join(problems))


class ResumableUpload:
    """Where one resumable upload stands, and what to send next.

    ``known_offset`` is a hint from the state DB: when it is above 0 the first request is a status
    query, since the server may hold more (or less) than we recorded.
    """

    def __init__(self, total: int, chunk_size: int, *, known_offset: int | None = None) -> None:
        if chunk_size <= 0 or chunk_size % CHUNK_ALIGN:
            raise ValueError(f"chunk size must be a positive multiple of {CHUNK_ALIGN}")
        if total < 0:
            raise ValueError("total must be >= 0")
        self.total = total
        self.chunk_size = chunk_size
        self.offset = min(max(known_offset or 0, 0), total)
        self.complete = False
        self.server_copy: ServerCopy | None = None
        self._need_query = self.offset > 0
        self._pending: ChunkRequest | None = None

    def next_request(self) -> ChunkRequest:
        """The PUT to make now: a status query or the next chunk from the confirmed offset."""
        if self.complete:
            raise RuntimeError("the upload is complete")
        start = self.offset
        if self._need_query or self.offset >= self.total:
            end = start
        else:
            end = min(start + self.chunk_size, self.total)
        headers = {"Content-Type": "application/octet-stream", "Content-Range":
                   content_range(start, end, self.total)}
        self._pending = ChunkRequest(start, end, headers, query=end == start)
        return self._pending

    def failed(self) -> None:
        """The request got no usable answer (timeout, reset): ask the server where it stands next.
        Also after a first span that failed: the server keeps what arrived before the drop."""
        req, self._pending = self._pending, None
        self._need_query = self.offset > 0 or (req is not None and not req.query)

    def receive(self, status: int, headers: Mapping[str, str], body: bytes, *, now: float) -> Retry | None:
        """Interpret the answer to :meth:`next_request`. None: the state advanced (see ``offset`` and
        ``complete``); :class:`Retry`: wait and call :meth:`next_request` again. Raises
        :class:`SessionExpired` or :class:`UploadRejected` when no retry can help."""
        req, self._pending = self._pending, None
        if req is None:
            raise RuntimeError("receive() without a pending request")
        if status in (200, 201):
            copy = parse_server_copy(body)
            check_server_copy(copy, self.total, None)
            self.offset, self.complete, self.server_copy = self.total, True, copy
            return None
        if status == 308:
            try:
                saved = parse_range(headers.get("Range"))
            except ValueError as e:
                self._need_query = self.offset > 0
                return Retry("server_error", f"the upload server sent a {e}")
            if saved > self.total:
                raise UploadRejected(f"the server reports {saved} bytes saved, the archive has {self.total}")
            self.offset = saved
            self._need_query = False
            if not req.query and saved <= req.start:
                return Retry("server_error", "the upload server saved none of the chunk")
            if saved == self.total and self.total > 0:
                # Every byte is there but the session is not finished: only a retried query can tell.
                self._need_query = True
                return Retry("server_error", "the upload server holds every byte but did not finish")
            return None
        if status in (404, 410):
            raise SessionExpired()
        if status == 499:
            raise SessionExpired("the upload session was cancelled")
        retry = classify_status(status, headers, body, now=now, what="the upload server")
        if retry is not None:
            self._pending = req
            self.failed()
            return retry
        detail = detail_text(body)
        raise UploadRejected(f"the upload server refused the upload (HTTP {status}"
                             f"{': ' + detail if detail else ''})")
