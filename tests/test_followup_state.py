"""The follow-up in the state DB: schema migration v2 -> v3 of a DB written by the previous wodrop, the
follow-up's transition table, and how polls are recorded. Real SQLite files in tmp dirs."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from wodrop.lifecycle import FOLLOWUP_TRANSITIONS, BatchState, FollowupState, IllegalTransition
from wodrop.state import _MIGRATIONS, SCHEMA_VERSION, StateDB
from wodrop.status.collect import collect_status

F = FollowupState
URL = "http://127.0.0.1:9/upload/b?upload_id=followup-state-test"


def make_v2_db(path: Path) -> None:
    """A DB exactly as the schema-2 wodrop left it: one delivered batch with its work order, one sealed."""
    db = sqlite3.connect(path, isolation_level=None)
    for v in (1, 2):
        for stmt in _MIGRATIONS[v].split(";"):
            if stmt.strip():
                db.execute(stmt)
    db.execute("PRAGMA user_version = 2")
    now = time.time()
    db.execute("INSERT INTO batches(id, name, state, archive_path, size, remote_batch_id, upload_url,"
               " created_at, uploaded_at, finished_at, updated_at)"
               " VALUES (1, 'batch-old', 'done', '/spool/batch-old.zip', 10, 'r-1', ?, ?, ?, ?, ?)",
               (URL, now, now, now, now))
    db.execute("INSERT INTO batches(id, name, state, archive_path, size, created_at, updated_at)"
               " VALUES (2, 'batch-sealed', 'sealed', '/spool/batch-sealed.zip', 20, ?, ?)", (now, now))
    db.execute("INSERT INTO work_orders(id, name, state, batch_id, path, claimed_at, finished_at, updated_at)"
               " VALUES (1, 'WO_old', 'done', 1, '/share/done/WO_old', ?, ?, ?)", (now, now, now))
    db.execute("INSERT INTO meta(key, value) VALUES ('instance', 'abc123def456')")
    db.close()


def test_schema_is_3() -> None:
    assert SCHEMA_VERSION == 3


def test_a_v2_db_is_migrated_keeping_every_row(tmp_path: Path) -> None:
    path = tmp_path / "wodrop.sqlite3"
    make_v2_db(path)
    with StateDB(path) as db:
        assert db.schema == 3
        db.check()
        assert db.instance_id() == "abc123def456"
        old = db.batch(1)
        assert (old.name, old.state, old.remote_batch_id, old.upload_url) == ("batch-old", "done", "r-1", URL)
        assert old.followup is None and old.platform_status is None and old.platform_errors == 0
        assert db.batch(2).state == BatchState.SEALED
        wo = db.work_order(1)
        assert (wo.name, wo.state, wo.platform_errors, wo.platform_report) == ("WO_old", "done", None, None)
        # batches uploaded before the upgrade are not followed
        assert db.followups_due(time.time() + 1e9) == [] and db.next_followup_at() is None
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 3
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    with StateDB(path) as db:  # opening again migrates nothing more
        assert db.schema == 3 and db.batch(1).name == "batch-old"


def test_status_reads_a_v2_db_a_running_old_daemon_still_writes(tmp_path: Path) -> None:
    """``wodrop status`` (read-only, no migration) of the DB of a daemon not restarted since the
    upgrade: the new fields read as not followed, nothing fails."""
    path = tmp_path / "wodrop.sqlite3"
    make_v2_db(path)
    with StateDB(path, readonly=True) as db:
        assert db.schema == 2
        status = collect_status(db)
    done = next(b for b in status["batches"] if b["name"] == "batch-old")
    assert done["platform_status"] is None and done["platform_outcome"] is None
    assert status["platform_errors"] == [] and status["platform_errors_today"] == 0


def test_followup_table_is_the_documented_one() -> None:
    assert {(src, to) for to, srcs in FOLLOWUP_TRANSITIONS.items() for src in srcs} == {
        (F.FOLLOWING, F.DONE), (F.FOLLOWING, F.FAILED), (F.FOLLOWING, F.TIMEOUT), (F.FOLLOWING, F.LOST)}


def uploaded(db: StateDB, tmp: Path, *, follow: bool = True, tag: str = "b") -> int:
    bid = db.create_batch(f"batch-{tag}", tmp / f"batch-{tag}.zip")
    wo = db.add_work_order(f"WO_{tag}", tmp / "processing" / f"WO_{tag}")
    db.assign_to_batch(wo, bid, 100, 1)
    db.seal_batch(bid, size=100, sha256="0" * 64, md5=None, crc32c=None, work_order_count=1,
                  seal_reason="age")
    db.set_session(bid, f"remote-{tag}", URL)
    db.mark_uploaded(bid, 100, follow_at=time.time() - 1 if follow else None)
    db.finish_work_order(wo, "done", tmp / "done" / f"WO_{tag}")
    db.finish_batch(bid, BatchState.DONE)
    return bid


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDB]:
    with StateDB(tmp_path / "wodrop.sqlite3") as d:
        yield d


def test_mark_uploaded_starts_the_followup_in_the_same_transaction(db: StateDB, tmp_path: Path) -> None:
    followed, unfollowed = uploaded(db, tmp_path), uploaded(db, tmp_path, follow=False, tag="c")
    assert db.batch(followed).followup == F.FOLLOWING and db.batch(unfollowed).followup is None
    assert [b.id for b in db.followups_due(time.time())] == [followed]
    assert db.followup_counts() == {"following": 1}


def test_only_finished_daemon_batches_are_due(db: StateDB, tmp_path: Path) -> None:
    bid = db.create_batch("batch-u", tmp_path / "batch-u.zip")
    db.seal_batch(bid, size=1, sha256="0" * 64, md5=None, crc32c=None, work_order_count=0, seal_reason="age")
    db.set_session(bid, "remote-u", URL)
    db.mark_uploaded(bid, 1, follow_at=0.0)
    assert db.followups_due(time.time()) == []  # uploaded, its folders not moved yet: not polled
    db.finish_batch(bid, BatchState.DONE)
    assert [b.id for b in db.followups_due(time.time())] == [bid]


def test_polls_record_status_changes_and_backoff(db: StateDB, tmp_path: Path) -> None:
    bid = uploaded(db, tmp_path)
    db.followup_polled(bid, next_at=10.0, status="pending")
    first = db.batch(bid)
    assert (first.platform_status, first.followup_polls, first.followup_next_at) == ("pending", 0, 10.0)
    db.followup_polled(bid, next_at=20.0, status="pending")
    db.followup_polled(bid, next_at=30.0, error="the platform API failed (HTTP 503)")
    same = db.batch(bid)
    assert (same.platform_status, same.followup_polls, same.followup_error) == \
        ("pending", 2, "the platform API failed (HTTP 503)")
    assert same.platform_status_at == first.platform_status_at  # when it was first seen
    db.followup_polled(bid, next_at=40.0, missed=True)
    db.followup_polled(bid, next_at=50.0, missed=True)
    assert db.batch(bid).followup_misses == 2
    db.followup_polled(bid, next_at=60.0, status="processing")
    changed = db.batch(bid)
    assert (changed.platform_status, changed.followup_polls) == ("processing", 0)
    assert (changed.followup_misses, changed.followup_error) == (0, None)
    assert db.next_followup_at() == 60.0


@pytest.mark.parametrize("outcome", [F.DONE, F.FAILED, F.TIMEOUT, F.LOST])
def test_the_followup_ends_once(db: StateDB, tmp_path: Path, outcome: FollowupState) -> None:
    bid = uploaded(db, tmp_path)
    db.followup_polled(bid, next_at=1.0, status="processing")
    db.end_followup(bid, outcome, status="done" if outcome == F.DONE else None, message="m", errors=3)
    row = db.batch(bid)
    assert row.followup == outcome and row.followup_next_at is None
    assert row.platform_status == ("done" if outcome == F.DONE else "processing")
    assert (row.platform_message, row.platform_errors) == ("m", 3)
    for again in (F.DONE, F.FAILED, F.TIMEOUT, F.LOST):
        with pytest.raises(IllegalTransition, match=f"follow-up cannot end {again}"):
            db.end_followup(bid, again)
    with pytest.raises(IllegalTransition, match="not being followed"):
        db.followup_polled(bid, next_at=1.0, status="done")
    with pytest.raises(IllegalTransition):
        db.end_followup(bid, F.FOLLOWING)
    assert db.batch(bid) == row  # nothing changed by the refused steps
    assert db.followups_due(time.time()) == []


def test_an_unfollowed_batch_cannot_end_or_be_polled(db: StateDB, tmp_path: Path) -> None:
    bid = uploaded(db, tmp_path, follow=False)
    with pytest.raises(IllegalTransition, match=r"it is None"):
        db.end_followup(bid, F.DONE)
    with pytest.raises(IllegalTransition):
        db.followup_polled(bid, next_at=1.0)


def test_platform_errors_of_a_work_order(db: StateDB, tmp_path: Path) -> None:
    bid = uploaded(db, tmp_path)
    wo = db.work_orders(batch_id=bid)[0]
    errors = [{"code": "missing_metadata_key", "file": "metadata.json", "message": "no 'site'"}]
    db.record_platform_errors(wo.id, errors, tmp_path / "done" / "WO_b.platform.json")
    got = db.work_order(wo.id)
    assert got.platform_error_list == errors
    assert got.platform_report == str(tmp_path / "done" / "WO_b.platform.json")
    assert [r.id for r in db.platform_reported(limit=5)] == [wo.id]
    assert db.count_platform_reported_since(time.time() - 60) == 1
    assert db.count_platform_reported_since(time.time() + 60) == 0
