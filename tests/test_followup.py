"""The follow-up stage in process: a scripted platform on 127.0.0.1 answers ``GET /v0.2/batches/{id}``,
against a real state DB and real done/ folders. What the platform says is recorded; its errors for
work orders wodrop sent land next to them and nowhere else; bad answers, 404s, a refused key, a silent
server and a restart are each handled without losing the follow-up."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from helpers.daemon import write_config
from wodrop import metrics
from wodrop.config import load_config
from wodrop.ledger import Ledger
from wodrop.lifecycle import BatchState, FollowupState
from wodrop.notify import EVENTS, Notifier, Webhook
from wodrop.pipeline.batcher import SpoolSlots
from wodrop.pipeline.finish import Finisher
from wodrop.pipeline.followup import Followup
from wodrop.pipeline.uploads import Uploads
from wodrop.runtime import Runtime
from wodrop.state import StateDB
from wodrop.status.collect import collect_status, platform_text
from wodrop.upload.api import MAX_ANSWER_BYTES
from wodrop.upload.processing import LOST_AFTER
from wodrop.upload.protocol import RetryPolicy
from wodrop.upload.transport import make_session

KEY = "followup-key-7c1e9a2b5d"
Answer = Callable[[], web.Response]


def ok(status: str, errors: list[dict[str, Any]] | None = None) -> Answer:
    return lambda: web.json_response({"batch_id": "x", "status": status, "errors": errors or []})


class Platform:
    """``GET /v0.2/batches/{id}`` answers each batch's script in turn (the last answer repeats)."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Answer]] = {}
        self.requests: list[str] = []
        self.hold: asyncio.Event | None = None  # when set: requests wait on it (a silent server)
        self.listing: list[Answer] = []  # ``GET /v0.2/batches`` (the key check), in turn
        self.url = ""

    async def get(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Token {KEY}"
        bid = request.match_info["batch_id"]
        self.requests.append(bid)
        if self.hold is not None:
            await self.hold.wait()
        script = self.scripts[bid]
        return (script.pop(0) if len(script) > 1 else script[0])()

    async def list(self, request: web.Request) -> web.Response:
        self.requests.append("(list)")
        return (self.listing.pop(0) if len(self.listing) > 1 else self.listing[0])()


class Env:
    def __init__(self, root: Path, platform: Platform, http: aiohttp.ClientSession, **sections: Any) -> None:
        cfg = load_config(write_config(root, platform.url, **sections))
        self.root, self.platform, self.http = root, platform, http
        self.db = StateDB(cfg.paths.db)
        self.events = Notifier(EVENTS, Webhook("http://127.0.0.1:9/hook", None, 1.0, RetryPolicy()))
        self.rt = Runtime(cfg=cfg, db=self.db, notifier=self.events, ready=True)
        ledger = Ledger(cfg.paths.done, self.db.instance_id())
        self.uploads = Uploads(self.rt, Finisher(cfg, self.db, self.rt.notifier), SpoolSlots(1), http,
                               platform.url, KEY, asyncio.Queue(), ledger)

    @property
    def done(self) -> Path:
        return self.rt.cfg.paths.done

    def followup(self) -> Followup:
        return Followup(self.rt, self.http, self.platform.url, KEY, self.uploads)

    def batch(self, remote: str, work_orders: list[str], *, follow: bool = True) -> int:
        """A batch uploaded and finished, its work orders' folders in done/, followed from now."""
        cfg, db = self.rt.cfg, self.db
        bid = db.create_batch(f"batch-{remote}", cfg.paths.spool / f"batch-{remote}.zip")
        ids = []
        for name in work_orders:
            ids.append(db.add_work_order(name, cfg.paths.processing / name))
            db.assign_to_batch(ids[-1], bid, 10, 1)
        db.seal_batch(bid, size=10, sha256="0" * 64, md5=None, crc32c=None, work_order_count=len(ids),
                      seal_reason="age")
        db.set_session(bid, remote, f"{self.platform.url}/upload/{remote}?upload_id=tok-{remote}-123456")
        db.mark_uploaded(bid, 10, follow_at=time.time() if follow else None)
        for wo, name in zip(ids, work_orders, strict=True):
            (cfg.paths.done / name).mkdir()
            (cfg.paths.done / name / "A-1.jpg").write_bytes(b"photo")
            db.finish_work_order(wo, "done", cfg.paths.done / name)
        db.finish_batch(bid, BatchState.DONE)
        return bid

    def notifications(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        while not self.events.queue.empty():
            n = self.events.queue.get_nowait()
            out.append((n.event, n.payload))
        return out

    def tree(self) -> dict[str, bytes]:
        """Every file under the test's root but the state folder (the DB changes, that is expected)."""
        state = self.rt.cfg.paths.state
        return {str(p.relative_to(self.root)): p.read_bytes() for p in self.root.rglob("*")
                if p.is_file() and state not in p.parents and not p.name.endswith(".log")}


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    server = Platform()
    app = web.Application()
    app.router.add_get("/v0.2/batches/{batch_id}", server.get)
    app.router.add_get("/v0.2/batches", server.list)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}"
    yield server
    if server.hold is not None:
        server.hold.set()
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    cfg = load_config(None, {})
    async with make_session(cfg.upload.model_copy(update={"connect_timeout": 2.0, "read_timeout": 2.0})) as s:
        yield s


@pytest.fixture
def env(tmp_path: Path, platform: Platform, http: aiohttp.ClientSession) -> Env:
    return Env(tmp_path, platform, http, followup={"poll_interval": "1s"},
               upload={"retry_initial_delay": "0.01s", "retry_max_delay": "0.02s"})


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait for ``predicate`` to hold, with a deadline."""
    async with asyncio.timeout(10):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


def report_of(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


async def test_statuses_then_errors_next_to_the_work_orders_and_nowhere_else(env: Env) -> None:
    bid = env.batch("r-1", ["WO_1", "WO_2"])
    hostile = ["../../escape", "WO_1/../../x", "..", "/tmp/abs", "WO_3", "WO_2\x00", "WO_2/"]
    errors = [{"work_order": "WO_1", "code": "missing_metadata_key", "file": "metadata.json",
               "message": "metadata.json has no key 'site'"}]
    errors += [{"work_order": h, "code": "evil", "message": "write me"} for h in hostile]
    env.platform.scripts["r-1"] = [ok("pending"), ok("Processing"), ok("DONE", errors)]
    before = env.tree()
    followup = env.followup()

    await followup.poll(bid)
    row = env.db.batch(bid)
    assert (row.followup, row.platform_status, row.followup_polls) == ("following", "pending", 0)
    assert row.platform_status_at is not None and row.followup_next_at is not None
    assert row.followup_next_at > time.time()  # the next poll is on the schedule, not now
    await followup.poll(bid)
    assert env.db.batch(bid).platform_status == "Processing"
    with structlog.testing.capture_logs() as logs:
        await followup.poll(bid)
    row = env.db.batch(bid)
    assert (row.followup, row.platform_status, row.platform_errors) == ("done", "DONE", 8)

    report = report_of(env.done / "WO_1.platform.json")
    assert report["work_order"] == "WO_1" and report["stage"] == "platform" and report["failed_at"]
    assert report["errors"] == [{"code": "missing_metadata_key", "file": "metadata.json",
                                 "message": "metadata.json has no key 'site'"}]
    after = env.tree()
    assert set(after) - set(before) == {"share/done/WO_1.platform.json"}  # nothing else, anywhere
    assert all(after[k] == v for k, v in before.items())
    unknown = [e for e in logs if e["event"] == "platform_error_unknown_work_order"]
    assert len(unknown) == 1 and unknown[0]["count"] == len(hostile)
    assert [e["event"] for e in logs if e["event"] == "batch_processed"] == ["batch_processed"]

    sent = env.notifications()
    assert sent == [
        ("work_order_failed", {"work_order": "WO_1", "stage": "platform", "report": report}),
        ("batch_processed", {"batch": "batch-r-1", "platform_status": "DONE", "outcome": "done",
                             "errors": 8}),
    ]
    assert env.platform.requests == ["r-1"] * 3
    await followup.poll(bid)  # a finished follow-up is not polled again
    assert env.platform.requests == ["r-1"] * 3

    wo1 = env.db.work_orders(name="WO_1")[0]
    assert wo1.state == "done" and wo1.platform_report == str(env.done / "WO_1.platform.json")
    status = collect_status(env.db, env.rt)
    b = next(b for b in status["batches"] if b["name"] == "batch-r-1")
    assert (b["platform_status"], b["platform_outcome"], b["platform_errors"]) == ("DONE", "done", 8)
    assert platform_text(b) == "DONE, 8 errors"
    assert [(r["work_order"], r["batch"]) for r in status["platform_errors"]] == [("WO_1", "batch-r-1")]
    assert status["platform_errors_today"] == 1
    assert "reported errors for 1 work order today" in status["health"]["reason"]
    sample = metrics.REGISTRY.get_sample_value("wodrop_platform_batches", {"outcome": "done"})
    assert sample == 1.0


async def test_a_file_in_the_way_is_never_overwritten_and_ours_is_rewritten(env: Env) -> None:
    bid = env.batch("r-2", ["WO_1"])
    mine = env.done / "WO_1.platform.json"
    mine.write_text("the user's own notes\n")
    first = [{"work_order": "WO_1", "code": "blurry", "message": "A-1.jpg is blurry"}]
    second = [*first, {"work_order": "WO_1", "code": "dark", "message": "A-1.jpg is dark"}]
    env.platform.scripts["r-2"] = [ok("processing", first), ok("processing", first), ok("done", second)]
    followup = env.followup()
    await followup.poll(bid)
    ours = [p for p in env.done.iterdir() if p.name.endswith(".platform.json") and p != mine]
    assert len(ours) == 1 and ours[0].name.startswith("WO_1.") and ours[0].name != mine.name
    assert [e["code"] for e in report_of(ours[0])["errors"]] == ["blurry"]
    assert [n for n, _ in env.notifications()] == ["work_order_failed"]
    await followup.poll(bid)  # the same errors again: nothing rewritten, nobody told twice
    assert env.notifications() == []
    await followup.poll(bid)
    assert [e["code"] for e in report_of(ours[0])["errors"]] == ["blurry", "dark"]  # our file, updated
    assert mine.read_text() == "the user's own notes\n"
    assert [n for n, _ in env.notifications()] == ["work_order_failed", "batch_processed"]


async def test_a_report_deleted_before_it_was_written_is_written_again(env: Env) -> None:
    """A crash between recording the errors and writing the file (``followup.planned``): the next poll
    writes it, at the recorded path."""
    bid = env.batch("r-3", ["WO_1"])
    errors = [{"work_order": "WO_1", "code": "blurry", "message": "m"}]
    env.platform.scripts["r-3"] = [ok("processing", errors)]
    followup = env.followup()
    await followup.poll(bid)
    path = env.done / "WO_1.platform.json"
    path.unlink()
    await followup.poll(bid)
    assert report_of(path)["errors"] == [{"code": "blurry", "file": None, "message": "m"}]


async def test_a_batch_failed_as_a_whole_is_shown_as_such(env: Env) -> None:
    bid = env.batch("r-4", ["WO_1"])
    env.platform.scripts["r-4"] = [ok("error", [{"work_order": None, "code": "not_a_zip",
                                                 "message": "the archive cannot be read"}])]
    await env.followup().poll(bid)
    row = env.db.batch(bid)
    assert (row.followup, row.platform_status, row.platform_message) == \
        ("failed", "error", "not_a_zip: the archive cannot be read")
    assert env.notifications() == [("batch_processed", {"batch": "batch-r-4", "platform_status": "error",
                                                        "outcome": "failed", "errors": 1})]
    status = collect_status(env.db, env.rt)
    b = next(b for b in status["batches"] if b["name"] == "batch-r-4")
    assert platform_text(b) == "failed (error): not_a_zip: the archive cannot be read, 1 error"
    assert status["platform_failed_today"] == 1
    assert "The platform failed 1 batch" in status["health"]["reason"]
    assert not list(env.done.glob("*.platform.json"))


async def test_unusable_answers_are_retried_on_the_schedule_and_404s_end_it_as_lost(env: Env) -> None:
    bid = env.batch("r-5", ["WO_1"])
    html_404 = lambda: web.Response(status=404, text="<html><title>Nope</title></html>",  # noqa: E731
                                    content_type="text/html")
    json_404 = lambda: web.json_response({"detail": "Not found."}, status=404)  # noqa: E731
    env.platform.scripts["r-5"] = [
        lambda: web.json_response({"status": 7}),  # a status that is not a text
        lambda: web.json_response({"status": "processing"}),
        html_404, html_404, html_404,  # a proxy's page: a glitch, not the platform forgetting the batch
        json_404, json_404, json_404,
    ]
    followup = env.followup()
    await followup.poll(bid)
    row = env.db.batch(bid)
    assert row.followup == "following" and row.platform_status is None
    assert row.followup_error == "the platform API answered with a status that is not a text (int)"
    assert row.followup_next_at is not None and row.followup_next_at > time.time()
    await followup.poll(bid)
    assert env.db.batch(bid).platform_status == "processing"
    await followup.poll(bid)  # three HTML 404s within one poll's attempts
    row = env.db.batch(bid)
    assert row.followup == "following" and row.followup_misses == 0
    assert "HTML page" in (row.followup_error or "")
    for n in range(1, LOST_AFTER):
        await followup.poll(bid)
        assert env.db.batch(bid).followup_misses == n
    await followup.poll(bid)
    row = env.db.batch(bid)
    assert row.followup == "lost" and row.platform_status == "processing"
    assert "does not know batch r-5 (HTTP 404)" in (row.platform_message or "")
    assert env.notifications() == []  # not a platform verdict: no batch_processed


async def test_no_final_status_within_the_timeout(tmp_path: Path, platform: Platform,
                                                  http: aiohttp.ClientSession) -> None:
    env = Env(tmp_path, platform, http, followup={"poll_interval": "1s", "timeout": "1s"})
    bid = env.batch("r-6", ["WO_1"])
    platform.scripts["r-6"] = [ok("pending")]
    followup = env.followup()
    await followup.poll(bid)
    assert env.db.batch(bid).followup == "following"
    deadline = (env.db.batch(bid).uploaded_at or 0) + 1.0
    await eventually(lambda: time.time() >= deadline)  # the clock passing the follow-up's deadline
    await followup.poll(bid)
    row = env.db.batch(bid)
    assert (row.followup, row.platform_status) == ("timeout", "pending")
    status = collect_status(env.db, env.rt)
    assert platform_text(next(b for b in status["batches"] if b["id"] == bid)) == "timeout (last: pending)"


async def test_a_refused_key_pauses_the_followup_and_uploads(env: Env) -> None:
    bid = env.batch("r-7", ["WO_1"])
    env.platform.scripts["r-7"] = [lambda: web.json_response({"detail": "Invalid token."}, status=401)]
    before = env.db.batch(bid)
    poll = asyncio.create_task(env.followup().poll(bid))
    try:
        await eventually(lambda: env.rt.auth_error is not None)
        with pytest.raises(TimeoutError):  # the uploads' gate is closed too
            await asyncio.wait_for(env.uploads.auth_ready(), 0.05)
        assert env.db.batch(bid) == before  # nothing recorded: polled again once the key works
    finally:
        poll.cancel()


async def test_a_silent_api_only_delays_the_followup(tmp_path: Path, platform: Platform,
                                                     http: aiohttp.ClientSession) -> None:
    env = Env(tmp_path, platform, http, followup={"poll_interval": "1s"},
              upload={"connect_timeout": "0.2s", "read_timeout": "0.2s", "retry_initial_delay": "0.01s",
                      "retry_max_delay": "0.02s"})
    bid = env.batch("r-8", ["WO_1"])
    platform.scripts["r-8"] = [ok("done")]
    platform.hold = asyncio.Event()  # never answers
    async with asyncio.timeout(20):  # bounded by the poll's own limit, not by this
        await env.followup().poll(bid)
    row = env.db.batch(bid)
    assert row.followup == "following" and row.platform_status is None
    assert row.followup_error is not None and "did not answer" in row.followup_error
    assert row.followup_next_at is not None and row.followup_next_at > time.time()


async def test_the_loop_resumes_after_a_restart_mid_poll(env: Env) -> None:
    """Stopped while a request is in flight, a new follow-up (the next start) polls the batch again and
    finishes it; the platform's errors are written once."""
    bid = env.batch("r-9", ["WO_1"])
    errors = [{"work_order": "WO_1", "code": "blurry", "message": "m"}]
    env.platform.scripts["r-9"] = [ok("done", errors)]
    env.platform.hold = asyncio.Event()
    first = asyncio.create_task(env.followup().run())
    await eventually(lambda: bool(env.platform.requests))
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert env.db.batch(bid).followup == "following"
    env.platform.hold.set()
    again = asyncio.create_task(env.followup().run())
    try:
        await eventually(lambda: env.db.batch(bid).followup != "following")
    finally:
        again.cancel()
    assert env.db.batch(bid).followup == "done"
    assert report_of(env.done / "WO_1.platform.json")["errors"][0]["code"] == "blurry"
    assert [n for n, _ in env.notifications()] == ["work_order_failed", "batch_processed"]


async def test_a_work_order_not_in_done_gets_no_report(env: Env) -> None:
    bid = env.batch("r-10", ["WO_1"])
    wo = env.db.work_orders(name="WO_1")[0]
    elsewhere = env.root / "moved-away" / "WO_1"
    elsewhere.parent.mkdir()
    os.rename(env.done / "WO_1", elsewhere)
    with env.db.transaction() as con:  # as if a damaged row pointed outside done/
        con.execute("UPDATE work_orders SET path = ? WHERE id = ?", (str(elsewhere), wo.id))
    env.platform.scripts["r-10"] = [ok("done", [{"work_order": "WO_1", "code": "c", "message": "m"}])]
    with structlog.testing.capture_logs() as logs:
        await env.followup().poll(bid)
    assert [e["event"] for e in logs if e["event"] == "platform_report_not_written"] == \
        ["platform_report_not_written"]
    assert not list(env.root.rglob("*.platform.json"))
    assert env.db.batch(bid).followup == FollowupState.DONE


async def test_a_followed_batch_without_a_platform_id_ends_lost_not_polled(env: Env) -> None:
    bid = env.batch("r-11", ["WO_1"])
    with env.db.transaction() as con:  # a damaged row
        con.execute("UPDATE batches SET remote_batch_id = NULL WHERE id = ?", (bid,))
    await env.followup().poll(bid)
    row = env.db.batch(bid)
    assert row.followup == "lost"
    assert row.platform_message == "no platform batch id is recorded for this batch"
    assert env.platform.requests == []


@pytest.mark.parametrize("in_the_way", ["a regular file", "a symbolic link", "another work order's report"])
async def test_a_file_put_at_the_recorded_path_after_a_crash_is_left_alone_the_report_goes_elsewhere(
    env: Env, in_the_way: str
) -> None:
    """A crash at ``followup.planned`` leaves the report's path recorded but nothing written; someone then
    puts their own file there. It is not ours: left as it is, and the report takes a new name, recorded
    first, written, logged and told; status points at it."""
    bid = env.batch("r-12", ["WO_K1", "WO_K2"])
    errors = [{"work_order": "WO_K1", "code": "blurry", "message": "A-1.jpg is blurry"}]
    env.platform.scripts["r-12"] = [ok("done", errors)]
    recorded = env.done / "WO_K1.platform.json"
    wo = env.db.work_orders(name="WO_K1")[0]
    env.db.record_platform_errors(wo.id, [{"code": "blurry", "file": None, "message": "A-1.jpg is blurry"}],
                                  recorded)  # what the crashed process had committed
    target = env.root / "elsewhere.txt"
    target.write_text("not wodrop's\n")
    if in_the_way == "a symbolic link":
        recorded.symlink_to(target)
    elif in_the_way == "a regular file":
        recorded.write_text("my own notes\n")
    else:
        recorded.write_text(json.dumps({"work_order": "WO_K2", "stage": "platform", "errors": []}))
    before = recorded.read_bytes(), os.readlink(recorded) if recorded.is_symlink() else None
    with structlog.testing.capture_logs() as logs:
        await env.followup().poll(bid)
    assert (recorded.read_bytes(), os.readlink(recorded) if recorded.is_symlink() else None) == before
    assert target.read_text() == "not wodrop's\n"
    reports = [p for p in env.done.glob("WO_K1.*.platform.json")]
    assert len(reports) == 1, reports
    assert report_of(reports[0])["errors"] == [{"code": "blurry", "file": None,
                                                "message": "A-1.jpg is blurry"}]
    assert env.db.work_orders(name="WO_K1")[0].platform_report == str(reports[0])
    status = collect_status(env.db, env.rt)
    assert [r["report"] for r in status["platform_errors"]] == [str(reports[0])]
    events = [e["event"] for e in logs]
    assert "platform_report_path_taken" in events and "work_order_platform_errors" in events
    assert [n for n, _ in env.notifications()] == ["work_order_failed", "batch_processed"]


async def test_a_report_of_ours_at_the_recorded_path_is_not_written_again(env: Env) -> None:
    bid = env.batch("r-13", ["WO_1"])
    errors = [{"work_order": "WO_1", "code": "blurry", "message": "m"}]
    env.platform.scripts["r-13"] = [ok("processing", errors), ok("done", errors)]
    followup = env.followup()
    await followup.poll(bid)
    path = env.done / "WO_1.platform.json"
    first = path.stat()
    await followup.poll(bid)
    assert path.stat().st_ino == first.st_ino and list(env.done.glob("WO_1*.platform.json")) == [path]


async def test_an_answer_past_the_bound_is_a_failed_poll_said_once(env: Env) -> None:
    """A 200 padded with hundreds of MiB would have been read whole: it is cut off at MAX_ANSWER_BYTES,
    the poll fails (logged once while it lasts) and the next one is on the schedule."""
    bid = env.batch("r-14", ["WO_1"])
    pad = "x" * (MAX_ANSWER_BYTES + 1)
    env.platform.scripts["r-14"] = [lambda: web.json_response({"status": "processing", "pad": pad})]
    followup = env.followup()
    with structlog.testing.capture_logs() as logs:
        await followup.poll(bid)
        await followup.poll(bid)
    row = env.db.batch(bid)
    assert row.followup == "following" and row.platform_status is None
    assert row.followup_error == ("the platform API answered HTTP 200 with more than 4.0 MiB, the most an "
                                  "answer may hold, gave up after 3 attempts")
    assert [e["event"] for e in logs].count("followup_poll_failed") == 1


async def test_a_flood_of_errors_for_one_work_order_leaves_the_others_their_report(env: Env) -> None:
    bid = env.batch("r-15", ["WO_C", "WO_D"])
    flood = [{"work_order": "WO_C", "code": "blurry", "message": f"A-{i}.jpg"} for i in range(20_000)]
    flood.append({"work_order": "WO_D", "code": "dark", "message": "m"})
    env.platform.scripts["r-15"] = [ok("done", flood)]
    await env.followup().poll(bid)
    assert report_of(env.done / "WO_D.platform.json")["errors"] == [{"code": "dark", "file": None,
                                                                     "message": "m"}]
    wo_c = report_of(env.done / "WO_C.platform.json")["errors"]
    assert len(wo_c) == 101 and wo_c[-1]["code"] == "more_errors" and "19,900 more" in wo_c[-1]["message"]
    status = collect_status(env.db, env.rt)
    assert sorted(r["work_order"] for r in status["platform_errors"]) == ["WO_C", "WO_D"]
    assert env.db.batch(bid).platform_errors == 20_001


async def test_the_poll_error_is_cleared_by_a_good_poll_and_kept_when_the_last_one_failed(
    tmp_path: Path, platform: Platform, http: aiohttp.ClientSession
) -> None:
    env = Env(tmp_path, platform, http, followup={"poll_interval": "1s", "timeout": "1s"},
              upload={"retry_initial_delay": "0.01s", "retry_max_delay": "0.02s"})
    down = "the platform API failed (HTTP 503: down), gave up after 3 attempts"
    failing = lambda: web.json_response({"detail": "down"}, status=503)  # noqa: E731
    good, bad = env.batch("r-16", ["WO_1"]), env.batch("r-17", ["WO_2"])
    platform.scripts["r-16"] = [failing] * 3 + [ok("done")]  # one poll's attempts, then a final status
    platform.scripts["r-17"] = [ok("processing"), failing]  # a good poll, then only failures
    followup = env.followup()
    await followup.poll(good)
    await followup.poll(bad)
    assert (env.db.batch(good).followup_error, env.db.batch(bad).followup_error) == (down, None)
    await followup.poll(good)
    row = env.db.batch(good)
    assert (row.followup, row.followup_error) == ("done", None)
    deadline = (env.db.batch(bad).uploaded_at or 0) + 1.0
    await eventually(lambda: time.time() >= deadline)  # the clock passing the follow-up's deadline
    await followup.poll(bad)
    row = env.db.batch(bad)
    assert row.followup == "timeout" and row.followup_error == down
    assert row.platform_message == f"no final status; the last poll failed: {down}"
    by_name = {b["name"]: b for b in collect_status(env.db, env.rt)["batches"]}
    assert by_name["batch-r-16"]["platform_poll_error"] is None
    assert by_name["batch-r-17"]["platform_poll_error"] == down


async def test_the_key_check_says_once_it_cannot_be_made_yet_and_holds_nothing_back(env: Env) -> None:
    env.platform.listing = [
        lambda: web.json_response({"detail": "oops"}, status=500),
        lambda: web.Response(status=200, text="<html><title>Sign in</title></html>",
                             content_type="text/html"),
        lambda: web.Response(status=302, headers={"Location": "/login"}),
        lambda: web.json_response({"count": 0, "results": []}),
    ]
    with structlog.testing.capture_logs() as logs:
        check = asyncio.create_task(env.uploads.check_key())
        await asyncio.wait_for(env.uploads.auth_ready(), 5)  # uploads never wait for the check
        async with asyncio.timeout(10):
            await check
    not_yet = [e for e in logs if e["event"] == "api_key_check_not_yet"]
    assert len(not_yet) == 1 and not_yet[0]["log_level"] == "info"
    assert not_yet[0]["reason"] == "the platform API failed (HTTP 500: oops)"
    assert env.platform.requests == ["(list)"] * 4 and env.rt.api_key_accepted is True
