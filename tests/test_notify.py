"""Webhook notifications in process: the real delivery task, a real aiohttp client and a real listener on
127.0.0.1 (tests/helpers/webhook.py), a real state DB. End-to-end with `wodrop run`: test_notify_daemon.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers.webhook import WebhookThread
from prometheus_client import generate_latest
from wodrop import __version__, metrics, notify
from wodrop.config import Config, ConfigError, NotifyConfig, load_config
from wodrop.logs import setup_logging
from wodrop.notify import EVENTS, Notifier, StallWatch, Webhook
from wodrop.redact import redact, register_secret
from wodrop.runtime import Runtime, UploadProgress
from wodrop.state import StateDB
from wodrop.upload.protocol import RetryPolicy
from wodrop.upload.transport import make_session

FAST = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_retries=2)
SECRET = b"webhook-secret-7c1e9d2a4b"


def sample(event: str, outcome: str) -> float:
    labels = {"event": event, "outcome": outcome}
    return metrics.REGISTRY.get_sample_value("wodrop_notifications_total", labels) or 0.0


def wait_until(predicate: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def until(predicate: Any, what: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def delivering(tmp_path: Path, notifier: Notifier) -> AsyncIterator[Runtime]:
    """A runtime whose ``notify`` task runs (as in the daemon's TaskGroup) until the block ends."""
    db = StateDB(tmp_path / "state.sqlite3")
    rt = Runtime(cfg=Config(), db=db, notifier=notifier)
    async with make_session(Config().upload) as http:
        task = asyncio.create_task(notify.deliver(rt, http), name="notify")
        try:
            yield rt
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            db.close()


@contextlib.contextmanager
def log_output() -> Iterator[io.StringIO]:
    """The daemon's JSON log lines, rendered (and so redacted) as in production."""
    out = io.StringIO()
    setup_logging("debug", "json", stream=out)
    try:
        yield out
    finally:
        structlog.reset_defaults()
        logging.basicConfig(force=True)


def webhook(url: str, *, secret: bytes | None = SECRET, timeout: float = 5,
            retry: RetryPolicy = FAST) -> Webhook:
    return Webhook(url, secret, timeout, retry)


# ---- the envelope ---------------------------------------------------------------------------------


async def test_each_event_is_posted_as_a_signed_envelope(tmp_path: Path) -> None:
    report = {"work_order": "WO_1", "stage": "validation", "failed_at": "2026-01-01T00:00:00Z",
              "errors": [{"code": "no_images", "file": None, "message": "no images"}]}
    with WebhookThread() as hook:
        notifier = Notifier(EVENTS, webhook(hook.url))
        sent_before = sample("work_order_failed", "sent")
        async with delivering(tmp_path, notifier) as rt:
            notifier.emit("work_order_failed", work_order="WO_1", stage="validation", report=report)
            await until(lambda: hook.requests, "the POST")
            await until(lambda: sample("work_order_failed", "sent") == sent_before + 1, "the count")
            instance = rt.db.instance_id()
    (req,) = hook.requests
    assert req.path == "/hooks/wodrop"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Wodrop-Event"] == "work_order_failed"
    assert req.signed_with(SECRET) and not req.signed_with(b"another-secret-0123456")
    doc = req.json
    assert set(doc) == {"id", "event", "time", "instance", "host", "version", "data"}
    assert re.fullmatch(r"[0-9a-f]{32}", doc["id"]) and req.headers["X-Wodrop-Delivery"] == doc["id"]
    assert doc["event"] == "work_order_failed"
    assert doc["time"].endswith("Z") and datetime.fromisoformat(doc["time"]).utcoffset() is not None
    assert (doc["instance"], doc["host"], doc["version"]) == (instance, socket.gethostname(), __version__)
    assert doc["data"] == {"work_order": "WO_1", "stage": "validation", "report": report}
    assert req.body.isascii()


async def test_without_a_secret_the_body_is_unsigned(tmp_path: Path) -> None:
    with WebhookThread() as hook:
        notifier = Notifier(EVENTS, webhook(hook.url, secret=None))
        async with delivering(tmp_path, notifier):
            notifier.emit("intake_resumed", reason="the inbox cannot be read", paused_for=3.0)
            await until(lambda: hook.requests, "the POST")
    assert "X-Wodrop-Signature" not in hook.requests[0].headers


def test_only_selected_events_are_queued() -> None:
    notifier = Notifier({"batch_rejected"}, webhook("http://127.0.0.1:9/"))
    notifier.emit("work_order_failed", work_order="WO_1")
    notifier.emit("batch_rejected", batch="b1", reason="no")
    notifier.emit("intake_paused", reason="disk full")
    queued = [notifier.queue.get_nowait() for _ in range(notifier.queue.qsize())]
    assert [(n.event, n.payload) for n in queued] == [("batch_rejected", {"batch": "b1", "reason": "no"})]
    with pytest.raises(ValueError, match="unknown notification event"):
        notifier.emit("work_order_lost")  # type: ignore[arg-type]


def test_without_a_webhook_nothing_is_queued() -> None:
    notifier = notify.from_config(NotifyConfig(events=["work_order_failed"]))
    notifier.emit("work_order_failed", work_order="WO_1")
    assert notifier.webhook is None and notifier.queue.empty()


def test_a_huge_report_is_cut_to_its_first_errors() -> None:
    notifier = Notifier(EVENTS, webhook("http://127.0.0.1:9/"))
    errors = [{"code": "unsupported_file", "file": f"f{i}.txt", "message": "no"} for i in range(250)]
    notifier.emit("work_order_failed", work_order="WO_1", report={"work_order": "WO_1", "errors": errors})
    report = notifier.queue.get_nowait().payload["report"]
    assert report["errors"] == errors[: notify.MAX_REPORT_ERRORS] and report["errors_total"] == 250


def test_every_series_exists_before_the_first_event() -> None:
    text = generate_latest(metrics.REGISTRY).decode()
    for event in EVENTS:
        for outcome in ("sent", "failed", "dropped"):
            assert f'wodrop_notifications_total{{event="{event}",outcome="{outcome}"}}' in text


# ---- delivery failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(("statuses", "attempts", "outcome"), [
    ([503, 503, 503], 3, "failed"),          # 5xx: tried 1 + max_retries times, then dropped
    ([429, 500, 204], 3, "sent"),            # throttled and a server error, then through
    ([400], 1, "failed"),                    # any other 4xx: never tried again
    ([302], 1, "failed"),                    # a redirect is not followed (the signature stays here)
])
async def test_retries_on_transient_answers_only_then_counts_the_outcome(
    tmp_path: Path, statuses: list[int], attempts: int, outcome: str
) -> None:
    with WebhookThread(answer=lambda n: statuses[min(n, len(statuses)) - 1]) as hook:
        notifier = Notifier(EVENTS, webhook(hook.url))
        before = sample("batch_rejected", outcome)
        with log_output() as out:
            async with delivering(tmp_path, notifier):
                notifier.emit("batch_rejected", batch="b1", reason="refused")
                await until(lambda: sample("batch_rejected", outcome) == before + 1, f"{outcome} counted")
        requests = hook.requests
    assert len(requests) == attempts
    assert len({r.headers["X-Wodrop-Delivery"] for r in requests}) == 1  # one event, tried again
    assert len({r.body for r in requests}) == 1
    logged = [json.loads(line) for line in out.getvalue().splitlines()]
    failed = [e for e in logged if e["event"] == "notification_failed"]
    if outcome == "failed":
        assert len(failed) == 1 and f"HTTP {statuses[-1]}" in failed[0]["error"]
        assert failed[0]["notification"] == "batch_rejected"
    else:
        assert failed == []


