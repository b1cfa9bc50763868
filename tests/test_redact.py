"""Secrets stay masked whatever form a server echoes them in: the whole upload URL, a query value
alone, a path token alone, percent-encoded, JSON-escaped; and end to end through ``upload_archive``
against a real server on 127.0.0.1 whose error bodies echo the token."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import secrets
import string
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
import structlog
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wodrop import redact
from wodrop.config import UploadConfig
from wodrop.logs import get_logger, setup_logging
from wodrop.redact import MASK, redact_url, redact_value, register_secret
from wodrop.upload.protocol import RetryPolicy, UploadError, UploadGaveUp, UploadRejected, detail_text
from wodrop.upload.transport import make_session
from wodrop.upload.uploader import upload_archive

K = 262144


@pytest.fixture(autouse=True)
def own_secrets() -> Iterator[None]:
    """Each test registers its own secrets; the process's set is put back afterwards, so thousands of
    secrets registered here do not slow down the other test files."""
    state = {k: v for k, v in vars(redact).items() if k.startswith("_") and type(v) in (set, dict)}
    with redact._lock:
        saved = {k: v.copy() for k, v in state.items()}
    yield
    with redact._lock:
        for k, v in state.items():
            v.clear()
            v.update(saved[k])
        if hasattr(redact, "_dirty"):
            redact._dirty = True


def token(n: int = 24) -> str:
    return secrets.token_urlsafe(n)


def receiver_url(host: str = "rx.example:8443") -> tuple[str, str, str]:
    """An upload URL shaped like the reference receiver's: ``/upload/<batch id>?upload_id=<token>``."""
    batch_id, tok = os.urandom(16).hex(), token()
    return f"https://{host}/upload/{batch_id}?upload_id={tok}", batch_id, tok


# ---- each form alone ----------------------------------------------------------------------------


def test_whole_url_keeps_only_the_host() -> None:
    url, batch_id, tok = receiver_url()
    register_secret(url)
    assert redact.redact(f"PUT {url}, at {batch_id} with {tok}.") == (
        f"PUT https://rx.example:8443/{MASK}, at {MASK} with {MASK}.")
    assert redact.redact(f"PUT {url} failed") == f"PUT https://rx.example:8443/{MASK} failed"
    assert redact_url(url) == f"https://rx.example:8443/{MASK}"
    assert redact_url("https://user:pa55word@h.example/x?y=z") == f"https://h.example/{MASK}"


def test_query_value_alone() -> None:
    url, _, tok = receiver_url()
    register_secret(url)
    out = redact.redact(f'{{"detail": "no session with upload_id {tok}"}}')
    assert tok not in out and out == f'{{"detail": "no session with upload_id {MASK}"}}'


def test_query_string_without_scheme_or_host() -> None:
    url, batch_id, tok = receiver_url()
    register_secret(url)
    for text in (f"upload_id={tok}", f"?upload_id={tok}&x=1", f"/upload/{batch_id}?upload_id={tok}"):
        out = redact.redact(f"rejected {text} (bad range)")
        assert tok not in out and batch_id not in out and MASK in out, out


def test_path_token_alone() -> None:
    tok = token(32)
    register_secret(f"https://signed.example/upload/{tok}")
    out = redact.redact(f"session {tok} is closed")
    assert out == f"session {MASK} is closed"


def test_password_in_the_url() -> None:
    register_secret("https://wodrop:Hunter2-xyz@up.example/upload")
    assert redact.redact("login wodrop:Hunter2-xyz refused") == f"login wodrop:{MASK} refused"


def test_percent_encoded() -> None:
    # A signature with +, / and = travels percent-encoded in the URL; servers echo any of its forms.
    sig = base64.b64encode(os.urandom(30)).decode() + "+/="
    encoded = quote(sig, safe="")
    url = f"https://gcs.example/upload/storage/v1/b/bkt/o?uploadType=resumable&sig={encoded}"
    register_secret(url)
    lower_hex = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded)
    assert lower_hex != encoded
    for echoed in (sig, encoded, lower_hex, quote(url, safe=""), quote(url, safe="/:"),
                   quote(encoded, safe=""), quote(quote(url, safe=""), safe="")):
        out = redact.redact(f"bad request for {echoed}!")
        for form in (sig, encoded, lower_hex, quote(encoded, safe="")):
            assert form not in out, (echoed, out)
        assert MASK in out and out.endswith("!"), (echoed, out)


def test_json_escaped() -> None:
    url, batch_id, tok = receiver_url()
    register_secret(url)
    escaped = url.replace("/", "\\/")  # PHP's json_encode, and others
    out = redact.redact(f'{{"error":"cannot resume {escaped}"}}')
    assert tok not in out and batch_id not in out and "rx.example" in out, out
    out = redact.redact(json.dumps({"url": url, "again": escaped}))
    assert tok not in out and batch_id not in out, out
    # a secret with characters JSON escapes
    key = 'k3y"with\\quotes-123'
    register_secret(key)
    assert key not in redact.redact(json.dumps({"key": key})) and MASK in redact.redact(json.dumps(key))


