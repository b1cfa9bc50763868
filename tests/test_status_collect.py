"""The verdict a person reads first: collect_status' health and the one-line summary."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.statusdb import StatusFixture, populate
from wodrop.status import collect_status, summary_line


@pytest.fixture
def fx(tmp_path: Path) -> StatusFixture:
    return populate(tmp_path)


def health(fx: StatusFixture) -> tuple[str, str]:
    h = collect_status(fx.db, fx.runtime)["health"]
    return h["level"], h["reason"]


def test_health_in_order_of_urgency(fx: StatusFixture) -> None:
    assert health(fx) == ("warn", "2 work orders failed today (see recent failures)")
    fx.runtime.uploads[fx.uploading_id].samples.clear()  # no progress: the last error matters now
    assert health(fx)[1].startswith("Retrying batch-20240611-0002 (attempt 1): connection reset")
    fx.runtime.ready = False
    assert health(fx) == ("warn", "Starting up: recovering state and scanning the inbox")
    fx.runtime.intake_paused = "disk full: 0.2 GiB free in the spool, 1 GiB required"
    assert health(fx) == ("error", "Intake paused: disk full: 0.2 GiB free in the spool, 1 GiB required")
    fx.runtime.last_loop_tick = time.monotonic() - 120
    assert health(fx)[0] == "error" and "stuck" in health(fx)[1]
    fx.runtime.auth_error = "401 Unauthorized"
    assert health(fx) == ("error", "Uploads paused: the platform refused the API key (401 Unauthorized)")


def test_green_when_nothing_is_wrong(fx: StatusFixture) -> None:
    for row in fx.db.work_orders(states=["failed"]):
        fx.db.finish_work_order(row.id, "retried", Path(row.path))
    assert health(fx) == ("ok", "Uploading 1 batch")
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
