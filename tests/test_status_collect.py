"""The verdict a person reads first: collect_status' health and the one-line summary; and the
inbox's waiting list, live from the runtime or from the file the daemon leaves in the state folder."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from helpers.statusdb import API_KEY, StatusFixture, populate
from wodrop import waiting
from wodrop.status import collect_status, summary_line
from wodrop.status.collect import WAITING_SHOWN, iso
from wodrop.upload.protocol import AuthRefused
from wodrop.waiting import WaitingFolder


@pytest.fixture
def fx(tmp_path: Path) -> StatusFixture:
    return populate(tmp_path)


def health(fx: StatusFixture) -> tuple[str, str]:
    h = collect_status(fx.db, fx.runtime)["health"]
    return h["level"], h["reason"]


def test_health_in_order_of_urgency(fx: StatusFixture) -> None:
    assert health(fx) == ("warn", "2 work orders failed today (see recent failures)")
    up = fx.runtime.uploads[fx.uploading_id]
    up.samples = [(time.monotonic() - 20.0, up.furthest)]  # nothing new for 20 s: the last error matters
    assert health(fx)[1].startswith("Retrying batch-20240611-0002 (attempt 1): connection reset")
    fx.runtime.ready = False
    assert health(fx) == ("warn", "Starting up: recovering state and scanning the inbox")
    denied = "validate: permission denied: /srv/failed/WO_7 (trying again in 8 s)"
    fx.runtime.stuck["work order WO_7"] = denied
    fx.runtime.stuck["batch batch-1"] = "upload: no space left on device (trying again in 2 s)"
    assert health(fx) == ("error", "Stuck: batch batch-1: upload: no space left on device "
                          "(trying again in 2 s) (and 1 more)")
    assert collect_status(fx.db, fx.runtime)["daemon"]["stuck"][1] == {"item": "work order WO_7",
                                                                       "reason": denied}
    fx.runtime.intake_paused = "disk full: 0.2 GiB free in the spool, 1 GiB required"
    assert health(fx) == ("error", "Intake paused: disk full: 0.2 GiB free in the spool, 1 GiB required")
    fx.runtime.last_loop_tick = time.monotonic() - 120
    assert health(fx)[0] == "error" and "stuck" in health(fx)[1]
    fx.runtime.auth_error = str(AuthRefused(401, "CUSTOMER_API_KEY"))  # what the upload stage sets
    assert health(fx) == ("error", "Uploads paused: the platform refused the API key (HTTP 401): check "
                                   "CUSTOMER_API_KEY")


def test_green_when_nothing_is_wrong(fx: StatusFixture) -> None:
    for row in fx.db.work_orders(states=["failed"]):
        fx.db.finish_work_order(row.id, "retried", Path(row.path))
    assert health(fx) == ("ok", "Uploading 1 batch")
    fx.db.mark_uploaded(fx.uploading_id, 250 * 2**20)  # uploading -> uploaded -> done
    fx.db.finish_batch(fx.uploading_id, "done")
    fx.runtime.uploads.clear()
    assert health(fx) == ("ok", "All good: 3 folders waiting in the inbox")
    fx.runtime.pending.clear()
    assert health(fx) == ("ok", "All good: idle, the inbox is empty")


def test_recent_limits_finished_batches_not_active_ones(fx: StatusFixture) -> None:
    s = collect_status(fx.db, fx.runtime, recent=1)
    assert [b["state"] for b in s["batches"]] == ["uploading", "done"]
    assert len(s["failures"]) == 1
    s = collect_status(fx.db, fx.runtime, recent=0)
    assert [b["state"] for b in s["batches"]] == ["uploading"]


def test_summary_line(fx: StatusFixture) -> None:
    fx.runtime.auth_error = "403 Forbidden"
    assert summary_line(collect_status(fx.db, fx.runtime)) == (
        "API key refused, uploads paused, 3 pending, uploading batch-20240611-0002: 40% at 12.3 MiB/s, "
        "2 failed today"
    )


def test_waiting_from_the_runtime_oldest_first_redacted_and_printable(fx: StatusFixture) -> None:
    now = time.time()
    raw = os.fsdecode(b"WO_\xff")
    fx.runtime.waiting = {
        "WO_new_2": WaitingFolder("WO_new_2", now - 10, "settling: no change for 10 s yet, 20 s left"),
        raw: WaitingFolder(raw, now - 125, f"cannot move it: permission denied (token {API_KEY})"),
        "WO_new_3": WaitingFolder("WO_new_3", now - 2, "a temporary file is present (x.part): still "
                                  "being copied"),
    }
    inbox = collect_status(fx.db, fx.runtime)["inbox"]
    assert [w["name"] for w in inbox["waiting"]] == ["WO_\\xff", "WO_new_2", "WO_new_3"]
    first = inbox["waiting"][0]
    assert first["since"] == iso(now - 125)
    assert first["reason"] == "cannot move it: permission denied (token «redacted»)"
    assert inbox["waiting"][2]["reason"] == "a temporary file is present (x.part): still being copied"
    assert (inbox["waiting_total"], inbox["waiting_as_of"], inbox["pending"]) == (3, None, 3)
    json.dumps(inbox, ensure_ascii=False).encode("utf-8")  # what `wodrop status --json` prints


def test_ten_thousand_waiting_folders_do_not_make_a_huge_status(fx: StatusFixture) -> None:
    now = time.time()
    fx.runtime.waiting = {
        f"WO_{i:05d}": WaitingFolder(f"WO_{i:05d}", now - i, "settling: no change for 1 s yet, 29 s left")
        for i in range(10_000)
    }
    status = collect_status(fx.db, fx.runtime)
    shown = status["inbox"]["waiting"]
    assert len(shown) == WAITING_SHOWN and status["inbox"]["waiting_total"] == 10_000
    assert [w["name"] for w in shown[:2]] == ["WO_09999", "WO_09998"]  # the oldest
    assert len(json.dumps(status)) < 100_000


def test_waiting_without_a_runtime_comes_from_the_state_folder(fx: StatusFixture) -> None:
    assert collect_status(fx.db)["inbox"] is None  # no file: nothing known about the inbox
    path = waiting.waiting_path(fx.cfg.paths.state)
    written = time.time() - 30
    waiting.save(path, [
        WaitingFolder("WO_b", written - 60, "empty folder"),
        WaitingFolder("WO_a", written - 600, "no ready marker yet (waiting for READY)"),
    ], now=written)
    inbox = collect_status(fx.db)["inbox"]
    assert inbox["waiting"] == [
        {"name": "WO_a", "since": iso(written - 600), "reason": "no ready marker yet (waiting for READY)"},
        {"name": "WO_b", "since": iso(written - 60), "reason": "empty folder"},
    ]
    assert inbox["waiting_as_of"] == iso(written) and inbox["waiting_total"] == 2
    assert inbox["pending"] == 2 and inbox["oldest_pending_age_s"] == pytest.approx(630, abs=5)

    path.write_text('{"written_at": 17')  # torn or garbled: as if there were none
    assert collect_status(fx.db)["inbox"] is None
    waiting.save(path, [], now=written)
    assert collect_status(fx.db)["inbox"] == {"pending": 0, "oldest_pending_age_s": 0.0, "waiting": [],
                                              "waiting_total": 0, "waiting_as_of": iso(written)}