def test_ordinary_words_and_public_values_are_kept() -> None:
    tok = token()
    register_secret("https://up.example/v0.2/batches/upload/resumable-upload-session/1234567890"
                    f"?uploadType=resumable&name=site_a_2024.zip&X-Goog-Date=20240101T120000Z"
                    f"&expires=1700000000&upload_id={tok}")
    text = ("upload v0.2 batches resumable-upload-session resumable site_a_2024.zip 1234567890 "
            "20240101T120000Z 1700000000 2024-01-01T12:00:00Z")
    assert redact.redact(text) == text
    assert redact.redact(f"x {tok} y") == f"x {MASK} y"


def test_overlapping_secrets_are_all_masked() -> None:
    a, b = "AAAAbbbbCCCC1111", "1111ddddEEEE2222"  # a's end is b's start
    register_secret(f"https://h.example/up/{a}")
    register_secret(f"https://h.example/up/{b}")
    out = redact.redact("<AAAAbbbbCCCC1111ddddEEEE2222>")
    assert out == f"<{MASK}>"


def test_unregistered_urls_lose_their_query_string() -> None:
    assert redact.redact("see https://h.example/x?sig=abc") == f"see https://h.example/x?{MASK}"
    assert redact.redact("see https:\\/\\/h.example\\/x?sig=abc") == f"see https:\\/\\/h.example\\/x?{MASK}"
    assert redact.redact("see https://h.example/x and more") == "see https://h.example/x and more"


def test_redact_is_idempotent_and_reaches_nested_values() -> None:
    url, _, tok = receiver_url()
    register_secret(url)
    once = redact.redact(f"a {url} b {tok}")
    assert redact.redact(once) == once
    nested = redact_value({"e": [f"x {tok}", (url,)], "n": 3})
    assert tok not in repr(nested) and nested["n"] == 3


def test_detail_text_redacts_before_cutting() -> None:
    """A token straddling the 300-character cut must not leave its first half behind."""
    tok = token(32)
    register_secret(f"https://signed.example/upload/{tok}")
    for pad in range(270, 300):
        body = json.dumps({"detail": "x" * pad + " " + tok}).encode()
        assert tok[:8] not in detail_text(body), pad


def test_many_secrets_stay_fast_and_lines_do_not_backtrack() -> None:
    for _ in range(1000):
        register_secret(receiver_url()[0])
    url, batch_id, tok = receiver_url()
    register_secret(url)
    line = f'event="upload_failed" batch=site_20240101 error="HTTP 400: {tok} at {url}" ' * 4
    redact.redact(line)  # compiles the set once
    started = time.perf_counter()
    for _ in range(200):
        out = redact.redact(line)
    assert time.perf_counter() - started < 2.0  # ~0.05 s here; a per-secret loop or a rebuild is far slower
    assert tok not in out and batch_id not in out
    # hostile lines: a scan stays linear
    started = time.perf_counter()
    for text in ("http://" * 20000, "https://a" + "/a" * 50000, "a" * 100000, "%" * 100000, "\\/" * 50000):
        redact.redact(text)
    assert time.perf_counter() - started < 2.0


def test_a_public_batch_id_shows_and_the_url_stays_masked() -> None:
    """The platform's batch id is how people find a batch on the platform: logs and reports show it,
    also once the upload URL that holds it in its path is registered, in either order. The URL and its
    token stay masked."""
    for public_first in (False, True):
        url, batch_id, tok = receiver_url()
        if public_first:
            redact.register_public(batch_id)
        register_secret(url)
        if not public_first:  # a random-looking path segment: masked until it is known to be public
            assert redact.redact(f"batch {batch_id}") == f"batch {MASK}"
        redact.register_public(batch_id)
        assert redact.redact(f"batch {batch_id}: PUT {url} failed, upload_id={tok}") == (
            f"batch {batch_id}: PUT https://rx.example:8443/{MASK} failed, upload_id={MASK}")
        assert redact.redact(f"/upload/{batch_id}?upload_id={tok}") == f"/upload/{batch_id}?upload_id={MASK}"
        assert redact_value({"remote_batch_id": batch_id}) == {"remote_batch_id": batch_id}


def test_a_url_whose_only_secret_is_a_public_id_is_still_masked_whole() -> None:
    batch_id = os.urandom(16).hex()
    url = f"https://up.example/upload/{batch_id}"
    register_secret(url)
    redact.register_public(batch_id)
    assert redact.redact(f"id {batch_id} at {url}.") == f"id {batch_id} at https://up.example/{MASK}."


def test_a_public_id_never_unmasks_a_query_value_or_a_secret() -> None:
    """A platform that gives the upload token as its batch id does not get the token into the logs."""
    url, _, tok = receiver_url()
    register_secret(url)
    key = token()
    register_secret(key)
    redact.register_public(tok)
    redact.register_public(key)
    assert redact.redact(f"{tok} {key}") == f"{MASK} {MASK}"


# ---- property: a registered URL's token never survives ------------------------------------------

_ALPHABET = string.ascii_letters + string.digits + "-_"
_tokens = st.text(_ALPHABET, min_size=16, max_size=48).filter(
    lambda t: any(c.isdigit() or c.isupper() for c in t))  # random-looking, not a lowercase slug
