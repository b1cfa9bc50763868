"""The thin aiohttp layer under the protocol: one client session per process, PUTs, failure mapping.

Why these settings: keep-alive saves a TLS handshake per chunk; ``allow_redirects=False`` because a
308 here means "resume incomplete", not "go elsewhere"; ``trust_env`` so site proxies
(``HTTPS_PROXY``) work; TLS is always verified, against ``upload.ca_bundle`` when a site re-signs TLS.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
from collections.abc import AsyncIterable, Callable, Mapping

import aiohttp
from yarl import URL

from wodrop import __version__
from wodrop.config import UploadConfig
from wodrop.redact import redact
from wodrop.upload.protocol import Retry, RetryPolicy, RetryState

OnRetry = Callable[[str, float, str], None]
#: the most an answer of the API or the upload server may hold (a batch's answer with thousands of
#: errors is well below): a larger one is not read further (a glitch, retried), so a hostile or broken
#: server cannot fill the memory
MAX_ANSWER_BYTES = 4 * 1024 * 1024


async def read_bounded(resp: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES) -> bytes | None:
    """The answer's body, or None when it holds more than ``limit`` bytes: then no more is read (nor held)
    and the connection is dropped rather than drained."""
    if resp.content_length is not None and resp.content_length > limit:
        resp.close()
        return None
    body = bytearray()
    async for piece in resp.content.iter_any():
        body += piece
        if len(body) > limit:
            resp.close()
            return None
    return bytes(body)


def retry_policy(cfg: UploadConfig, *, forever: bool = False) -> RetryPolicy:
    """The ``upload.retry_*`` keys as a policy; the daemon retries ``forever``, ``wodrop upload`` not."""
    return RetryPolicy(cfg.retry_initial_delay, cfg.retry_max_delay, None if forever else cfg.max_retries)


def make_session(cfg: UploadConfig) -> aiohttp.ClientSession:
    """The process's HTTP client; must be created inside the running event loop and closed by it."""
    ctx = ssl.create_default_context(cafile=str(cfg.ca_bundle) if cfg.ca_bundle else None)
    timeout = aiohttp.ClientTimeout(total=None, connect=cfg.connect_timeout, sock_read=cfg.read_timeout)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx),
        timeout=timeout,
        trust_env=True,
        auto_decompress=False,
        headers={"User-Agent": f"wodrop/{__version__}"},
    )


async def put(http: aiohttp.ClientSession, url: str, body: AsyncIterable[bytes] | None, length: int,
              headers: Mapping[str, str]) -> tuple[int, Mapping[str, str], bytes]:
    """One PUT of ``length`` bytes streamed from ``body`` (None: an empty status query):
    (status, headers, response body). The explicit Content-Length keeps it a plain, unchunked body."""
    sent = {**headers, "Content-Length": str(length)}
    async with http.put(url, data=body if length else b"", headers=sent, allow_redirects=False) as resp:
        answer = await read_bounded(resp)
        if answer is None:  # a connection failure as far as the protocol cares: query, then resume
            raise aiohttp.ClientPayloadError(f"an answer of more than {MAX_ANSWER_BYTES} bytes")
        return resp.status, resp.headers, answer


def _host(url: str) -> str:
    try:
        u = URL(url)
    except (ValueError, TypeError):
        return "the server"
    if u.port is None or u.is_default_port():
        return u.host or "the server"
    return f"{u.host}:{u.port}"


def classify_exception(exc: BaseException, url: str) -> Retry | None:
    """A network failure worth retrying -> :class:`Retry`; anything else -> None (let it raise)."""
    host = _host(url)
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        # strerror of a refused connect is "Connect call failed (...)"; errno says it better
        why = os.strerror(err.errno) if err.errno and err.errno > 0 else err.strerror
        return Retry("connection", f"cannot reach {host}: {(why or type(err).__name__).lower()}")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return Retry("timeout", f"{host} did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | ConnectionError):
        return Retry("connection", f"the connection to {host} dropped ({type(exc).__name__})")
    return None


async def pause(state: RetryState, retry: Retry, on_retry: OnRetry | None) -> None:
    """Count a failure (raising UploadGaveUp past the limit), tell the caller, sleep the backoff."""
    delay = state.failed(retry, random.random())
    if on_retry is not None:
        on_retry(retry.cause, delay, redact(retry.message))
    await asyncio.sleep(delay)
