"""The platform's batch API: ``POST /v0.2/batches/`` opens an upload session, ``GET .../{id}/`` finds it.

Request builders and response parsers are pure (tested without a server); the async calls wrap them in
the same retry policy as uploads. The key goes to the API only, never to an upload URL, and every upload
URL is registered as a secret the moment it is parsed.

Only a real verdict ends a call with :class:`UploadRejected`: a 4xx carrying the platform's own JSON
error (401/403 are :class:`AuthRefused`). A redirect, an HTML page from a proxy, a 2xx that is not a
JSON object or lacks ``upload_url``/``batch_id`` are glitches (:class:`UnusableAnswer`, see
``protocol.classify_api_answer``), retried with the policy's backoff: the daemon forever, ``wodrop
upload`` until :class:`UploadGaveUp`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from wodrop.redact import register_secret
from wodrop.upload.protocol import (
    AuthRefused,
    RetryPolicy,
    RetryState,
    UnusableAnswer,
    UploadRejected,
    classify_api_answer,
    describe_body,
    detail_text,
)
from wodrop.upload.transport import OnRetry, classify_exception, pause

T = TypeVar("T")
#: reads a final answer ``(status, headers, body)``; raises UnusableAnswer for a glitch to retry
Accept = Callable[[int, Mapping[str, str], bytes], T]
_WHAT = "the platform API"


def batches_url(api_url: str) -> str:
    return f"{api_url.rstrip('/')}/v0.2/batches/"


def batch_url(api_url: str, batch_id: str) -> str:
    return f"{batches_url(api_url)}{quote(str(batch_id), safe='')}/"


def auth_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Token {key}", "Accept": "application/json"}


def _answered(status: int | None) -> str:
    return f"{_WHAT} answered HTTP {status}" if status is not None else f"{_WHAT} answered"


def parse_json(status: int, body: bytes, content_type: str | None = None) -> Any:
    """A final API answer -> its JSON, or the error it means (see :func:`parse_answer`)."""
    if status in (401, 403):
        raise AuthRefused(status)
    if not 200 <= status <= 299:
        detail = detail_text(body)
        raise UploadRejected(f"{_WHAT} answered HTTP {status}{': ' + detail if detail else ''}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        kind = describe_body(body, content_type)
        raise UnusableAnswer(f"{_answered(status)} with {kind} instead of JSON") from None


def parse_answer(status: int, body: bytes, content_type: str | None = None) -> dict[str, Any]:
    """A final API answer -> its JSON object. 401/403: :class:`AuthRefused`; another non-2xx (a verdict,
    see ``classify_api_answer``): :class:`UploadRejected`; a 2xx that is no JSON object:
    :class:`UnusableAnswer`."""
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
    return str(batch_id), url


def _object(status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    return parse_answer(status, body, headers.get("Content-Type"))


async def _call(http: aiohttp.ClientSession, method: str, url: str, key: str, payload: Any,
                retry: RetryPolicy, on_retry: OnRetry | None, accept: Accept[T], *,
                handled: frozenset[int] = frozenset()) -> T:
    """One API request, retried through connection failures and glitches until ``accept`` takes the
    answer (or raises a verdict); ``handled`` statuses go to ``accept`` as they are."""
    state = RetryState(retry)
    while True:
        try:
            async with http.request(method, url, json=payload, headers=auth_headers(key),
                                    allow_redirects=False) as resp:
                status, headers, body = resp.status, resp.headers, await resp.read()
        except Exception as exc:
            transient = classify_exception(exc, url)
            if transient is None:
                raise
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


async def get_batch(http: aiohttp.ClientSession, api_url: str, key: str, batch_id: str, *,
                    retry: RetryPolicy | None = None, on_retry: OnRetry | None = None) -> dict[str, Any]:
    """The batch's JSON (``upload_url``, ``status``...); its upload URL is registered as a secret."""

    def batch(status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        data = _object(status, headers, body)
        if "upload_url" in data:
            upload_url_of(data, status=status)
        return data

    return await _call(http, "GET", batch_url(api_url, batch_id), key, None, retry or RetryPolicy(), on_retry,
                       batch)


async def check_key(http: aiohttp.ClientSession, api_url: str, key: str, *,
                    retry: RetryPolicy | None = None, on_retry: OnRetry | None = None) -> None:
    """List batches once, so a refused key is known at start-up (``AuthRefused``), not at the first
    upload. An API without a batch list (404/405) raises :class:`UploadRejected`: the first upload will
    tell instead."""

    def listed(status: int, headers: Mapping[str, str], body: bytes) -> None:
        if status in (404, 405):
            raise UploadRejected(f"{_WHAT} has no batch list (HTTP {status})")
        parse_json(status, body, headers.get("Content-Type"))

    await _call(http, "GET", batches_url(api_url), key, None, retry or RetryPolicy(), on_retry, listed,
                handled=frozenset({404, 405}))
