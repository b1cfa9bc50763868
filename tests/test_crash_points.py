"""Crash at every named fail point of the lifecycle, restart, and check the promise: every work order
received exactly once and byte-identical, all in done/ (the invalid one in failed/ with its report),
nothing stranded in processing/, the spool empty, and no user file touched. The receiver reports a
platform error for every valid work order (its metadata.json lacks ``site``), so the follow-up's points
are crossed too: each gets exactly one ``done/<WO>.platform.json``."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import zipfile
from pathlib import Path

import pytest
from helpers.daemon import DaemonProcess, received_work_orders, write_config
from helpers.receiver import ReceiverThread
from helpers.workorders import drop_atomically, make_work_order
from wodrop.failpoints import EXIT_FAILPOINT, POINTS

VALID = ["WO_A", "WO_B", "WO_C"]
INVALID = "WO_BAD"
#: a point reached only on the way back from another crash: crash there first
PRE_CRASH = {"discard.recorded": "batch.assigned"}


def _tree(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _crash_at(cfg: Path, point: str, name: str) -> DaemonProcess:
    d = DaemonProcess(cfg, env={"WODROP_FAILPOINT": point}, name=name).start()
    assert d.proc is not None
    try:
        code = d.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        d.kill()
        raise AssertionError(f"the daemon never reached fail point {point}:\n"
                             + d.log_path.read_text()[-3000:]) from None
    assert code == EXIT_FAILPOINT, f"exit {code}, not the fail point's:\n" + d.log_path.read_text()[-3000:]
    return d


@pytest.mark.parametrize("point", sorted(POINTS))
def test_crash_at_every_point_loses_nothing_and_sends_nothing_twice(tmp_path: Path, point: str) -> None:
    originals: dict[str, dict[str, str]] = {}
    with ReceiverThread(tmp_path / "received", require_metadata_keys=("site",)) as rx:
        cfg = write_config(tmp_path, rx.url, batch={"max_work_orders": 2, "max_age": "0.5s"},
                           watch={"settle": "0.3s"}, followup={"poll_interval": "1s"})
        d = DaemonProcess(cfg)
        inbox = d.paths["inbox"]
        for name in VALID:
            src = make_work_order(tmp_path / "originals", name, metadata={"wo": name})
            originals[name] = _tree(src)
            drop_atomically(tmp_path / "staging", inbox, name, metadata={"wo": name})
        drop_atomically(tmp_path / "staging", inbox, INVALID, images=("A-1.jpg", "A-1.png"))
        if point in PRE_CRASH:
            _crash_at(cfg, PRE_CRASH[point], "pre-crash")
        _crash_at(cfg, point, "crashed")

        with DaemonProcess(cfg, name="restarted") as d:
            d.wait_for(lambda: d.names_in("done") == set(VALID) and d.names_in("failed") == {INVALID},
                       timeout=90, what="every work order in done/ or failed/")
            d.wait_for_finished(timeout=60)
            d.wait_for_db("SELECT DISTINCT followup FROM batches WHERE state = 'done'", [("done",)],
                          timeout=60, what="the platform's verdict on every batch")
            assert d.stop() == 0

    # received exactly once, and each received archive is byte for byte what was sealed
    assert sorted(received_work_orders(rx.store)) == VALID, "each valid work order received exactly once"
    db = sqlite3.connect(d.db_path)
    sealed = dict(db.execute("SELECT name, sha256 FROM batches WHERE state = 'done'"))
    received = {}
    for meta_path in rx.store.glob("*.json"):
        if meta_path.name.endswith(".session.json"):
            continue
        meta = json.loads(meta_path.read_text())
        data = meta_path.with_suffix(".zip").read_bytes()
        assert hashlib.sha256(data).hexdigest() == meta["sha256"] == sealed[meta["filename"]]
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                wo, fname = info.filename.split("/", 1)
                received[(wo, fname)] = hashlib.sha256(zf.read(info)).hexdigest()
    for wo in VALID:  # the photos the platform got are the user's, byte for byte; done/ holds them unchanged
        assert {f: h for (w, f), h in received.items() if w == wo} == originals[wo]
        assert _tree(d.paths["done"] / wo) == originals[wo]
        platform = sorted(d.paths["done"].glob(f"{wo}*.platform.json"))
        assert [p.name for p in platform] == [f"{wo}.platform.json"], "one platform report, written once"
        assert [e["code"] for e in json.loads(platform[0].read_text())["errors"]] == ["missing_metadata_key"]
    report = json.loads((d.paths["failed"] / f"{INVALID}.error.json").read_text())
    assert report["work_order"] == INVALID and report["errors"][0]["code"] == "duplicate_image"
    assert sorted((d.paths["failed"] / INVALID).iterdir()) == sorted(
        (d.paths["failed"] / INVALID) / n for n in ("A-1.jpg", "A-1.png"))
    assert not [p for p in d.paths["processing"].iterdir() if not p.name.startswith(".")]
    assert list(d.spool.iterdir()) == []
    assert dict(db.execute("SELECT state, COUNT(*) FROM work_orders GROUP BY state")) == \
        {"done": len(VALID), "failed": 1}


def test_every_point_is_reached_in_the_code() -> None:
    """Each named point is called somewhere (a renamed call would make its crash test vacuous)."""
    src = "\n".join(p.read_text() for p in (Path(__file__).parents[1] / "daemon" / "wodrop").rglob("*.py"))
    for point in POINTS:
        assert f'failpoint("{point}")' in src, point


def test_unknown_fail_point_is_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:9")
    d = DaemonProcess(cfg, env={"WODROP_FAILPOINT": "no.such.point"}).start()
    assert d.proc is not None and d.proc.wait(timeout=30) == 2
    assert "unknown fail point" in d.log_path.read_text()