_sigs = st.text(_ALPHABET + "+/=.~", min_size=8, max_size=48).filter(
    lambda t: any(c.isalpha() for c in t) and any(c.isdigit() or c.isupper() for c in t))
_ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "percent": lambda s: quote(s, safe=""),
    "percent-keep-slash": lambda s: quote(s),
    "json": lambda s: json.dumps(s)[1:-1],
    "json-slashes": lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path_token=_tokens,
    sig=_sigs,
    host=st.sampled_from(["up.example", "127.0.0.1:8443", "storage.example.com"]),
    echo=st.sampled_from(["url", "path_token", "sig", "query"]),
    encoding=st.sampled_from(sorted(_ENCODINGS)),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
)
def test_a_registered_urls_token_never_survives(path_token: str, sig: str, host: str, echo: str,
                                                encoding: str, before: str, after: str) -> None:
    url = f"https://{host}/upload/{path_token}?upload_id={quote(sig, safe='')}"
    register_secret(url)
    echoed = {"url": url, "path_token": path_token, "sig": sig, "query": f"upload_id={quote(sig, safe='')}"}
    encode = _ENCODINGS[encoding]
    out = redact.redact(before + encode(echoed[echo]) + after)
    for secret in (path_token, sig):
        for enc in _ENCODINGS.values():
            assert enc(secret) not in out, (secret, out)


# ---- end to end: a real server echoing the token in its errors ----------------------------------


class EchoServer:
    """Answers every PUT with ``status`` and a body echoing the upload URL's secrets."""

    def __init__(self, status: int, body: Callable[[str, str, str], str]) -> None:
        self.status, self.body, self.puts = status, body, 0

    async def put(self, request: web.Request) -> web.Response:
        await request.read()
        self.puts += 1
        text = self.body(str(request.url), request.match_info["token"], request.query.get("upload_id", ""))
        return web.Response(status=self.status, text=text, content_type="application/json")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(UploadConfig()) as session:
        yield session


async def serve(server: EchoServer) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_put("/upload/{token}", server.put)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


BODIES: dict[str, Callable[[str, str, str], str]] = {
    "upload-id-only": lambda url, path, uid: json.dumps({"error": {"message": f"unknown upload_id {uid}"}}),
    "path-token-only": lambda url, path, uid: json.dumps({"detail": f"session {path} not found"}),
    "query-string": lambda url, path, uid: f"bad request: ?upload_id={uid}&part=1",
    "json-escaped-url": lambda url, path, uid: '{"msg": "cannot resume ' + url.replace("/", "\\/") + '"}x',
    "percent-encoded-url": lambda url, path, uid: f"redirect=/login?next={quote(url, safe='')}",
    "token-at-the-cut": lambda url, path, uid: json.dumps({"detail": "x" * 284 + " " + uid + " " + path}),
}


@pytest.mark.parametrize("status", [400, 503])
@pytest.mark.parametrize("shape", sorted(BODIES))
async def test_upload_errors_never_carry_the_token(tmp_path: Path, http: aiohttp.ClientSession,
                                                   status: int, shape: str) -> None:
    server = EchoServer(status, BODIES[shape])
    runner, base = await serve(server)
    path_token, upload_id = token(32), token(24)
    upload_url = f"{base}/upload/{path_token}?upload_id={upload_id}"
    archive = tmp_path / "a.zip"
    archive.write_bytes(os.urandom(1000))
    retries: list[str] = []
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    log = get_logger("test")
    try:
        with pytest.raises(UploadRejected if status == 400 else UploadGaveUp) as caught:
            await upload_archive(http, archive, upload_url, size=1000, chunk_size=K,
                                 retry=RetryPolicy(0.001, 0.01, max_retries=2),
                                 on_retry=lambda cause, delay, message: retries.append(message))
        log.error("upload_failed", error=str(caught.value), reason=caught.value.reason)
        try:
            raise caught.value
        except UploadError:
            log.exception("upload_failed_with_traceback")
    finally:
        structlog.reset_defaults()
        import logging

        logging.basicConfig(force=True)
        await runner.cleanup()
    assert server.puts >= 1
    message = str(caught.value)
    assert f"HTTP {status}" in message  # the server's answer is there, only masked
    texts = {"message": message, "log": redact.redact(out.getvalue()), "raw log": out.getvalue(),
             **{f"retry {i}": m for i, m in enumerate(retries)}}
    for where, text in texts.items():
        for secret in (path_token, upload_id, quote(upload_id, safe=""), path_token[:12], upload_id[:12]):
            assert secret not in text, (where, secret, text)
    if shape != "token-at-the-cut":
        assert MASK in message


async def test_the_echo_server_really_echoes(http: aiohttp.ClientSession) -> None:
    """Guards the test above: without redaction, its bodies do carry the tokens."""
    server = EchoServer(400, BODIES["upload-id-only"])
    runner, base = await serve(server)
    try:
        async with http.put(f"{base}/upload/abc?upload_id=plain-token-123", data=b"") as resp:
            assert "plain-token-123" in await resp.text()
    finally:
        await runner.cleanup()
