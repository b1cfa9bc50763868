"""The platform's batch API: ``POST /v0.2/batches/`` opens an upload session, ``GET .../{id}/`` finds it.

Request builders and response parsers are pure (tested without a server); the two async calls wrap
them in the same retry policy as uploads. The key goes to the API only, never to an upload URL, and
every upload URL is registered as a secret the moment it is parsed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from wodrop.redact import register_secret
from wodrop.upload.protocol import (
    AuthRefused,
    RetryPolicy,
    RetryState,
    UploadRejected,
    classify_status,
    detail_text,
)
from wodrop.upload.transport import OnRetry, classify_exception, pause


def batches_url(api_url: str) -> str:
    return f"{api_url.rstrip('/')}/v0.2/batches/"


def batch_url(api_url: str, batch_id: str) -> str:
    return f"{batches_url(api_url)}{quote(str(batch_id), safe='')}/"


def auth_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Token {key}", "Accept": "application/json"}


def parse_answer(status: int, body: bytes) -> dict[str, Any]:
    """A final (non-transient) API answer -> its JSON object, or the error it means."""
    if status in (401, 403):
        raise AuthRefused(status)
    if not 200 <= status <= 299:
        detail = detail_text(body)
        raise UploadRejected(f"the platform API answered HTTP {status}{': ' + detail if detail else ''}")
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise UploadRejected(f"the platform API answered HTTP {status} without a JSON object: check api.url")
    return data


def upload_url_of(data: Mapping[str, Any]) -> str:
    url = data.get("upload_url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise UploadRejected("the platform API gave no usable upload_url")
    register_secret(url)
    return url


def parse_created(data: Mapping[str, Any]) -> tuple[str, str]:
    """``(batch_id, upload_url)`` from the answer to ``POST /v0.2/batches/``."""
    url = upload_url_of(data)
    batch_id = data.get("batch_id", data.get("id"))
    if not isinstance(batch_id, str | int) or isinstance(batch_id, bool) or str(batch_id) == "":
        raise UploadRejected("the platform API gave no batch_id")
    return str(batch_id), url


async def _call(http: aiohttp.ClientSession, method: str, url: str, key: str, payload: Any,
                retry: RetryPolicy, on_retry: OnRetry | None) -> dict[str, Any]:
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
            transient = classify_status(status, headers, body, now=time.time(), what="the platform API")
            if transient is None:
                return parse_answer(status, body)
        await pause(state, transient, on_retry)


async def create_batch(http: aiohttp.ClientSession, api_url: str, key: str, filename: str, *,
                       retry: RetryPolicy | None = None, on_retry: OnRetry | None = None) -> tuple[str, str]:
    """Open a batch for ``filename`` (the archive's stem): ``(batch_id, upload_url)``."""
    data = await _call(http, "POST", batches_url(api_url), key, {"filename": filename},
                       retry or RetryPolicy(), on_retry)
    return parse_created(data)


async def get_batch(http: aiohttp.ClientSession, api_url: str, key: str, batch_id: str, *,
                    retry: RetryPolicy | None = None, on_retry: OnRetry | None = None) -> dict[str, Any]:
    """The batch's JSON (``upload_url``, ``status``...); its upload URL is registered as a secret."""
    data = await _call(http, "GET", batch_url(api_url, batch_id), key, None, retry or RetryPolicy(), on_retry)
    if "upload_url" in data:
        upload_url_of(data)
    return data


async def check_key(http: aiohttp.ClientSession, api_url: str, key: str, *,
                    retry: RetryPolicy | None = None, on_retry: OnRetry | None = None) -> None:
    """List batches once, so a refused key is known at start-up (``AuthRefused``), not at the first
    upload."""
    await _call(http, "GET", batches_url(api_url), key, None, retry or RetryPolicy(), on_retry)
