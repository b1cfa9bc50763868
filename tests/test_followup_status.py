"""What people see of the follow-up: the status page, ``wodrop status`` and ``/metrics``, from a real
state DB holding followed batches and platform errors (names and texts are user input and the
platform's: escaped, and never a secret)."""

from __future__ import annotations

import time
from pathlib import Path

from helpers.statusdb import API_KEY, UPLOAD_URL, StatusFixture, populate
from prometheus_client import generate_latest
from wodrop import metrics
from wodrop.commands.status import render_text
from wodrop.lifecycle import BatchState, FollowupState
from wodrop.status.collect import collect_status
from wodrop.status.page import render_page

MiB = 2**20


def followed(fx: StatusFixture, name: str, work_orders: list[str]) -> int:
    db, cfg = fx.db, fx.cfg
    bid = db.create_batch(name, cfg.paths.spool / f"{name}.zip")
    ids = []
    for wo in work_orders:
        ids.append(db.add_work_order(wo, cfg.paths.processing / wo))
        db.assign_to_batch(ids[-1], bid, MiB, 2)
    db.seal_batch(bid, size=MiB, sha256="2" * 64, md5=None, crc32c=None, work_order_count=len(ids),
                  seal_reason="age")
    db.set_session(bid, f"remote-{name}", UPLOAD_URL + name)
    db.mark_uploaded(bid, MiB, follow_at=time.time())
    for wo_id, wo in zip(ids, work_orders, strict=True):
        db.finish_work_order(wo_id, "done", cfg.paths.done / wo)
    db.finish_batch(bid, BatchState.DONE)
    return bid


def setup(tmp_path: Path) -> StatusFixture:
    fx = populate(tmp_path)
    ok = followed(fx, "batch-followed-ok", ["WO_p<1>", "WO_p2"])
    fx.db.followup_polled(ok, next_at=time.time() + 30, status="processing")
    wo = fx.db.work_orders(name="WO_p<1>")[0]
    fx.db.record_platform_errors(wo.id, [
        {"code": "missing_metadata_key", "file": "metadata.json",
         "message": f"<b>no</b> site; key {API_KEY}"},
    ], fx.cfg.paths.done / "WO_p<1>.platform.json")
    bad = followed(fx, "batch-followed-bad", ["WO_p3"])
    fx.db.end_followup(bad, FollowupState.FAILED, status="error",
                       message=f"not_a_zip: see {UPLOAD_URL}\x1b[2J", errors=1)
    return fx


def test_status_page_shows_platform_column_and_errors_escaped_and_redacted(tmp_path: Path) -> None:
    fx = setup(tmp_path)
    page = render_page(collect_status(fx.db, fx.runtime))
    assert "<th>Platform</th>" in page and 'id="platform-errors"' in page
    assert "processing" in page and "failed (error): not_a_zip" in page
    assert "WO_p&lt;1&gt;" in page and "WO_p<1>" not in page
    assert "&lt;b&gt;no&lt;/b&gt; site" in page and "metadata.json" in page
    assert API_KEY not in page and "SECRET-UPLOAD-ID" not in page and "\x1b" not in page


def test_wodrop_status_text_has_the_platform_column_and_section(tmp_path: Path) -> None:
    fx = setup(tmp_path)
    text = render_text(collect_status(fx.db))
    header = next(line for line in text.splitlines() if line.strip().startswith("STATE"))
    assert "PLATFORM" in header
    lines = text.splitlines()
    ok_line = next(line for line in lines if "batch-followed-ok" in line)
    assert "processing" in ok_line
    start = lines.index("Platform errors (after upload):")
    assert lines[start + 1].startswith("  WO_p<1>  batch batch-followed-ok  reported ")
    assert lines[start + 2].startswith("    - missing_metadata_key [metadata.json]: <b>no</b> site; key ")
    assert API_KEY not in text and "SECRET-UPLOAD-ID" not in text and "\x1b" not in text


def test_every_followup_outcome_is_a_metric_series_from_the_first_scrape() -> None:
    text = generate_latest(metrics.REGISTRY).decode()
    for outcome in FollowupState:
        assert f'wodrop_platform_batches{{outcome="{outcome}"}}' in text
