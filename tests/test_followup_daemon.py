"""The follow-up end to end: a real ``wodrop run`` against the reference receiver emulating the platform's
processing (``processing_time``; an error per work order whose metadata.json lacks ``site``), killed
with ``kill -9`` while it follows a batch, restarted; then what ``wodrop status`` shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers.daemon import DaemonProcess, write_config
from helpers.workorders import drop_atomically
from wodrop.failpoints import EXIT_FAILPOINT

REPO = Path(__file__).resolve().parents[1]


def status_json(cfg: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "wodrop", "status", "--json", "-c", str(cfg)], cwd=REPO,
                         env=dict(os.environ), capture_output=True, text=True, timeout=60, check=True)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_followup_survives_kill_9_and_reports_next_to_the_work_orders(tmp_path: Path,
                                                                      rx_factory: Any) -> None:
    rx = rx_factory(processing_time=4.0, require_metadata_keys=("site",))
    cfg = write_config(tmp_path, rx.url, followup={"poll_interval": "1s"}, batch={"max_age": "1s",
                                                                                 "max_work_orders": 3})
    d = DaemonProcess(cfg, name="first").start()
    done = d.paths["done"]
    users_file = done / "WO_B.platform.json"
    users_file.write_text("my own notes, not wodrop's\n")  # a person's file where the report would go
    for name, metadata in (("WO_A", {"site": "north"}), ("WO_B", {"other": 1}), ("WO_C", None)):
        drop_atomically(tmp_path / "staging", d.paths["inbox"], name, metadata=metadata)
    d.wait_for(lambda: d.names_in("done") == {"WO_A", "WO_B", "WO_C"}, timeout=60, what="all in done/")
    d.wait_for_event("platform_status", timeout=30)  # pending or processing: being followed
    d.kill()
    rows = d.query("SELECT followup FROM batches WHERE followup IS NOT NULL")
    assert rows and {r[0] for r in rows} == {"following"}, rows

    with DaemonProcess(cfg, name="restarted") as again:
        again.wait_for_db("SELECT DISTINCT followup, platform_status FROM batches WHERE followup IS NOT NULL",
                          [("done", "done")], timeout=60, what="the platform's verdict")
        status = status_json(cfg)
        assert again.stop() == 0

    assert users_file.read_text() == "my own notes, not wodrop's\n"
    reports = {p.name: json.loads(p.read_text()) for p in done.glob("*.platform.json") if p != users_file}
    suffixed, plain = sorted(reports)  # WO_B's report took a free name next to the user's file
    assert plain == "WO_C.platform.json"
    assert suffixed.startswith("WO_B.") and suffixed.endswith(".platform.json")
    by_wo = {r["work_order"]: r for r in reports.values()}
    assert set(by_wo) == {"WO_B", "WO_C"}
    for r in by_wo.values():
        assert r["stage"] == "platform" and [e["code"] for e in r["errors"]] == ["missing_metadata_key"]
    assert not (done / "WO_A.platform.json").exists()

    followed = [b for b in status["batches"] if b["platform_outcome"]]
    assert followed and all(b["platform_status"] == "done" and b["platform_status_at"] for b in followed)
    assert sum(b["platform_errors"] for b in followed) == 2
    assert sorted(r["work_order"] for r in status["platform_errors"]) == ["WO_B", "WO_C"]
    events = d.events() + again.events()
    seen = [e["status"] for e in events if e.get("event") == "platform_status"]
    assert "done" in seen and {"pending", "processing"} & set(seen)
    assert sum(1 for e in events if e.get("event") == "batch_processed") == len(followed)


def test_a_crash_between_recording_a_report_and_writing_it_then_a_users_file_there(tmp_path: Path,
                                                                                    rx_factory: Any) -> None:
    """``followup.planned``: the DB records a work order's report path, the process dies before writing
    it, and a person puts a symbolic link at that path. After the restart the link is left alone and the
    report is written under a new name that the DB and ``wodrop status`` point to; every other work order
    gets its report too."""
    rx = rx_factory(require_metadata_keys=("site",))
    cfg = write_config(tmp_path, rx.url, followup={"poll_interval": "1s"}, batch={"max_age": "1s",
                                                                                 "max_work_orders": 3})
    names = {"WO_K1", "WO_K2", "WO_K3"}
    crashed = DaemonProcess(cfg, env={"WODROP_FAILPOINT": "followup.planned"}, name="crashed").start()
    for name in sorted(names):
        drop_atomically(tmp_path / "staging", crashed.paths["inbox"], name, metadata={"other": 1})
    assert crashed.proc is not None and crashed.proc.wait(timeout=90) == EXIT_FAILPOINT, \
        crashed.log_path.read_text()[-3000:]
    planned = crashed.query("SELECT name, platform_report FROM work_orders WHERE platform_report IS NOT NULL")
    assert planned is not None and len(planned) == 1, planned
    first, path = planned[0][0], Path(planned[0][1])
    assert not os.path.lexists(path)  # recorded, not written
    target = tmp_path / "users-notes.txt"
    target.write_text("a person's file\n")
    path.symlink_to(target)

    with DaemonProcess(cfg, name="restarted") as again:
        again.wait_for_db("SELECT DISTINCT followup FROM batches WHERE followup IS NOT NULL", [("done",)],
                          timeout=60, what="the platform's verdict")
        status = status_json(cfg)
        assert again.stop() == 0

    assert path.is_symlink() and os.readlink(path) == str(target)
    assert target.read_text() == "a person's file\n"
    done = crashed.paths["done"]
    reports = {p: json.loads(p.read_text()) for p in done.glob("*.platform.json") if not p.is_symlink()}
    assert sorted(r["work_order"] for r in reports.values()) == sorted(names)  # one each
    moved = next(p for p, r in reports.items() if r["work_order"] == first)
    assert moved != path and moved.name.startswith(f"{first}.")
    assert {r["work_order"]: r["report"] for r in status["platform_errors"]}[first] == str(moved)
    assert [e["event"] for e in again.events()].count("platform_report_path_taken") == 1
