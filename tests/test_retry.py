"""``wodrop retry`` on real folders and a real state DB."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.daemon import DaemonProcess
from helpers.daemon import write_config as write_daemon_config
from helpers.receiver import ReceiverThread
from helpers.statusdb import write_config
from helpers.workorders import drop_atomically
from wodrop.cli import main
from wodrop.config import Config, load_config
from wodrop.fsops import failure_report
from wodrop.state import StateDB
from wodrop.status.collect import collect_status

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Config]:
    cfg_path = write_config(tmp_path)
    cfg = load_config(cfg_path, environ={})
    for key in ("inbox", "processing", "done", "failed", "state"):
        getattr(cfg.paths, key).mkdir()
    return cfg_path, cfg


def make_failed(cfg: Config, folder: str, wo_id: str | None, *, report: bool = True,
                db: StateDB | None = None) -> Path:
    path = cfg.paths.failed / folder
    path.mkdir()
    (path / "A-1.jpg").write_bytes(b"content of " + folder.encode())
    errors = [{"code": "empty_file", "file": "A-2.jpg", "message": "A-2.jpg is empty"}]
    if report:
        (cfg.paths.failed / f"{folder}.error.json").write_text(
            json.dumps(failure_report(wo_id or folder, "validation", errors)))
    if db is not None:
        row = db.add_work_order(wo_id or folder, cfg.paths.processing / (wo_id or folder))
        db.finish_work_order(row, "failed", path, stage="validation", errors=errors)
    return path


def retry(cfg_path: Path, *args: str) -> int:
    return main(["retry", "-c", str(cfg_path), *args])


def test_moves_back_removes_report_and_marks_db(site: tuple[Path, Config],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, cfg = site
    with StateDB(cfg.paths.db) as db:
        make_failed(cfg, "WO_1", None, db=db)
    assert retry(cfg_path, "WO_1") == 0
    assert (cfg.paths.inbox / "WO_1" / "A-1.jpg").read_bytes() == b"content of WO_1"
    assert not (cfg.paths.failed / "WO_1").exists()
    assert not (cfg.paths.failed / "WO_1.error.json").exists()
    assert capsys.readouterr().out == f"WO_1: moved back to {cfg.paths.inbox / 'WO_1'}\n"
    with StateDB(cfg.paths.db) as db:
        (row,) = db.work_orders(name="WO_1")
        assert row.state == "retried" and row.path == str(cfg.paths.inbox / "WO_1")
        assert row.error_list[0]["code"] == "empty_file"  # why it failed is kept


def test_never_overwrites_an_inbox_folder(site: tuple[Path, Config],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, cfg = site
    with StateDB(cfg.paths.db) as db:
        make_failed(cfg, "WO_1", None, db=db)
    (cfg.paths.inbox / "WO_1").mkdir()
    (cfg.paths.inbox / "WO_1" / "new.jpg").write_bytes(b"a newer drop")
    assert retry(cfg_path, "WO_1") == 1
    assert "inbox/WO_1 already exists; not moved" in capsys.readouterr().out
    assert [p.name for p in (cfg.paths.inbox / "WO_1").iterdir()] == ["new.jpg"]
    assert (cfg.paths.failed / "WO_1" / "A-1.jpg").read_bytes() == b"content of WO_1"
    assert (cfg.paths.failed / "WO_1.error.json").exists()
    with StateDB(cfg.paths.db) as db:
        assert db.work_orders(name="WO_1")[0].state == "failed"


def test_suffixed_names_go_back_under_their_id(site: tuple[Path, Config]) -> None:
    cfg_path, cfg = site
    with StateDB(cfg.paths.db) as db:
        make_failed(cfg, "WO_2.20240611T101500-2", "WO_2", db=db)
        make_failed(cfg, "WO_2", None, db=db)  # the newer row, but not the folder retried
    make_failed(cfg, "WO_3.20240611T101500", None, report=False)
    assert retry(cfg_path, "WO_2.20240611T101500-2", "WO_3.20240611T101500") == 0
    assert (cfg.paths.inbox / "WO_2" / "A-1.jpg").read_bytes() == b"content of WO_2.20240611T101500-2"
    assert (cfg.paths.inbox / "WO_3" / "A-1.jpg").read_bytes() == b"content of WO_3.20240611T101500"
    assert (cfg.paths.failed / "WO_2").is_dir() and (cfg.paths.failed / "WO_2.error.json").exists()
    with StateDB(cfg.paths.db) as db:
        states = {r.path: r.state for r in db.work_orders(name="WO_2")}
    # the row of the folder that was moved is the one marked, not the newer-looking other one
    assert states == {str(cfg.paths.failed / "WO_2"): "failed", str(cfg.paths.inbox / "WO_2"): "retried"}


def test_report_id_that_is_not_a_plain_name_is_ignored(site: tuple[Path, Config]) -> None:
    cfg_path, cfg = site
    make_failed(cfg, "WO_4", "../../escape")
    assert retry(cfg_path, "WO_4") == 0
    assert (cfg.paths.inbox / "WO_4").is_dir()


def test_all_skips_reports_and_dot_files(site: tuple[Path, Config],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, cfg = site
    for wo in ("WO_a", "WO_b", "WO_c"):
        make_failed(cfg, wo, None)
    (cfg.paths.failed / ".DS_Store").write_bytes(b"junk")
    (cfg.paths.failed / ".hidden").mkdir()
    (cfg.paths.inbox / "WO_c").mkdir()
    assert retry(cfg_path, "--all") == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "WO_c: inbox/WO_c already exists; not moved" in out
    assert sorted(p.name for p in cfg.paths.failed.iterdir()) == [".DS_Store", ".hidden", "WO_c",
                                                                  "WO_c.error.json"]
    assert (cfg.paths.inbox / "WO_a").is_dir() and (cfg.paths.inbox / "WO_b").is_dir()
    (cfg.paths.inbox / "WO_c").rmdir()
    assert retry(cfg_path, "--all") == 0
    assert retry(cfg_path, "--all") == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"no failed work orders in {cfg.paths.failed}"


def test_unknown_name_and_paths_are_refused(site: tuple[Path, Config],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, cfg = site
    make_failed(cfg, "WO_5.20240611T101500", "WO_5")
    (cfg.paths.processing / "WO_6").mkdir()
    assert retry(cfg_path, "WO_5", "../processing/WO_6", "WO_5.20240611T101500.error.json") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("WO_5: no such work order folder")
    assert "did you mean WO_5.20240611T101500?" in out[0]
    assert all(line.endswith("not moved") for line in out)
    assert (cfg.paths.processing / "WO_6").is_dir() and not any(cfg.paths.inbox.iterdir())


def test_usage_errors_exit_2(site: tuple[Path, Config]) -> None:
    cfg_path, _ = site
    for args in ([], ["WO_1", "--all"]):
        r = subprocess.run([sys.executable, "-m", "wodrop", "retry", "-c", str(cfg_path), *args],
                           cwd=REPO, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "name work orders or use --all" in r.stderr


def test_a_folder_renamed_in_failed_takes_its_report_and_failure_with_it(tmp_path: Path) -> None:
    """The way people fix a bad id: rename the folder in failed/, then retry it under its new name. Its
    old report must not stay behind, nor its failure on the status page."""
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg_path = write_daemon_config(tmp_path, rx.url)
        with DaemonProcess(cfg_path) as d:
            drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO 7")  # a space: not a valid id
            d.wait_for(lambda: (d.paths["failed"] / "WO 7.error.json").exists(), timeout=30, what="failed")
            d.wait_for_finished()
    cfg = load_config(cfg_path)  # its sub-second settle needs the test suite's environment
    failed = cfg.paths.failed
    (failed / "WO 7").rename(failed / "WO_7")
    with StateDB(cfg.paths.db) as db:
        assert [f["work_order"] for f in collect_status(db)["failures"]] == ["WO 7"]
    assert retry(cfg_path, "WO_7") == 0
    assert (cfg.paths.inbox / "WO_7").is_dir() and not any(failed.iterdir())
    with StateDB(cfg.paths.db) as db:
        assert collect_status(db)["failures"] == []
        (row,) = db.work_orders(name="WO 7")
        assert row.state == "retried" and row.path == str(cfg.paths.inbox / "WO_7")
        assert row.error_list[0]["code"] == "bad_work_order_id"  # why it failed is kept


def test_only_the_report_of_the_renamed_folder_itself_is_settled(site: tuple[Path, Config],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, cfg = site
    failed = cfg.paths.failed
    with StateDB(cfg.paths.db) as db:
        for name in ("WO A", "WO B", "WO C"):
            folder = make_failed(cfg, name, None, db=db)
            report = json.loads((failed / f"{name}.error.json").read_text())
            report["folder_inode"] = folder.stat().st_ino
            (failed / f"{name}.error.json").write_text(json.dumps(report))
    (failed / "WO A").rename(failed / "WO_A")
    (failed / "WO B").rename(failed / "WO_B")
    shutil.rmtree(failed / "WO C")  # removed by hand: its report stays, it is no folder's report
    assert retry(cfg_path, "--all") == 0
    assert capsys.readouterr().out.splitlines() == [
        f"WO_A: moved back to {cfg.paths.inbox / 'WO_A'}", f"WO_B: moved back to {cfg.paths.inbox / 'WO_B'}"]
    assert sorted(p.name for p in failed.iterdir()) == ["WO C.error.json"]
    with StateDB(cfg.paths.db) as db:
        assert {r.name: r.state for r in db.work_orders()} == {"WO A": "retried", "WO B": "retried",
                                                               "WO C": "failed"}


def test_a_folder_renamed_onto_a_stale_report_takes_its_own_report(
        site: tuple[Path, Config], capsys: pytest.CaptureFixture[str]) -> None:
    """The tester's case: failed/Z_2 was deleted by hand and its report left; "W 1" is renamed to Z_2 and
    retried. The report that records the folder's inode ("W 1"'s) is settled with it, not the stale
    Z_2.error.json of the folder that is gone."""
    cfg_path, cfg = site
    failed = cfg.paths.failed
    with StateDB(cfg.paths.db) as db:
        for name in ("Z_2", "W 1"):
            folder = make_failed(cfg, name, None, db=db)
            report = json.loads((failed / f"{name}.error.json").read_text())
            report["folder_inode"] = folder.stat().st_ino
            (failed / f"{name}.error.json").write_text(json.dumps(report))
    stale = json.loads((failed / "Z_2.error.json").read_text())
    shutil.rmtree(failed / "Z_2")
    (failed / "W 1").rename(failed / "Z_2")
    assert retry(cfg_path, "Z_2") == 0
    assert capsys.readouterr().out == f"Z_2: moved back to {cfg.paths.inbox / 'Z_2'}\n"
    assert sorted(p.name for p in failed.iterdir()) == ["Z_2.error.json"]
    assert json.loads((failed / "Z_2.error.json").read_text()) == stale  # the gone folder's, untouched
    with StateDB(cfg.paths.db) as db:
        assert {r.name: r.state for r in db.work_orders()} == {"W 1": "retried", "Z_2": "failed"}
        assert [f["work_order"] for f in collect_status(db)["failures"]] == ["Z_2"]
