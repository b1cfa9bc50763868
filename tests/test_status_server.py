"""The status server for real: aiohttp on 127.0.0.1, a real state DB, real folders."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from helpers.statusdb import API_KEY, UPLOAD_URL, StatusFixture, populate
from prometheus_client.parser import text_string_to_metric_families
from wodrop.status.collect import WAITING_SHOWN
from wodrop.status.server import parse_listen, start_status_server
from wodrop.upload.protocol import AuthRefused
from wodrop.waiting import WaitingFolder

SECRETS = (API_KEY, UPLOAD_URL, "SECRET-UPLOAD-ID")
EXPECTED_FAMILIES = {
    "wodrop_work_orders", "wodrop_batches_sealed", "wodrop_batches", "wodrop_uploaded_bytes",
    "wodrop_upload_retries", "wodrop_pending_folders", "wodrop_oldest_pending_age_seconds",
    "wodrop_last_successful_upload_timestamp_seconds", "wodrop_upload_duration_seconds",
    "wodrop_batch_size_bytes", "wodrop_api_key_accepted",
}


class Served:
    def __init__(self, fx: StatusFixture, url: str, http: aiohttp.ClientSession) -> None:
        self.fx, self.url, self.http = fx, url, http

    async def get(self, path: str) -> tuple[int, str, str]:
        async with self.http.get(self.url + path) as r:
            return r.status, await r.text(), r.headers.get("Content-Type", "")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    fx = populate(tmp_path)
    runner = await start_status_server(fx.runtime, "127.0.0.1:0")
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as http:
            yield Served(fx, f"http://{host}:{port}", http)
    finally:
        await runner.cleanup()
        fx.db.close()


async def test_healthz_ok_then_stale_loop(served: Served) -> None:
    async with served.http.get(served.url + "/healthz") as r:  # the header says it is wodrop's answer
        assert (r.status, await r.text(), r.headers["X-Wodrop-Health"]) == (200, "ok\n", "ok")
    served.fx.runtime.last_loop_tick = time.monotonic() - 45
    async with served.http.get(served.url + "/healthz") as r:
        assert (r.status, r.headers["X-Wodrop-Health"]) == (503, "stuck") and "45 s" in await r.text()


async def test_readyz_ready(served: Served) -> None:
    assert (await served.get("/readyz"))[:2] == (200, "ready\n")


async def test_readyz_lists_every_failing_check(served: Served) -> None:
    paths = served.fx.cfg.paths
    shutil.rmtree(paths.failed)
    shutil.rmtree(paths.done)
    paths.done.write_text("not a folder")
    served.fx.runtime.ready = False
    status, body, _ = await served.get("/readyz")
    assert status == 503
    assert f"failed folder {paths.failed} does not exist" in body
    assert f"done folder {paths.done} is not a directory" in body
    assert "starting" in body
    paths.failed.mkdir()
    paths.done.unlink()
    paths.done.mkdir()
    served.fx.runtime.ready = True
    assert (await served.get("/readyz"))[0] == 200


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only folder (os.access says yes)")
async def test_readyz_read_only_folder(served: Served) -> None:
    inbox = served.fx.cfg.paths.inbox
    inbox.chmod(0o555)
    try:
        status, body, _ = await served.get("/readyz")
    finally:
        inbox.chmod(0o755)
    assert status == 503 and f"inbox folder {inbox} is not writable" in body


async def test_readyz_api_key_refused_and_db_down(served: Served) -> None:
    served.fx.runtime.auth_error = f"the platform refused the API key (HTTP 401 for Token {API_KEY})"
    status, body, _ = await served.get("/readyz")
    assert status == 503 and "- uploads paused: the platform refused the API key (HTTP 401 " in body
    assert body.count("API key") == 1 and API_KEY not in body
    served.fx.runtime.auth_error = None
    served.fx.db.close()
    status, body, _ = await served.get("/readyz")
    assert status == 503 and "state DB" in body and "does not answer" in body


async def test_metrics_families_and_derived_gauges(served: Served) -> None:
    status, body, ctype = await served.get("/metrics")
    assert status == 200 and ctype.startswith("text/plain") and "version=" in ctype
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert set(families) >= EXPECTED_FAMILIES

    def value(family: str, **labels: str) -> float:
        return next(s.value for s in families[family].samples
                    if s.labels == labels and not s.name.endswith("_created"))

    assert value("wodrop_batches", state="uploading") == 1
    assert value("wodrop_batches", state="done") == 1
    assert value("wodrop_batches", state="failed") == 0
    assert value("wodrop_pending_folders") == 3
    assert 125 <= value("wodrop_oldest_pending_age_seconds") < 200
    assert value("wodrop_api_key_accepted") == 1
    uploaded_at = served.fx.db.batch(served.fx.done_id).uploaded_at
    assert value("wodrop_last_successful_upload_timestamp_seconds") == pytest.approx(uploaded_at)
    assert value("wodrop_work_orders", outcome="invalid") >= 0  # known labels exist from the start

    served.fx.runtime.auth_error = "403 Forbidden"
    served.fx.runtime.pending.clear()
    families = {f.name: f for f in text_string_to_metric_families((await served.get("/metrics"))[1])}
    assert value("wodrop_api_key_accepted") == 0
    assert value("wodrop_pending_folders") == 0


async def test_api_status_shape(served: Served) -> None:
    async with served.http.get(served.url + "/api/status") as r:
        assert r.status == 200 and r.content_type == "application/json"
        data = await r.json()
    assert set(data) >= {"generated_at", "daemon", "inbox", "counts", "failed_today", "batches",
                         "failures", "health"}
    up, done = data["batches"]
    assert (up["name"], up["state"], up["percent"], up["work_orders"]) == ("batch-20240611-0002",
                                                                           "uploading", 40.0, 2)
    assert (up["remote_batch_id"], done["remote_batch_id"]) == ("remote-2", "remote-1")
    assert up["rate_bytes_per_s"] == pytest.approx(12.3 * 2**20, rel=0.01)
    assert up["eta_s"] == pytest.approx(150 / 12.3, rel=0.02)
    assert up["attempts"] == 1 and "connection reset" in up["last_error"]
    assert (done["state"], done["bytes_sent"], done["bytes_total"]) == ("done", 10 * 2**20, 10 * 2**20)
    assert "upload_url" not in up and "upload_url" not in done
    assert [f["work_order"] for f in data["failures"]] == ["WO_rejected", "WO_bad_<script>"]
    assert [e["code"] for e in data["failures"][1]["errors"]] == ["bad_image_name", "empty_file"]
    assert data["failures"][1]["stage"] == "validation"
    assert data["inbox"] == {"pending": 3, "oldest_pending_age_s": pytest.approx(125, abs=5), "waiting": [],
                             "waiting_total": 0, "waiting_as_of": None}
    assert data["counts"]["work_orders"] == {"done": 3, "batched": 2, "failed": 2}
    assert data["failed_today"] == 2
    assert data["daemon"]["watcher"] == "events" and data["daemon"]["ready"] is True
    assert data["health"]["level"] == "warn" and "2 work orders failed today" in data["health"]["reason"]


async def test_page_health_says_why(served: Served) -> None:
    served.fx.runtime.auth_error = str(AuthRefused(401))
    status, body, ctype = await served.get("/")
    assert status == 200 and ctype.startswith("text/html")
    assert '<header class="error">' in body
    assert "Uploads paused: the platform refused the API key" in body
    assert '<meta http-equiv="refresh" content="5">' in body


async def test_no_secret_in_any_endpoint_and_names_are_escaped(served: Served) -> None:
    served.fx.runtime.auth_error = f"401 for Token {API_KEY} on {UPLOAD_URL}"
    for path in ("/", "/api/status", "/metrics", "/readyz", "/healthz"):
        _, body, _ = await served.get(path)
        for secret in SECRETS:
            assert secret not in body, (path, secret)
    page = (await served.get("/"))[1]
    assert "WO_bad_<script>" not in page and "WO_bad_&lt;script&gt;" in page
    assert "«redacted»" in page  # the planted secrets were there to be masked


async def test_waiting_folders_in_the_api_and_on_the_page(served: Served) -> None:
    now = time.time()
    raw = os.fsdecode(b"WO_\xfe")
    served.fx.runtime.waiting = {
        "WO_<script>alert(1)</script>": WaitingFolder(
            "WO_<script>alert(1)</script>", now - 125, "a temporary file is present (<i>x</i>.part): still "
            "being copied"),
        raw: WaitingFolder(raw, now - 10, f"cannot move it: permission denied ({UPLOAD_URL})"),
    }
    async with served.http.get(served.url + "/api/status") as r:
        data = await r.json()
    first, second = data["inbox"]["waiting"]
    assert first["name"] == "WO_<script>alert(1)</script>"  # JSON is not HTML: escaped by the page only
    assert first["reason"] == "a temporary file is present (<i>x</i>.part): still being copied"
    assert second["name"] == "WO_\\xfe"
    assert second["reason"].startswith("cannot move it: permission denied (")
    assert UPLOAD_URL not in second["reason"]
    assert data["inbox"]["waiting_total"] == 2 and data["inbox"]["waiting_as_of"] is None

    _, page, _ = await served.get("/")
    section = page[page.index("<h2>Waiting in the inbox</h2>"):page.index("<h2>Recent failures</h2>")]
    assert "<script>" not in page and "<i>" not in page
    assert "WO_&lt;script&gt;alert(1)&lt;/script&gt;" in section
    assert "a temporary file is present (&lt;i&gt;x&lt;/i&gt;.part): still being copied" in section
    assert "WO_\\xfe" in section and "2m05s ago" in section
    assert section.index("WO_&lt;script") < section.index("WO_\\xfe")  # oldest first
    for secret in SECRETS:
        assert secret not in page
    assert "… and" not in section  # all of them are shown

    served.fx.runtime.waiting = {f"WO_{i}": WaitingFolder(f"WO_{i}", now - i, "empty folder")
                                 for i in range(WAITING_SHOWN + 7)}
    _, page, _ = await served.get("/")
    section = page[page.index("<h2>Waiting in the inbox</h2>"):page.index("<h2>Recent failures</h2>")]
    assert section.count("<tr>") == WAITING_SHOWN + 1 and "… and 7 more" in section

    served.fx.runtime.waiting.clear()
    served.fx.runtime.pending.clear()
    assert "Nothing is waiting in the inbox." in (await served.get("/"))[1]


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9410") == ("127.0.0.1", 9410)
    assert parse_listen("[::1]:9410") == ("::1", 9410)
    assert parse_listen(":9410") == ("0.0.0.0", 9410)


async def test_port_in_use_raises(served: Served) -> None:
    port = int(served.url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        await start_status_server(served.fx.runtime, f"127.0.0.1:{port}")
