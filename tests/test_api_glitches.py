"""Platform API glitches are retried, never taken as a verdict (faults issue, finding 14).

A 200 without ``upload_url``, a proxy's HTML page, a redirect: none of them says anything about the
batch, so they must not send work orders to failed/. A real aiohttp server on 127.0.0.1 answers the
scripted glitches first, then a good answer; only a 4xx carrying the platform's own JSON error is a
verdict (``UploadRejected``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from helpers.files import sha256_file
from wodrop.config import UploadConfig, load_config
from wodrop.secrets import resolve_api_key
from wodrop.upload import api
from wodrop.upload.protocol import AuthRefused, RetryPolicy, UploadGaveUp, UploadRejected
from wodrop.upload.transport import make_session

REPO = Path(__file__).resolve().parent.parent
FAST = RetryPolicy(initial_delay=0.01, max_delay=0.02, max_retries=10)
KEY = "glitch-key-4b8f2a9c1d"
HTML_PAGE = ("<!DOCTYPE html><html><head><title>Proxy sign-in</title></head>"
             "<body><form>Sign in to continue</form></body></html>")

Answer = Callable[[], web.Response]


def ok_empty_object() -> web.Response:  # (a) 200 with a JSON object but no upload_url
    return web.json_response({}, status=200)


def ok_html_page() -> web.Response:  # (b) 200 with a proxy's HTML page
    return web.Response(status=200, text=HTML_PAGE, content_type="text/html")


def redirect() -> web.Response:  # (c) 302 to a login page, with a token in its query
    return web.Response(status=302, headers={"Location": "/sso/login?ticket=ST-1234567890abcdef"})


def ok_without_batch_id() -> web.Response:
    return web.json_response({"upload_url": "http://127.0.0.1:9/upload/x?upload_id=abcdef0123456789"})


def ok_json_list() -> web.Response:
    return web.json_response([], status=200)


def no_content() -> web.Response:
    return web.Response(status=204)


def bad_request_html() -> web.Response:  # a proxy's 400 page, not the platform's JSON error
    return web.Response(status=400, text=HTML_PAGE, content_type="text/html")


def not_found_json() -> web.Response:  # a wrong route: not a verdict on the batch
    return web.json_response({"detail": "Not found."}, status=404)


def deep_json() -> web.Response:  # nested past the parser's recursion limit: a glitch, not a crash
    return web.Response(status=200, text="[" * 100_000, content_type="application/json")


def huge_json() -> web.Response:  # a valid answer padded past MAX_ANSWER_BYTES (with a Content-Length)
    return web.json_response({"batch_id": "b-7", "upload_url": "http://127.0.0.1:9/u?upload_id=x0123456789",
                              "pad": "x" * (api.MAX_ANSWER_BYTES + 1)})


GLITCHES: dict[str, tuple[Answer, str]] = {
    "200 {}": (ok_empty_object, "the platform API answered HTTP 200 without an upload_url"),
    "200 html": (ok_html_page, "the platform API answered HTTP 200 with an HTML page ('Proxy sign-in') "
                               "instead of JSON"),
    "302": (redirect, "the platform API answered HTTP 302, a redirect to /sso/login (check api.url)"),
    "200 no batch_id": (ok_without_batch_id, "the platform API answered HTTP 200 without a batch_id"),
    "200 list": (ok_json_list, "the platform API answered HTTP 200 with a JSON array instead of a JSON "
                               "object"),
    "204": (no_content, "the platform API answered HTTP 204 with an empty body instead of JSON"),
    "400 html": (bad_request_html, "the platform API answered HTTP 400 with an HTML page ('Proxy sign-in'), "
                                   "not the platform's own error"),
    "404 json": (not_found_json, "the platform API answered HTTP 404: Not found. (check api.url)"),
    "200 deep": (deep_json, "the platform API answered HTTP 200 with JSON nested too deeply"),
    "200 huge": (huge_json, "the platform API answered HTTP 200 with more than 4.0 MiB, the most an answer "
                            "may hold"),
}


class GlitchyApi:
    """``POST /v0.2/batches`` and ``GET /v0.2/batches/{id}`` (the vendor's paths) answer ``glitches`` in
    turn, then ``good``; every other path counts as a followed redirect (it must never be requested)."""

    def __init__(self, good: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None) -> None:
        self.glitches: list[Answer] = []
        self.forever: Answer | None = None
        self.requests: list[str] = []
        self.elsewhere: list[str] = []
        self.good = good or self._created
        self.url = ""

    async def _created(self, request: web.Request) -> web.Response:
        return web.json_response({"batch_id": "b-7", "upload_url": self.upload_url, "status": "waiting"},
                                 status=201)

    @property
    def upload_url(self) -> str:
        return f"{self.url}/upload/b-7?upload_id=tok0123456789abc"

    async def batches(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        assert request.headers.get("Authorization") == f"Token {KEY}"
        await request.read()
        if self.forever is not None:
            return self.forever()
        if self.glitches:
            return self.glitches.pop(0)()
        return await self.good(request)

    async def other(self, request: web.Request) -> web.Response:
        self.elsewhere.append(request.path)
        return web.Response(status=200, text=HTML_PAGE, content_type="text/html")


@pytest.fixture
async def glitchy() -> AsyncIterator[GlitchyApi]:
    server = GlitchyApi()
    async with serve(server) as url:
        server.url = url
        yield server


class serve:  # used like a function: ``async with serve(server) as url``
    def __init__(self, server: GlitchyApi) -> None:
        app = web.Application()
        app.router.add_route("*", "/v0.2/batches", server.batches)
        app.router.add_route("*", "/v0.2/batches/{batch_id}", server.batches)
        app.router.add_route("*", "/{tail:.*}", server.other)
        self.runner = web.AppRunner(app)

    async def __aenter__(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(UploadConfig()) as session:
        yield session


class Recorder:
    def __init__(self) -> None:
        self.retries: list[tuple[str, float, str]] = []

    def on_retry(self, cause: str, delay: float, message: str) -> None:
        self.retries.append((cause, delay, message))


# ---- create_batch against a glitching server ------------------------------------------------------


async def test_glitches_are_retried_until_a_good_answer(glitchy: GlitchyApi,
                                                        http: aiohttp.ClientSession) -> None:
    glitchy.glitches = [ok_empty_object, ok_html_page, redirect]
    rec = Recorder()
    created = await api.create_batch(http, glitchy.url, KEY, "batch-1", retry=FAST, on_retry=rec.on_retry)
    assert created == ("b-7", glitchy.upload_url)
    assert glitchy.requests == ["POST /v0.2/batches"] * 4
    assert glitchy.elsewhere == []  # the redirect was not followed
    assert [c for c, _, _ in rec.retries] == ["server_error"] * 3
    messages = [m for _, _, m in rec.retries]
    for (_, expected), message in zip((GLITCHES["200 {}"], GLITCHES["200 html"], GLITCHES["302"]), messages,
                                      strict=True):
        assert message == expected + "; retrying"
    assert "ST-1234567890abcdef" not in " ".join(messages)  # a redirect's query never shows


@pytest.mark.parametrize("glitch", sorted(GLITCHES))
async def test_each_glitch_is_retried(glitchy: GlitchyApi, http: aiohttp.ClientSession, glitch: str) -> None:
    answer, expected = GLITCHES[glitch]
    glitchy.glitches = [answer, answer]
    rec = Recorder()
    assert await api.create_batch(http, glitchy.url, KEY, "b", retry=FAST, on_retry=rec.on_retry)
    assert len(glitchy.requests) == 3
    assert [m for _, _, m in rec.retries] == [expected + "; retrying"] * 2


@pytest.mark.parametrize("glitch", sorted(GLITCHES))
async def test_a_glitch_that_lasts_gives_up_it_is_no_verdict(
    glitchy: GlitchyApi, http: aiohttp.ClientSession, glitch: str
) -> None:
    """The one-shot CLI's policy (max_retries) ends in UploadGaveUp: not UploadRejected, which would
    mark the batch failed as if the platform had refused it."""
    answer, expected = GLITCHES[glitch]
    glitchy.forever = answer
    with pytest.raises(UploadGaveUp) as e:
        await api.create_batch(http, glitchy.url, KEY, "b", retry=RetryPolicy(0.01, 0.02, max_retries=2))
    assert not isinstance(e.value, UploadRejected)
    assert str(e.value) == f"{expected}, gave up after 3 attempts"
    assert len(glitchy.requests) == 3 and glitchy.elsewhere == []


async def test_the_daemon_policy_keeps_retrying(glitchy: GlitchyApi, http: aiohttp.ClientSession) -> None:
    glitchy.glitches = [ok_empty_object, ok_html_page, redirect] * 5
    policy = RetryPolicy(initial_delay=0.001, max_delay=0.002, max_retries=None)
    assert await api.create_batch(http, glitchy.url, KEY, "b", retry=policy) == ("b-7", glitchy.upload_url)
    assert len(glitchy.requests) == 16


@pytest.mark.parametrize(("status", "body"), [
    (400, {"filename": ["Ensure this field has no more than 64 characters."]}),
    (409, {"detail": "A batch with this filename is already being uploaded."}),
    (413, {"error": {"message": "archive too large"}}),
    (422, {"detail": "unprocessable"}),
])
async def test_the_platforms_own_json_error_is_a_verdict(
    glitchy: GlitchyApi, http: aiohttp.ClientSession, status: int, body: dict[str, Any]
) -> None:
    glitchy.forever = lambda: web.json_response(body, status=status)
    with pytest.raises(UploadRejected, match=rf"^the platform API answered HTTP {status}: "):
        await api.create_batch(http, glitchy.url, KEY, "b", retry=FAST)
    assert len(glitchy.requests) == 1  # a verdict is not retried


async def test_get_batch_retries_glitches(glitchy: GlitchyApi, http: aiohttp.ClientSession) -> None:
    async def batch(request: web.Request) -> web.Response:
        return web.json_response({"batch_id": "b-7", "status": "waiting", "upload_url": glitchy.upload_url})

    glitchy.good = batch
    glitchy.glitches = [redirect, ok_html_page, lambda: web.json_response({"upload_url": "/relative"})]
    rec = Recorder()
    data = await api.get_batch(http, glitchy.url, KEY, "b-7", retry=FAST, on_retry=rec.on_retry)
    assert data["batch_id"] == "b-7" and len(glitchy.requests) == 4
    assert rec.retries[-1][2] == ("the platform API answered HTTP 200 with an upload_url that is not an "
                                  "http(s) URL; retrying")


async def test_get_batch_names_a_batch_the_platform_does_not_know_and_stops(
    glitchy: GlitchyApi, http: aiohttp.ClientSession
) -> None:
    """The platform's own 404 for ``GET /v0.2/batches/{id}`` is a verdict about that id (a batch id typed
    wrong), not a wrong api.url; a 404 page from elsewhere stays a glitch."""
    glitchy.forever = not_found_json
    with pytest.raises(UploadRejected) as e:
        await api.get_batch(http, glitchy.url, KEY, "b-typo", retry=FAST)
    assert str(e.value) == "the platform does not know batch b-typo (HTTP 404: Not found.)"
    assert glitchy.requests == ["GET /v0.2/batches/b-typo"]
    glitchy.forever = lambda: web.Response(status=404, text="<h1>Not Found</h1>", content_type="text/html")
    with pytest.raises(UploadGaveUp, match=r"HTTP 404 with an HTML page \(check api.url\), gave up after 2 "
                                           r"attempts$"):
        await api.get_batch(http, glitchy.url, KEY, "b-7", retry=RetryPolicy(0.01, 0.02, max_retries=1))


@pytest.mark.parametrize("batch_id", ["..", ".", "...", "../../_receiver/stats?x=1#y", "a/b", "%2e%2e",
                                      "b 7"])
async def test_a_batch_id_is_one_path_segment_whatever_it_holds(
    glitchy: GlitchyApi, http: aiohttp.ClientSession, batch_id: str
) -> None:
    """``wodrop upload --batch-id`` takes any text: it only ever names ``/v0.2/batches/{id}`` (never the
    batch list, another path or a query), with nothing decoded or resolved on the way."""
    glitchy.forever = not_found_json
    with pytest.raises(UploadRejected, match="the platform does not know batch "):
        await api.get_batch(http, glitchy.url, KEY, batch_id, retry=FAST)
    assert glitchy.requests == [f"GET /v0.2/batches/{batch_id}"] and glitchy.elsewhere == []
    with pytest.raises(ValueError, match="empty batch id"):
        api.batch_url(glitchy.url, "")


async def test_a_huge_answer_is_not_read_past_the_bound(glitchy: GlitchyApi,
                                                        http: aiohttp.ClientSession) -> None:
    """A streamed answer (no Content-Length) far past MAX_ANSWER_BYTES: the client stops reading at the
    bound and drops the connection, so the server cannot push it all (nor fill the client's memory)."""
    total, written, finished = 16 * api.MAX_ANSWER_BYTES, [0], asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        piece = b'{"status": "processing", "pad": "' + b"x" * 65_536
        try:
            while written[0] < total:
                await resp.write(piece)
                written[0] += len(piece)
                piece = b"x" * 65_536
            await resp.write(b'"}')
        except (ConnectionError, RuntimeError):  # the client went away
            pass
        finally:
            finished.set()
        return resp

    glitchy.good = endless
    with pytest.raises(UploadGaveUp, match=r"HTTP 200 with more than 4.0 MiB, the most an answer may hold, "
                                           r"gave up after 1 attempt$"):
        await api.get_batch(http, glitchy.url, KEY, "b-7", retry=RetryPolicy(0.01, 0.02, max_retries=0))
    await asyncio.wait_for(finished.wait(), 30)  # the server's writes fail once the connection is dropped
    assert written[0] < total // 4


@pytest.mark.parametrize(("env", "source"), [
    ({"DEEPOMATIC_API_KEY": "deepo-refused-123456"}, "DEEPOMATIC_API_KEY"),
    ({"CUSTOMER_API_KEY": "customer-refused-123456"}, "CUSTOMER_API_KEY"),
    ({}, "api.api_key_file ({file})"),
])
async def test_a_refused_key_says_where_it_came_from_never_the_key(
    rx_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, env: dict[str, str], source: str
) -> None:
    rx = rx_factory(api_key="the-right-key-123456")
    key_file = tmp_path / "api-key"
    key_file.write_text("file-refused-123456\n")
    key_file.chmod(0o600)
    key = resolve_api_key(load_config(None, {"WODROP__API__API_KEY_FILE": str(key_file)}), env)
    assert key is not None
    with pytest.raises(AuthRefused) as e:
        await api.create_batch(http, rx.url, key, "b", retry=FAST)
    assert str(e.value) == ("the platform refused the API key (HTTP 401): check "
                            + source.format(file=key_file))
    assert key not in str(e.value)


@pytest.mark.parametrize("answer", [
    lambda: web.Response(status=405, text="Method Not Allowed"),
    lambda: web.Response(status=404, text="<h1>Not Found</h1>", content_type="text/html"),
    lambda: web.json_response({"detail": "Not found."}, status=404),
])
async def test_check_key_without_a_batch_list_cannot_check_not_retried(
    glitchy: GlitchyApi, http: aiohttp.ClientSession, answer: Answer
) -> None:
    """The vendor's client never lists batches: a 404/405 there means the check cannot be made, never
    that the key is refused (False, at once), while a 401/403 is a refusal."""
    glitchy.forever = answer
    assert await api.check_key(http, glitchy.url, KEY, retry=FAST) is False
    assert glitchy.requests == ["GET /v0.2/batches"]


@pytest.mark.parametrize("status", [401, 403])
async def test_check_key_refused_only_by_401_403(glitchy: GlitchyApi, http: aiohttp.ClientSession,
                                                 status: int) -> None:
    glitchy.forever = lambda: web.json_response({"detail": "Invalid token."}, status=status)
    with pytest.raises(AuthRefused):
        await api.check_key(http, glitchy.url, KEY, retry=FAST)


async def test_check_key_retries_a_proxy_page(glitchy: GlitchyApi, http: aiohttp.ClientSession) -> None:
    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"count": 0, "results": []})

    glitchy.good = listing
    glitchy.glitches = [redirect, ok_html_page]
    assert await api.check_key(http, glitchy.url, KEY, retry=FAST) is True
    assert len(glitchy.requests) == 3