async def test_an_unreachable_webhook_is_retried_then_dropped(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notifier = Notifier(EVENTS, webhook(f"http://127.0.0.1:{port}/hook"))
    before = sample("upload_stalled", "failed")
    with log_output() as out:
        async with delivering(tmp_path, notifier):
            notifier.emit("upload_stalled", batch="b1")
            await until(lambda: sample("upload_stalled", "failed") == before + 1, "the failure counted")
    retries = [json.loads(line) for line in out.getvalue().splitlines() if "notification_retry" in line]
    assert len(retries) == FAST.max_retries


async def test_a_hanging_webhook_never_blocks_emit_and_drops_are_counted(tmp_path: Path) -> None:
    with WebhookThread(answer=lambda n: None) as hook:
        notifier = Notifier(EVENTS, webhook(hook.url, timeout=0.2, retry=RetryPolicy(0.01, 0.01, 0)),
                            maxsize=3)
        dropped, failed = sample("intake_paused", "dropped"), sample("intake_paused", "failed")
        with log_output() as out:
            async with delivering(tmp_path, notifier):
                for i in range(10):  # synchronous: nothing is taken from the queue meanwhile
                    notifier.emit("intake_paused", reason=f"pause {i}")
                assert sample("intake_paused", "dropped") == dropped + 7
                await until(lambda: sample("intake_paused", "failed") == failed + 3, "3 timeouts")
        assert len(hook.requests) == 3
        assert [r.json["data"]["reason"] for r in hook.requests] == ["pause 0", "pause 1", "pause 2"]
    assert out.getvalue().count('"notifications_dropped"') == 1  # once per burst


async def test_a_payload_that_is_not_json_fails_alone(tmp_path: Path) -> None:
    with WebhookThread() as hook:
        notifier = Notifier(EVENTS, webhook(hook.url))
        failed = sample("upload_stalled", "failed")
        async with delivering(tmp_path, notifier):
            notifier.emit("upload_stalled", batch="b1", rate=float("nan"))
            notifier.emit("upload_stalled", batch="b2", folder="WO_\udcff", where=Path("/x"))
            await until(lambda: hook.requests, "the second event")
        assert sample("upload_stalled", "failed") == failed + 1
        (req,) = hook.requests
    assert req.json["data"] == {"batch": "b2", "folder": "WO_\udcff", "where": "/x"}


async def test_secrets_never_reach_a_body_or_the_log(tmp_path: Path) -> None:
    api_key = "api-key-3f9a8b7c6d5e4f"
    upload_url = "http://127.0.0.1:1/upload/b1?upload_id=UPLOADTOKEN0123456789abcdef"
    register_secret(api_key)  # as the daemon does when it learns them
    register_secret(upload_url)
    hook_secret = "hook-secret-0a1b2c3d4e5f6a7b"
    echo = f"bad request: {api_key} {upload_url} {hook_secret}".encode()
    with WebhookThread(answer=lambda n: 400 if n == 1 else 204, body=echo) as hook:
        notifier = notify.from_config(NotifyConfig(webhook_url=hook.url + "?token=HOOKTOKEN98765432",
                                                   webhook_secret=hook_secret))  # type: ignore[arg-type]
        with log_output() as out:
            async with delivering(tmp_path, notifier):
                text = f"PUT {upload_url} with key {api_key} (signing with {hook_secret})"
                notifier.emit("work_order_failed", work_order="WO_1", report={"errors": [{"message": text}]})
                notifier.emit("upload_stalled", batch="b1", last_error=text, url=upload_url)
                await until(lambda: len(hook.requests) == 2, "both events")
    everything = b"".join(r.body + json.dumps(r.headers).encode() for r in hook.requests).decode()
    everything += out.getvalue()
    assert "notification_failed" in out.getvalue()  # the echoing answer was logged, redacted
    for secret in (api_key, "UPLOADTOKEN0123456789abcdef", hook_secret, "HOOKTOKEN98765432"):
        assert secret not in everything
    assert hook.requests[1].signed_with(hook_secret.encode())


# ---- configuration --------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wodrop.yaml"
    path.write_text(text)
    return path


def test_config_defaults_and_values(tmp_path: Path) -> None:
    assert NotifyConfig().webhook_url is None and NotifyConfig().events is None
    assert NotifyConfig().stall_after == 900 and NotifyConfig().max_retries == 5
    cfg = load_config(write(tmp_path, "notify:\n  webhook_url: https://hooks.example.com/w\n"
                                      "  events: [work_order_failed, upload_stalled]\n  stall_after: 5m\n"),
                      environ={"WODROP__NOTIFY__WEBHOOK_SECRET": "from-the-environment-123"})
    assert cfg.notify.events == ["work_order_failed", "upload_stalled"] and cfg.notify.stall_after == 300
    assert cfg.notify.webhook_secret is not None
    assert cfg.notify.webhook_secret.get_secret_value() == "from-the-environment-123"
    notifier = notify.from_config(cfg.notify)
    assert notifier.events == {"work_order_failed", "upload_stalled"}
    assert notify.from_config(NotifyConfig(webhook_url="http://h.example/x")).events == set(EVENTS)


@pytest.mark.parametrize(("text", "message"), [
    ("notify: {webhook_url: 'ftp://h.example/x'}", r"notify.webhook_url: expected a URL like https://"),
    ("notify: {webhook_url: 'https://u:PASSWORD123@h.example/'}",
     r"notify.webhook_url: must not contain a user"),
    ("notify: {webhook_url: 'http://127.0.0.1:99999/x?t=PASSWORD123'}",
     r"notify.webhook_url: expected a URL like https://hooks.example.com/wodrop \(port out of range"),
    ("notify: {webhook_url: 'http://[::1/x?t=PASSWORD123'}",
     r"notify.webhook_url: expected a URL like .* \(invalid IPv6 URL\)"),
    ("notify: {webhook_url: 'http://:8080/x?t=PASSWORD123'}", r"notify.webhook_url: .*\(no host name\)"),
    ("notify: {webhook_url: \"http://h.example/x\\tPASSWORD123\"}",
     r"notify.webhook_url: expected a URL like"),
    ("notify: {events: [work_order_failed, disk_on_fire]}", r"notify.events: unknown event 'disk_on_fire' "
                                                            r"\(known: work_order_failed, batch_rejected"),
    ("notify: {webhook_secret: SHORTPW123}", r"notify.webhook_secret: expected at least 16 characters"),
    ("notify: {webhook_secret: 'long-enough-secret-0123', webhook_secret_file: /x}",
     r"notify: set notify.webhook_secret or notify.webhook_secret_file, not both"),
    ("notify: {stall_after: 0}", r"notify.stall_after: at least 1s"),
    ("notify: {timeout: 0}", r"notify.timeout: at least 100ms"),
    ("notify: {max_retries: 100}", r"notify.max_retries: .*20"),
])
def test_config_errors_name_the_key_and_never_echo_a_secret(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_config(write(tmp_path, text + "\n"), environ={})
    for secret in ("PASSWORD123", "SHORTPW123", "long-enough-secret-0123"):
        assert secret not in str(e.value)


def test_the_secret_never_shows_in_the_config() -> None:
    cfg = load_config(None, {"WODROP__NOTIFY__WEBHOOK_SECRET": "do-not-show-me-0123456"})
    for text in (repr(cfg), str(cfg), cfg.model_dump_json()):
        assert "do-not-show-me-0123456" not in text


def test_a_webhook_url_that_cannot_be_used_is_a_config_error_exit_2(tmp_path: Path) -> None:
    """Caught when the config is read, not at the first event."""
    config = write(tmp_path, "notify: {webhook_url: 'http://127.0.0.1:99999/x'}\n")
    run = subprocess.run([sys.executable, "-m", "wodrop", "validate", "-c", str(config), str(tmp_path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and "notify.webhook_url: expected a URL like" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_the_secret_file_is_read_at_start_and_registered_for_redaction(tmp_path: Path) -> None:
    secret_file = tmp_path / "hook.secret"
    secret_file.write_text("file-secret-9e8d7c6b5a\n")
    cfg = NotifyConfig(webhook_url="http://h.example/x", webhook_secret_file=secret_file)
    notifier = notify.from_config(cfg)
    assert notifier.webhook is not None and notifier.webhook.secret == b"file-secret-9e8d7c6b5a"
    assert "file-secret-9e8d7c6b5a" not in redact("signing with file-secret-9e8d7c6b5a")
    secret_file.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        notify.from_config(cfg)
    with pytest.raises(ConfigError, match=r"hook.missing: cannot read it"):
        notify.from_config(cfg.model_copy(update={"webhook_secret_file": tmp_path / "hook.missing"}))


# ---- the runtime's transitions and stalled uploads ------------------------------------------------


def drain(notifier: Notifier) -> list[tuple[str, dict[str, Any]]]:
    queued = [notifier.queue.get_nowait() for _ in range(notifier.queue.qsize())]
    return [(n.event, n.payload) for n in queued]


def test_intake_pause_and_key_refusal_are_told_on_a_change_only(tmp_path: Path) -> None:
    notifier = Notifier(EVENTS, webhook("http://127.0.0.1:9/"))
    db = StateDB(tmp_path / "state.sqlite3")
    rt = Runtime(cfg=Config(), db=db, notifier=notifier)
    rt.intake_paused = None  # not paused: nothing to tell
    rt.intake_paused = "the spool disk is full"
    rt.intake_paused = "the spool disk is full"  # set again on every pass of the batcher
    rt.intake_paused = "the inbox cannot be read"
    rt.intake_paused = None
    rt.intake_paused = None
    events = drain(notifier)
    assert [(e, p.get("reason")) for e, p in events] == [
        ("intake_paused", "the spool disk is full"), ("intake_paused", "the inbox cannot be read"),
        ("intake_resumed", "the inbox cannot be read")]
    assert events[-1][1]["paused_for"] >= 0 and rt.intake_paused is None
    rt.auth_error = "the platform refused the API key (HTTP 401)"
    rt.auth_error = "the platform refused the API key (HTTP 401)"  # every retry, once a minute
    rt.auth_error = None
    rt.auth_error = "the platform refused the API key (HTTP 403)"
    assert drain(notifier) == [("api_key_refused", {"error": "the platform refused the API key (HTTP 401)"}),
                               ("api_key_refused", {"error": "the platform refused the API key (HTTP 403)"})]
    assert rt.auth_error == "the platform refused the API key (HTTP 403)"
    db.close()


def progress(batch_id: int, progressed_at: float, sent: int = 0) -> UploadProgress:
    p = UploadProgress(batch_id, f"batch-{batch_id}", 1000, sent)
    p.progressed_at = progressed_at
    return p


def test_an_upload_that_sends_nothing_new_is_reported_once_per_stall() -> None:
    watch = StallWatch(stall_after=60)
    a, b = progress(1, 0.0), progress(2, 50.0)
    assert watch.check([a, b], now=59.0) == []
    assert watch.check([a, b], now=60.0) == [a]
    assert watch.check([a, b], now=100.0) == []  # the same stall: told once
    assert watch.check([a, b], now=110.0) == [b]
    a.progressed_at = 105.0  # it moved again, then stopped again
    assert watch.check([a, b], now=164.0) == []
    assert watch.check([a, b], now=165.0) == [a]
    assert watch.check([b], now=500.0) == []  # a finished; b's stall was told already
    assert watch.check([a, b], now=500.0) == [a]  # a batch seen again is a new upload


def test_bytes_sent_again_after_a_failure_are_not_progress() -> None:
    p = UploadProgress(1, "batch-1", 1000, sent=100)
    assert (p.furthest, p.progressed_at, p.rate) == (100, p.started, 0.0)
    p.update(300)
    first = p.progressed_at
    assert p.furthest == 300 and first >= p.started and p.rate > 0
    p.update(100)  # a retry starts again from the server's offset
    p.update(300)
    assert (p.furthest, p.progressed_at, p.sent) == (300, first, 300)
    p.update(301)
    assert p.furthest == 301 and p.progressed_at >= first
    p.restart()  # the session expired: a new one sends from byte 0, and that is progress again
    assert (p.furthest, p.sent) == (0, 0) and p.progressed_at >= first
    p.update(200)
    assert p.furthest == 200


def test_the_rate_counts_new_bytes_over_the_last_seconds() -> None:
    """Not what a retry sends again, and nothing once the upload stopped moving."""
    now = time.monotonic()
    p = UploadProgress(1, "batch-1", 10_000, sent=0, started=now - 60)
    p.samples = [(now - 30, 1000), (now - 10.5, 2000), (now - 5, 4000), (now - 0.1, 7000)]
    p.furthest = 7000
    assert p.rate == pytest.approx(500.0, rel=0.05)  # 5000 new bytes in the last 10 s
    p.samples = [(now - 30, 1000), (now - 20, 7000)]  # nothing new for 20 s
    assert p.rate == 0.0
