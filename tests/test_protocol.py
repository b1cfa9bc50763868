"""The pure resumable-upload core: chunk plans, headers, answers, retry classification, backoff."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
from dataclasses import dataclass

import google_crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st
from wodrop.upload.protocol import (
    CHUNK_ALIGN,
    AuthRefused,
    JSONTooDeep,
    ResumableUpload,
    Retry,
    RetryPolicy,
    RetryState,
    ServerCopy,
    SessionExpired,
    UnusableAnswer,
    UploadGaveUp,
    UploadRejected,
    backoff_delay,
    check_server_copy,
    classify_api_answer,
    classify_status,
    content_range,
    describe_body,
    detail_text,
    json_object,
    load_json,
    parse_range,
    parse_retry_after,
    parse_server_copy,
)

K = CHUNK_ALIGN
NOW = 1_700_000_000.0


@dataclass(frozen=True)
class Digest:
    size: int
    md5: str | None
    crc32c: str | None


def digest_of(data: bytes) -> Digest:
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    return Digest(len(data), md5, crc)


def ok(up: ResumableUpload, saved: int | None) -> Retry | None:
    """Answer the pending request with 308 and ``Range: bytes=0-(saved-1)`` (no Range when None)."""
    headers = {} if saved is None else {"Range": f"bytes=0-{saved - 1}"}
    return up.receive(308, headers, b"", now=NOW)


def plan(total: int, chunk: int) -> list[str]:
    """The Content-Range of every request of an upload where the server saves everything it gets."""
    up, ranges = ResumableUpload(total, chunk), []
    while not up.complete:
        req = up.next_request()
        ranges.append(req.headers["Content-Range"])
        if req.end == total:
            assert up.receive(200, {}, b"", now=NOW) is None
        else:
            assert ok(up, req.end) is None
    return ranges


# ---- chunk plans and headers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (0, ["bytes */0"]),
        (1, ["bytes 0-0/1"]),
        (K - 1, [f"bytes 0-{K - 2}/{K - 1}"]),
        (K, [f"bytes 0-{K - 1}/{K}"]),
        (2 * K + 1, [f"bytes 0-{2 * K - 1}/{2 * K + 1}", f"bytes {2 * K}-{2 * K}/{2 * K + 1}"]),
    ],
)
def test_chunk_plan(total: int, expected: list[str]) -> None:
    assert plan(total, 2 * K) == expected


@given(total=st.integers(0, 40 * K), chunks=st.integers(1, 8))
def test_every_chunk_but_the_last_is_aligned_and_the_plan_covers_the_file(total: int, chunks: int) -> None:
    up, covered = ResumableUpload(total, chunks * K), 0
    while not up.complete:
        req = up.next_request()
        assert req.start == covered
        if req.end < total:
            assert req.length % K == 0 and req.length > 0
            assert ok(up, req.end) is None
        else:
            assert up.receive(200, {}, b"", now=NOW) is None
        covered = req.end
    assert covered == total


def test_request_headers_carry_no_authorization() -> None:
    req = ResumableUpload(10, K).next_request()
    assert req.headers == {"Content-Type": "application/octet-stream", "Content-Range": "bytes 0-9/10"}


def test_content_range_formats() -> None:
    assert content_range(0, 262144, 1000000) == "bytes 0-262143/1000000"
    assert content_range(5, 5, 9) == "bytes */9"


def test_invalid_chunk_size_is_refused() -> None:
    with pytest.raises(ValueError):
        ResumableUpload(10, K + 1)


# ---- interpreting answers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "saved"),
    [(None, 0), ("bytes=0-0", 1), ("bytes=0-262143", K), ("BYTES=0-9 ", 10)],
)
def test_parse_range(header: str | None, saved: int) -> None:
    assert parse_range(header) == saved


@pytest.mark.parametrize(
    "header", ["bytes=1-9", "bytes 0-9", "bytes=0-", "0-9", "bytes=0-x", "", "bytes=0-9/10"]
)
def test_parse_range_malformed(header: str) -> None:
    with pytest.raises(ValueError):
        parse_range(header)


def test_continues_from_the_servers_range_not_from_what_was_sent() -> None:
    up = ResumableUpload(4 * K, 2 * K)
    up.next_request()
    assert ok(up, K) is None  # the server kept only half of the chunk
    assert up.offset == K
    assert up.next_request().headers["Content-Range"] == f"bytes {K}-{3 * K - 1}/{4 * K}"


def test_308_without_range_means_nothing_saved() -> None:
    up = ResumableUpload(4 * K, 2 * K)
    up.next_request()
    retry = ok(up, None)
    assert retry is not None and retry.cause == "server_error"
    assert up.offset == 0
    assert up.next_request().headers["Content-Range"] == f"bytes 0-{2 * K - 1}/{4 * K}"


def test_malformed_range_is_a_transient_server_fault() -> None:
    up = ResumableUpload(4 * K, 2 * K)
    up.next_request()
    retry = up.receive(308, {"Range": "bytes=0-zz"}, b"", now=NOW)
    assert retry is not None and "malformed Range" in retry.message


def test_range_beyond_the_archive_is_rejected() -> None:
    up = ResumableUpload(K, K)
    up.next_request()
    with pytest.raises(UploadRejected):
        ok(up, K + 1)


def test_resume_starts_with_a_status_query_and_follows_the_server() -> None:
    up = ResumableUpload(8 * K, 2 * K, known_offset=4 * K)
    req = up.next_request()
    assert req.query and req.headers["Content-Range"] == f"bytes */{8 * K}" and req.length == 0
    assert ok(up, 2 * K) is None  # the DB's hint was ahead of the server: the server wins
    assert up.next_request().start == 2 * K


def test_no_status_query_before_a_first_byte_was_sent() -> None:
    for hint in (None, 0):
        up = ResumableUpload(4 * K, 2 * K, known_offset=hint)
        assert not up.next_request().query


def test_status_query_after_a_first_span_failed() -> None:
    """The connection dropped during the first span: the server keeps what arrived (GCS saves in 256
    KiB units as they come), so ask before sending it all again."""
    up = ResumableUpload(4 * K, 2 * K)
    up.next_request()
    up.failed()
    req = up.next_request()
    assert req.query
    assert up.receive(308, {"Range": f"bytes=0-{K - 1}"}, b"", now=0.0) is None
    req = up.next_request()
    assert (req.start, req.end, req.query) == (K, 3 * K, False)


def test_status_query_after_a_failure_once_bytes_are_confirmed() -> None:
    up = ResumableUpload(4 * K, 2 * K)
    up.next_request()
    ok(up, 2 * K)
    up.next_request()
    up.failed()
    assert up.next_request().query


def test_status_query_answered_complete() -> None:
    up = ResumableUpload(4 * K, 2 * K, known_offset=2 * K)
    up.next_request()
    assert up.receive(200, {}, json.dumps({"size": str(4 * K)}).encode(), now=NOW) is None
    assert up.complete and up.offset == 4 * K and up.server_copy == ServerCopy(4 * K)


def test_zero_byte_archive_is_a_single_empty_put() -> None:
    up = ResumableUpload(0, K)
    req = up.next_request()
    assert req.length == 0 and req.headers["Content-Range"] == "bytes */0"
    assert up.receive(201, {}, b"{}", now=NOW) is None and up.complete


def test_every_byte_held_but_not_finished_is_retried_with_a_query() -> None:
    up = ResumableUpload(2 * K, 2 * K)
    up.next_request()
    assert ok(up, 2 * K) is not None
    assert up.next_request().query


def test_completion_with_a_wrong_size_is_rejected() -> None:
    up = ResumableUpload(K, K)
    up.next_request()
    with pytest.raises(UploadRejected, match="the server's copy differs"):
        up.receive(200, {}, b'{"size": "5"}', now=NOW)


def test_checksum_mismatch_is_rejected() -> None:
    data = b"x" * 1000
    good = digest_of(data)
    bad = digest_of(b"y" * 1000)
    check_server_copy(ServerCopy(1000, good.md5, good.crc32c), 1000, good)
    check_server_copy(ServerCopy(), 1000, good)  # nothing reported: nothing to check
    with pytest.raises(UploadRejected, match="md5 differs"):
        check_server_copy(ServerCopy(1000, bad.md5, good.crc32c), 1000, good)
    with pytest.raises(UploadRejected, match="crc32c differs"):
        check_server_copy(ServerCopy(1000, good.md5, bad.crc32c), 1000, good)


@pytest.mark.parametrize("status", [404, 410, 499])
def test_gone_sessions(status: int) -> None:
    up = ResumableUpload(K, K)
    up.next_request()
    with pytest.raises(SessionExpired):
        up.receive(status, {}, b"", now=NOW)


@pytest.mark.parametrize("status", [400, 401, 403, 411, 413, 422])
def test_other_4xx_are_rejections_with_the_servers_detail(status: int) -> None:
    up = ResumableUpload(K, K)
    up.next_request()
    with pytest.raises(UploadRejected, match=f"HTTP {status}: chunk too small") as e:
        up.receive(status, {}, b'{"detail": "chunk too small"}', now=NOW)
    assert e.value.reason == str(e.value)


@pytest.mark.parametrize(
    ("status", "cause"),
    [(408, "timeout"), (429, "throttled"), (500, "server_error"), (502, "server_error"),
     (503, "server_error"), (599, "server_error")],
)
def test_transient_statuses(status: int, cause: str) -> None:
    up = ResumableUpload(4 * K, 2 * K)
    up.next_request()
    ok(up, 2 * K)
    up.next_request()
    retry = up.receive(status, {}, b"", now=NOW)
    assert retry is not None and retry.cause == cause
    assert up.next_request().query  # after any error, ask the server where it stands


@pytest.mark.parametrize("status", [200, 201, 308, 301, 400, 401, 403, 404])
def test_non_transient_statuses_are_not_retried(status: int) -> None:
    assert classify_status(status, {}, b"", now=NOW) is None


def test_429_honours_retry_after() -> None:
    retry = classify_status(429, {"Retry-After": "7"}, b"", now=NOW)
    assert retry == Retry("throttled", "the server is throttling (HTTP 429)", 7.0)


def test_server_detail_is_redacted_and_short() -> None:
    from wodrop.redact import register_secret

    register_secret("https://up.example/upload?upload_id=SECRETTOKEN123")
    body = b'{"error": {"message": "bad session https://up.example/upload?upload_id=SECRETTOKEN123"}}'
    text = detail_text(body)
    assert "SECRETTOKEN123" not in text and text.startswith("bad session")
    assert len(detail_text(b"z" * 10_000)) <= 300


# ---- Retry-After and backoff ---------------------------------------------------------------------


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after("0", NOW) == 0.0
    assert parse_retry_after("-5", NOW) == 0.0
    assert parse_retry_after(email.utils.formatdate(NOW + 30, usegmt=True), NOW) == pytest.approx(30)
    assert parse_retry_after(email.utils.formatdate(NOW - 30, usegmt=True), NOW) == 0.0
    assert parse_retry_after("999999999", NOW) == 3600.0
    for bad in (None, "", "soon", "nan", "Wed, 99 Foo 2015 07:28:00 GMT"):
        assert parse_retry_after(bad, NOW) is None


@given(
    failures=st.integers(1, 10_000),
    initial=st.floats(0.001, 10),
    cap=st.floats(0.001, 600),
    rand=st.floats(0, 1, exclude_max=True),
)
def test_backoff_is_full_jitter_within_bounds(failures: int, initial: float, cap: float, rand: float) -> None:
    delay = backoff_delay(failures, initial, cap, rand)
    ceiling = cap if failures > 60 else min(cap, initial * 2 ** (failures - 1))
    assert 0 <= delay <= ceiling


def test_backoff_grows_then_caps() -> None:
    assert [backoff_delay(n, 1.0, 10.0, 0.999999) for n in (1, 2, 3, 4, 5, 6)] == pytest.approx(
        [1, 2, 4, 8, 10, 10], rel=1e-5
    )
    assert backoff_delay(3, 1.0, 10.0, 0.0) == 0.0


def test_retry_state_gives_up_after_consecutive_failures_and_progress_resets() -> None:
    state = RetryState(RetryPolicy(initial_delay=1, max_delay=5, max_retries=2))
    boom = Retry("connection", "cannot reach h: connection refused")
    state.failed(boom, 0.5)
    state.progressed()
    state.failed(boom, 0.5)
    assert state.failed(Retry("throttled", "slow down", 42.0), 0.5) == 42.0
    with pytest.raises(UploadGaveUp, match="cannot reach h: connection refused, gave up after 3 attempts"):
        state.failed(boom, 0.5)


def test_retry_forever_when_max_retries_is_none() -> None:
    state = RetryState(RetryPolicy(max_retries=None))
    for _ in range(1000):
        assert 0 <= state.failed(Retry("timeout", "t"), 0.3) <= 60


def test_auth_refused_message() -> None:
    assert str(AuthRefused(401, "DEEPOMATIC_API_KEY")) == \
        "the platform refused the API key (HTTP 401): check DEEPOMATIC_API_KEY"
    assert str(AuthRefused(403)) == "the platform refused the API key (HTTP 403): check the API key"


# ---- platform API answers: glitch or verdict ------------------------------------------------------

PROXY_PAGE = (b"<!DOCTYPE html>\n<html><head><title>502 &amp; Bad\n Gateway</title></head>"
              b"<body>nginx</body></html>")


def api_retry(status: int, body: bytes = b"", **headers: str) -> Retry | None:
    return classify_api_answer(status, headers, body, now=NOW)


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_api_2xx_is_for_the_caller_to_read(status: int) -> None:
    assert api_retry(status, b"<html>whatever</html>") is None  # content: UnusableAnswer from the parser


@pytest.mark.parametrize("status", [401, 403])
def test_api_auth_refusals_are_for_the_caller(status: int) -> None:
    assert api_retry(status, b'{"detail": "Invalid token."}') is None  # AuthRefused
    assert api_retry(status, PROXY_PAGE) is None


@pytest.mark.parametrize("status", [400, 405, 409, 410, 413, 415, 422, 499])
def test_api_4xx_with_the_platforms_json_error_is_a_verdict(status: int) -> None:
    assert api_retry(status, b'{"detail": "filename is too long"}') is None
    assert api_retry(status, b'{"filename": ["This field is required."]}') is None


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308])
def test_api_redirects_are_glitches(status: int) -> None:
    retry = api_retry(status, b"", Location="https://sso.example/login?ticket=ST-0123456789abcdef#frag")
    assert retry is not None and retry.cause == "server_error"
    assert retry.message == (f"the platform API answered HTTP {status}, a redirect to "
                             "https://sso.example/login (check api.url); retrying")
    bare = api_retry(status)
    assert bare is not None and bare.message == (f"the platform API answered HTTP {status}, a redirect "
                                                 "(check api.url); retrying")


@pytest.mark.parametrize(("status", "body", "ctype", "kind"), [
    (400, PROXY_PAGE, "text/html; charset=utf-8", "an HTML page ('502 & Bad Gateway')"),
    (400, b"<html><body>no title</body></html>", None, "an HTML page"),
    (413, b"Request Entity Too Large", "text/plain", "a text/plain body that is not JSON"),
    (409, b"", None, "an empty body"),
    (422, b'["not", "an", "object"]', "application/json", "a JSON array"),
    (404, PROXY_PAGE, "text/html", "an HTML page ('502 & Bad Gateway')"),
])
def test_api_4xx_without_the_platforms_json_error_is_a_glitch(
    status: int, body: bytes, ctype: str | None, kind: str
) -> None:
    retry = classify_api_answer(status, {"Content-Type": ctype} if ctype else {}, body, now=NOW)
    hint = " (check api.url)" if status == 404 else ""
    assert retry == Retry("server_error", f"the platform API answered HTTP {status} with {kind}, not the "
                                          f"platform's own error{hint}; retrying")


def test_api_404_is_never_a_verdict_even_in_json() -> None:
    retry = api_retry(404, b'{"detail": "Not found."}')
    assert retry == Retry("server_error", "the platform API answered HTTP 404: Not found. (check api.url); "
                                          "retrying")


@pytest.mark.parametrize(("status", "cause"), [(408, "timeout"), (429, "throttled"), (500, "server_error"),
                                               (502, "server_error"), (503, "server_error")])
def test_api_transient_statuses_stay_transient(status: int, cause: str) -> None:
    for body in (b"", b'{"detail": "busy"}', PROXY_PAGE):
        retry = api_retry(status, body)
        assert retry is not None and retry.cause == cause


@pytest.mark.parametrize("status", [100, 199, 600, 999])
def test_api_odd_statuses_are_glitches(status: int) -> None:
    retry = api_retry(status, b'{"detail": "?"}')
    assert retry is not None and retry.cause == "server_error"


def test_api_statuses_the_caller_handles() -> None:
    assert api_retry(404) is not None
    assert classify_api_answer(404, {}, b"", now=NOW, handled=frozenset({404, 405})) is None


def test_api_glitch_messages_are_redacted() -> None:
    from wodrop.redact import register_secret

    register_secret("https://sso.example/login/tok-9f8e7d6c5b4a39281706")
    retry = api_retry(302, Location="https://sso.example/login/tok-9f8e7d6c5b4a39281706?next=/")
    assert retry is not None and "tok-9f8e7d6c5b4a39281706" not in retry.message
    title = b"<html><title>session https://sso.example/login/tok-9f8e7d6c5b4a39281706 expired</title></html>"
    assert "tok-9f8e7d6c5b4a39281706" not in describe_body(title)


def test_describe_body() -> None:
    assert describe_body(b"  \n") == "an empty body"
    assert describe_body(b"<html><head><title>" + b"x" * 500 + b"</title>") == f"an HTML page ('{'x' * 79}…')"
    assert describe_body(b"<!-- proxy --><p>hi</p>") == "an HTML page"
    assert describe_body(b"\xff\xfe garbage") == "a body that is not JSON"
    assert describe_body(b"{}") == "a JSON object"
    assert describe_body(b'"ok"') == "the JSON value \"ok\""


def test_unusable_answer_is_a_retry_and_its_give_up_message_reads_well() -> None:
    glitch = UnusableAnswer("the platform API answered HTTP 200 without an upload_url")
    assert not isinstance(glitch, UploadRejected)
    assert glitch.retry == Retry("server_error", "the platform API answered HTTP 200 without an upload_url; "
                                                 "retrying")
    state = RetryState(RetryPolicy(initial_delay=0.01, max_delay=0.01, max_retries=1))
    state.failed(glitch.retry, 0.5)
    with pytest.raises(UploadGaveUp) as e:
        state.failed(glitch.retry, 0.5)
    assert str(e.value) == ("the platform API answered HTTP 200 without an upload_url, "
                            "gave up after 2 attempts")
    with pytest.raises(UploadGaveUp) as e:  # no retry allowed: one attempt, said in the singular
        RetryState(RetryPolicy(max_retries=0)).failed(glitch.retry, 0.5)
    assert str(e.value) == "the platform API answered HTTP 200 without an upload_url, gave up after 1 attempt"


def test_json_nested_past_the_parser_is_bad_json_not_a_crash() -> None:
    deep = b"[" * 100_000
    with pytest.raises(JSONTooDeep):
        load_json(deep)
    assert json_object(deep) is None and describe_body(deep) == "JSON nested too deeply"
    assert detail_text(b'{"detail": ' + deep).startswith('{"detail": [[[')
    assert parse_server_copy(deep) == ServerCopy()
