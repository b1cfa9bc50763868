"""Webhook notifications end to end: a real `wodrop run`, the reference receiver, and a webhook listener on
127.0.0.1 (tests/helpers/webhook.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from helpers.daemon import API_KEY, DaemonProcess, write_config
from helpers.receiver import ReceiverThread
from helpers.webhook import WebhookThread
from helpers.workorders import drop_atomically

SECRET = "e2e-webhook-secret-51f0c3a9d8"


def _drop(tmp_path: Path, inbox: Path, name: str, **kw: object) -> None:
    drop_atomically(tmp_path / "staging", inbox, name, **kw)  # type: ignore[arg-type]


def _secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def _upload_tokens(d: DaemonProcess) -> set[str]:
    rows = d.query("SELECT upload_url FROM batches WHERE upload_url IS NOT NULL") or []
    return {url.split("upload_id=")[1] for (url,) in rows}


def test_an_invalid_work_order_and_an_intake_pause_reach_the_webhook(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx") as rx, WebhookThread() as hook:
        cfg = write_config(tmp_path, rx.url, notify={"webhook_url": hook.url,
                                                     "webhook_secret_file": str(_secret_file(tmp_path))})
        with DaemonProcess(cfg) as d:
            inbox = d.paths["inbox"]
            _drop(tmp_path, inbox, "WO_BAD", images=["photo.gif"])
            _drop(tmp_path, inbox, "WO_OK")
            (failed,) = hook.wait_for_event("work_order_failed")
            d.wait_for(lambda: "WO_OK" in d.names_in("done"), what="WO_OK delivered")
            d.wait_for_finished()
            d.wait_for_event("watcher_started")
            inbox.rmdir()  # the share goes away: intake pauses
            (paused,) = hook.wait_for_event("intake_paused")
            inbox.mkdir()
            (resumed,) = hook.wait_for_event("intake_resumed")
            tokens = _upload_tokens(d)
        assert d.proc is not None and d.proc.returncode == 0
    report = json.loads((d.paths["failed"] / "WO_BAD.error.json").read_text())
    assert failed.signed_with(SECRET.encode()) and failed.headers["X-Wodrop-Event"] == "work_order_failed"
    data = failed.json["data"]
    # what WO_BAD.error.json says (the file may hold more, for wodrop's own use)
    assert {"work_order", "stage", "failed_at", "errors"} <= data["report"].keys()
    assert data["report"] == {k: report[k] for k in data["report"]}
    assert {e["code"] for e in data["report"]["errors"]} == {"unsupported_file", "no_images"}
    assert (data["work_order"], data["stage"], data["path"]) == ("WO_BAD", "validation",
                                                                 str(d.paths["failed"] / "WO_BAD"))
    assert paused.json["data"] == {"reason": "the inbox cannot be read"}
    assert resumed.json["data"]["reason"] == "the inbox cannot be read"
    assert hook.events() == ["work_order_failed", "intake_paused", "intake_resumed"]
    assert tokens, "the test must know the upload URLs it looks for"
    everything = "\n".join([d.log_path.read_text(), *(r.body.decode() for r in hook.requests)])
    for secret in (API_KEY, SECRET, *tokens):
        assert secret not in everything


def _metrics_url(d: DaemonProcess) -> str:
    (started,) = d.wait_for_event("status_server_started")
    return f"http://{started['listen'][0]}/metrics"


def test_a_hanging_webhook_does_not_hold_work_orders_back(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx") as rx, WebhookThread(answer=lambda n: None) as hook:
        cfg = write_config(tmp_path, rx.url, status={"listen": "127.0.0.1:0"},
                           notify={"webhook_url": hook.url, "timeout": "300ms", "max_retries": 1})
        with DaemonProcess(cfg) as d:
            for i in range(3):
                _drop(tmp_path, d.paths["inbox"], f"WO_BAD_{i}", images=["photo.gif"])
                _drop(tmp_path, d.paths["inbox"], f"WO_OK_{i}")
            d.wait_for(lambda: d.names_in("done") == {f"WO_OK_{i}" for i in range(3)}
                       and d.names_in("failed") == {f"WO_BAD_{i}" for i in range(3)}, what="all finished")
            d.wait_for_event("notification_failed")
            with urllib.request.urlopen(_metrics_url(d), timeout=10) as resp:
                scraped = resp.read().decode()
        # stop() above waited for a clean exit while a POST still hung
        assert d.proc is not None and d.proc.returncode == 0
    assert hook.requests, "the webhook was reached (and hung)"
    failed = re.search(r'wodrop_notifications_total\{event="work_order_failed",outcome="failed"\} (\S+)',
                       scraped)
    assert failed is not None and float(failed.group(1)) >= 1


def test_a_stalled_upload_is_reported(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx", faults="status=503:1.0") as rx, WebhookThread() as hook:
        cfg = write_config(tmp_path, rx.url, notify={"webhook_url": hook.url, "stall_after": "1s"})
        with DaemonProcess(cfg) as d:
            _drop(tmp_path, d.paths["inbox"], "WO_1")
            (stalled,) = hook.wait_for_event("upload_stalled")
    data = stalled.json["data"]
    assert data["batch"].startswith("batch-") and data["confirmed"] == 0 and data["total"] > 0
    assert data["stalled_for"] >= 1 and "HTTP 503" in data["last_error"]


def _api_status(d: DaemonProcess) -> dict[str, Any]:
    (started,) = d.wait_for_event("status_server_started")
    with urllib.request.urlopen(f"http://{started['listen'][0]}/api/status", timeout=10) as resp:
        doc = json.loads(resp.read())
    assert isinstance(doc, dict)
    return doc


def test_a_slow_upload_that_keeps_moving_is_not_stalled(tmp_path: Path) -> None:
    """The tester's case: under a 16 KiB/s limit a work order of one 256 KiB span takes ~9 s and the
    server confirms nothing before its end, yet bytes move all along: no upload_stalled with
    stall_after 2 s, and the status shows the rate meanwhile."""
    with ReceiverThread(tmp_path / "rx") as rx, WebhookThread() as hook:
        cfg = write_config(tmp_path, rx.url, upload={"max_bandwidth": "16KiB"},
                           status={"listen": "127.0.0.1:0"},
                           notify={"webhook_url": hook.url, "stall_after": "2s",
                                   "events": ["upload_stalled", "intake_paused"]})
        with DaemonProcess(cfg) as d:
            _drop(tmp_path, d.paths["inbox"], "WO_1", images=["A-0.jpg", "A-1.jpg", "A-2.jpg"],
                  image_size=48_000)
            rates: list[float] = []

            def moving() -> bool:
                rates.extend(b["rate_bytes_per_s"] or 0 for b in _api_status(d)["batches"]
                             if b["state"] == "uploading" and b["percent"] < 100)
                return any(rates)

            d.wait_for(moving, what="an upload rate while the first span is on its way")
            d.wait_for(lambda: "WO_1" in d.names_in("done"), what="WO_1 delivered")
            d.wait_for_finished()
            d.paths["inbox"].rmdir()
            hook.wait_for_event("intake_paused")  # delivered in order: a stall notice would be first
    assert hook.events() == ["intake_paused"]
    assert rx.stats["chunks"] == 1, "one span: the server confirmed nothing before the end"


def test_the_platforms_batch_id_shows_and_the_upload_url_does_not(tmp_path: Path) -> None:
    """The platform refuses the upload itself (after its batch was created): the webhook, the log,
    /api/status and `wodrop status --json` all give the platform's batch id, never the upload URL."""
    with ReceiverThread(tmp_path / "rx", faults="status=400:1.0") as rx, WebhookThread() as hook:
        cfg = write_config(tmp_path, rx.url, status={"listen": "127.0.0.1:0"},
                           notify={"webhook_url": hook.url, "events": ["batch_rejected"]})
        with DaemonProcess(cfg) as d:
            _drop(tmp_path, d.paths["inbox"], "WO_1")
            (rejected,) = hook.wait_for_event("batch_rejected")
            d.wait_for(lambda: "WO_1" in d.names_in("failed"), what="WO_1 failed")
            d.wait_for_finished()
            served = _api_status(d)
            ((remote_id, upload_url),) = d.query("SELECT remote_batch_id, upload_url FROM batches") or []
    assert remote_id and upload_url and remote_id in upload_url  # the receiver's URLs hold the id
    token = upload_url.split("upload_id=")[1]
    assert rejected.json["data"]["remote_batch_id"] == remote_id
    logged = {e["event"]: e.get("remote_batch_id") for e in d.events() if "remote_batch_id" in e}
    assert logged["upload_session_created"] == logged["batch_rejected"] == remote_id
    run = subprocess.run([sys.executable, "-m", "wodrop", "status", "--json", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=60, check=True)
    for status in (served, json.loads(run.stdout)):
        assert [b["remote_batch_id"] for b in status["batches"]] == [remote_id]
    everything = "\n".join([d.log_path.read_text(), rejected.body.decode(), json.dumps(served), run.stdout])
    assert token not in everything and upload_url not in everything


def test_a_rejected_batch_is_reported_with_only_the_selected_events(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx", faults="api_status=400:1.0") as rx, WebhookThread() as hook:
        cfg = write_config(tmp_path, rx.url, notify={"webhook_url": hook.url,
                                                     "events": ["batch_rejected", "intake_paused"]})
        with DaemonProcess(cfg) as d:
            _drop(tmp_path, d.paths["inbox"], "WO_1")
            (rejected,) = hook.wait_for_event("batch_rejected")
            d.wait_for(lambda: "WO_1" in d.names_in("failed"), what="WO_1 failed")
            d.wait_for_finished()  # its work_order_failed was emitted (not selected: not queued)
            d.paths["inbox"].rmdir()
            hook.wait_for_event("intake_paused")
    # A work_order_failed queued after batch_rejected would have been delivered before intake_paused.
    assert hook.events() == ["batch_rejected", "intake_paused"]
    data = rejected.json["data"]
    assert data["work_orders"] == ["WO_1"] and "HTTP 400" in data["reason"]


def test_a_refused_api_key_is_reported(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx", api_key="the-right-key-0123456") as rx, WebhookThread() as hook:
        cfg = write_config(tmp_path, rx.url, notify={"webhook_url": hook.url})
        with DaemonProcess(cfg):
            (refused,) = hook.wait_for_event("api_key_refused")
    assert "refused the API key" in refused.json["data"]["error"]
    assert API_KEY not in refused.body.decode()


def test_an_unreadable_secret_file_stops_the_start_with_exit_code_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, None, notify={"webhook_url": "http://127.0.0.1:9/hook",
                                               "webhook_secret_file": str(tmp_path / "missing.secret")})
    run = subprocess.run([sys.executable, "-m", "wodrop", "run", "-c", str(cfg)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert "notify.webhook_secret_file" in run.stderr and "cannot read it" in run.stderr
    assert "Traceback" not in run.stderr
