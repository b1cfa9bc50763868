"""The platform's batch API: ``POST /v0.2/batches`` opens an upload session, ``GET .../{id}`` finds it
(and, after the upload, tells how the platform's processing goes: :mod:`wodrop.upload.processing`).

The paths are the vendor's own client's, without a trailing slash (a server routed like it answers 404
to ``/v0.2/batches/``), with ``Authorization: Token <key>`` and ``Content-Type: application/json``.
Request builders and response parsers are pure (tested without a server); the async calls wrap them in
the same retry policy as uploads. The key goes to the API only, never to an upload URL, and every upload
URL is registered as a secret the moment it is parsed.

Only a real verdict ends a call with :class:`UploadRejected`: a 4xx carrying the platform's own JSON
error (401/403 are :class:`AuthRefused`, naming where the key came from). A redirect, an HTML page from a
proxy, a 2xx that is not a JSON object or lacks ``upload_url``/``batch_id``, an answer of more than
:data:`MAX_ANSWER_BYTES` are glitches (:class:`UnusableAnswer`, see ``protocol.classify_api_answer``),
retried with the policy's backoff: the daemon forever, ``wodrop upload`` until :class:`UploadGaveUp`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from wodrop.redact import register_public, register_secret
from wodrop.secrets import key_source
from wodrop.units import format_size
from wodrop.upload.protocol import (
    RETRYING,
    AuthRefused,
    JSONTooDeep,
    Retry,
    RetryPolicy,
    RetryState,
    UnusableAnswer,
    UploadRejected,
    classify_api_answer,
    describe_body,
    detail_text,
    json_object,
    load_json,
)
from wodrop.upload.transport import MAX_ANSWER_BYTES, OnRetry, classify_exception, pause, read_bounded

T = TypeVar("T")
#: reads a final answer ``(status, headers, body)``; raises UnusableAnswer for a glitch to retry
Accept = Callable[[int, Mapping[str, str], bytes], T]
_WHAT = "the platform API"


def batches_url(api_url: str) -> str:
    return f"{api_url.rstrip('/')}/v0.2/batches"


def batch_url(api_url: str, batch_id: str) -> URL:
    """``{api_url}/v0.2/batches/{id}`` with the id as one path segment, whatever it holds (``/``, ``?``,
    ``#``, ``.``, ``..``: never another path, query or the batch list). A URL already encoded, so that
    nothing on the way decodes or normalises it."""
    batch_id = str(batch_id)
    if not batch_id:
        raise ValueError("an empty batch id")
    register_public(batch_id)  # the platform's batch id is no secret, even inside an upload URL
    segment = quote(batch_id, safe="")
    if not segment.strip("."):  # "." and ".." would be resolved away by a client, a proxy or the server
        segment = segment.replace(".", "%2E")
    base = URL(batches_url(api_url))
    return base.with_path(f"{base.raw_path}/{segment}", encoded=True)


def auth_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Token {key}", "Content-Type": "application/json", "Accept": "application/json"}


def _answered(status: int | None) -> str:
    return f"{_WHAT} answered HTTP {status}" if status is not None else f"{_WHAT} answered"


def parse_json(status: int, body: bytes, content_type: str | None = None) -> Any:
    """A final API answer (not 401/403: :func:`_call` raises :class:`AuthRefused` for those) -> its JSON,
    or the error it means (see :func:`parse_answer`)."""
    if not 200 <= status <= 299:
        detail = detail_text(body)
        raise UploadRejected(f"{_WHAT} answered HTTP {status}{': ' + detail if detail else ''}")
    try:
        return load_json(body)
    except JSONTooDeep:
        raise UnusableAnswer(f"{_answered(status)} with JSON nested too deeply") from None
    except ValueError:
        kind = describe_body(body, content_type)
        raise UnusableAnswer(f"{_answered(status)} with {kind} instead of JSON") from None


def parse_answer(status: int, body: bytes, content_type: str | None = None) -> dict[str, Any]:
    """A final API answer -> its JSON object. A non-2xx (a verdict, see ``classify_api_answer``):
    :class:`UploadRejected`; a 2xx that is no JSON object: :class:`UnusableAnswer`."""
    data = parse_json(status, body, content_type)
    if not isinstance(data, dict):
        raise UnusableAnswer(f"{_answered(status)} with {describe_body(body, content_type)} instead of a "
                             "JSON object")
    return data


def upload_url_of(data: Mapping[str, Any], *, status: int | None = None) -> str:
    url = data.get("upload_url")
    if url is None or url == "":
        raise UnusableAnswer(f"{_answered(status)} without an upload_url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise UnusableAnswer(f"{_answered(status)} with an upload_url that is not an http(s) URL")
    register_secret(url)
    return url


def parse_created(data: Mapping[str, Any], *, status: int | None = None) -> tuple[str, str]:
    """``(batch_id, upload_url)`` from the answer to ``POST /v0.2/batches/``."""
    url = upload_url_of(data, status=status)
    batch_id = data.get("batch_id", data.get("id"))
    if not isinstance(batch_id, str | int) or isinstance(batch_id, bool) or str(batch_id) == "":
        raise UnusableAnswer(f"{_answered(status)} without a batch_id")
    register_public(str(batch_id))
    return str(batch_id), url


def _object(status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    return parse_answer(status, body, headers.get("Content-Type"))


def _too_large(status: int) -> Retry:
    return Retry("server_error", f"{_answered(status)} with more than {format_size(MAX_ANSWER_BYTES)}, "
                                 f"the most an answer may hold{RETRYING}")


async def _call(http: aiohttp.ClientSession, method: str, url: str | URL, key: str, payload: Any,
                retry: RetryPolicy, on_retry: OnRetry | None, accept: Accept[T], *,
                handled: frozenset[int] = frozenset()) -> T:
    """One API request, retried through connection failures and glitches until ``accept`` takes the
    answer (or raises a verdict); ``handled`` statuses go to ``accept`` as they are. 401/403 raise
    :class:`AuthRefused` saying where the key came from."""
    state = RetryState(retry)
    while True:
        try:
            async with http.request(method, url, json=payload, headers=auth_headers(key),
                                    allow_redirects=False) as resp:
                status, headers = resp.status, resp.headers
                body = b"" if status in (401, 403) else await read_bounded(resp)
        except Exception as exc:
            transient = classify_exception(exc, str(url))
            if transient is None:
                raise
        else:
            if status in (401, 403):
                raise AuthRefused(status, key_source(key))
            if body is None:
                transient = _too_large(status)
            else:
                transient = classify_api_answer(status, headers, body, now=time.time(), what=_WHAT,
                                                handled=handled)
                if transient is None:
                    try:
                        return accept(status, headers, body)
                    except UnusableAnswer as e:
                        transient = e.retry
        await pause(state, transient, on_retry)


async def create_batch(http: aiohttp.ClientSession, api_url: str, key: str, filename: str, *,
                       retry: RetryPolicy | None = None, on_retry: OnRetry | None = None) -> tuple[str, str]:
    """Open a batch for ``filename`` (the archive's stem): ``(batch_id, upload_url)``."""

    def created(status: int, headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
        return parse_created(_object(status, headers, body), status=status)

    return await _call(http, "POST", batches_url(api_url), key, {"filename": filename},
                       retry or RetryPolicy(), on_retry, created)


def _unknown_batch(batch_id: str, headers: Mapping[str, str], body: bytes) -> str:
    """Why a 404 for a batch is the platform's own answer (a sentence naming the batch), or raise
    :class:`UnusableAnswer` for a 404 page from a proxy or a wrong route (a glitch: check api.url)."""
    if json_object(body) is None:
        kind = describe_body(body, headers.get("Content-Type"))
        raise UnusableAnswer(f"{_WHAT} answered HTTP 404 with {kind} (check api.url)")
    detail = detail_text(body)
    return f"the platform does not know batch {batch_id} (HTTP 404{': ' + detail if detail else ''})"


async def get_batch(http: aiohttp.ClientSession, api_url: str, key: str, batch_id: str, *,
                    retry: RetryPolicy | None = None, on_retry: OnRetry | None = None) -> dict[str, Any]:
    """The batch's JSON (``upload_url``, ``status``...); its upload URL is registered as a secret. The
    platform's own 404 is :class:`UploadRejected` naming the batch id (a batch id typed wrong)."""

    def batch(status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        if status == 404:
            raise UploadRejected(_unknown_batch(batch_id, headers, body))
        data = _object(status, headers, body)
        if "upload_url" in data:
            upload_url_of(data, status=status)
        return data

    return await _call(http, "GET", batch_url(api_url, batch_id), key, None, retry or RetryPolicy(), on_retry,
                       batch, handled=frozenset({404}))


async def get_batch_progress(http: aiohttp.ClientSession, api_url: str, key: str, batch_id: str, *,
                             retry: RetryPolicy) -> dict[str, Any] | None:
    """The batch's JSON after its upload, for the follow-up; None when the platform answers 404 with its
    own JSON error (it does not know the batch). A 404 page from a proxy or a wrong route is a glitch."""

    def batch(status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any] | None:
        if status == 404:
            _unknown_batch(batch_id, headers, body)
            return None
        data = _object(status, headers, body)
        if "upload_url" in data:
            upload_url_of(data, status=status)
        return data

    return await _call(http, "GET", batch_url(api_url, batch_id), key, None, retry, None, batch,
                       handled=frozenset({404}))


async def check_key(http: aiohttp.ClientSession, api_url: str, key: str, *,
                    retry: RetryPolicy | None = None, on_retry: OnRetry | None = None) -> bool:
    """List batches once, so a refused key is known at start-up (:class:`AuthRefused`: 401/403 only),
    not at the first upload. The vendor's own client never lists batches, so a platform may not offer
    it: a 404/405 means the check cannot be made (False), never that the key is refused. True: the
    platform answered the list with the key."""

    def listed(status: int, headers: Mapping[str, str], body: bytes) -> bool:
        if status in (404, 405):
            return False
        parse_json(status, body, headers.get("Content-Type"))
        return True

    return await _call(http, "GET", batches_url(api_url), key, None, retry or RetryPolicy(), on_retry, listed,
                       handled=frozenset({404, 405}))