# ---- end to end: `wodrop upload` through a glitching API ----------------------------------------------


async def test_wodrop_upload_survives_api_glitches(tmp_path: Path, rx_factory: Any) -> None:
    """The API glitches twice (a 200 without upload_url, a proxy's HTML page), then answers with a
    real session of the reference receiver: the CLI retries, uploads, exits 0."""
    rx = rx_factory(api_key=KEY)

    async def forward(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as s, s.post(
            f"{rx.url}/v0.2/batches", data=await request.read(),
            headers={"Authorization": request.headers["Authorization"], "Content-Type": "application/json"},
        ) as resp:
            return web.Response(status=resp.status, body=await resp.read(), content_type="application/json")

    server = GlitchyApi(good=forward)
    server.glitches = [ok_empty_object, ok_html_page]
    archive = tmp_path / "batch-e2e.zip"
    archive.write_bytes(os.urandom(300_000))
    async with serve(server) as url:
        server.url = url
        config = tmp_path / "wodrop.yaml"
        config.write_text(yaml.safe_dump({
            "paths": {"state": str(tmp_path / "state")}, "api": {"url": url}, "log": {"format": "json"},
            "upload": {"chunk_size": "256KiB", "retry_initial_delay": "0.01s", "retry_max_delay": "0.05s",
                       "max_retries": 5},
        }))
        env = {k: v for k, v in os.environ.items() if k not in ("CUSTOMER_API_KEY", "DEEPOMATIC_API_KEY")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wodrop", "upload", "-c", str(config), str(archive), "--no-progress",
            cwd=REPO, env={**env, "CUSTOMER_API_KEY": KEY},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    stdout, stderr = out.decode(), err.decode()
    assert proc.returncode == 0, stderr
    assert server.requests == ["POST /v0.2/batches"] * 3
    batch_id = stdout.split("to batch ")[1].split()[0]
    assert sha256_file(rx.store / f"{batch_id}.zip") == sha256_file(archive)
    retries = [json.loads(line) for line in stderr.splitlines()
               if line.startswith("{") and '"upload_retry"' in line]
    assert [r["message"] for r in retries] == [GLITCHES["200 {}"][1] + "; retrying",
                                               GLITCHES["200 html"][1] + "; retrying"]
    assert KEY not in stdout + stderr


async def test_an_upload_server_answer_past_the_bound_is_a_dropped_connection(
    http: aiohttp.ClientSession,
) -> None:
    """The upload server's answers are bounded too: a PUT answered with a body far past
    MAX_ANSWER_BYTES is not read whole (the protocol sees a connection failure: query, then resume)."""
    from wodrop.upload.transport import put

    total, written = 16 * api.MAX_ANSWER_BYTES, [0]

    async def flood(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=308)
        await resp.prepare(request)
        try:
            while written[0] < total:
                await resp.write(b"x" * 65_536)
                written[0] += 65_536
        except (ConnectionError, RuntimeError):
            pass
        return resp

    app = web.Application()
    app.router.add_put("/upload", flood)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async def body() -> AsyncIterator[bytes]:
            yield b"0123456789"

        with pytest.raises(aiohttp.ClientPayloadError, match="more than"):
            await put(http, f"http://127.0.0.1:{port}/upload", body(), 10,
                      {"Content-Range": "bytes 0-9/100"})
    finally:
        await runner.cleanup()
    assert written[0] < total // 2
