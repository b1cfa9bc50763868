"""End to end: a real `wodrop run` subprocess, a real receiver, real folders dropped into the inbox."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import zipfile
from datetime import datetime
from pathlib import Path

import pytest
from helpers.daemon import DaemonProcess, received_work_orders, write_config
from helpers.receiver import ReceiverThread
from helpers.workorders import drop_atomically, image_bytes, make_work_order

INVALID_KINDS = {
    "gif": (["photo.gif"], {"unsupported_file", "no_images"}),
    "badname": (["-1.jpg", "A.jpg"], {"bad_image_name"}),
    "dup": (["A-1.jpg", "A-1.png"], {"duplicate_image"}),
}


def _copy_slowly(src: Path, inbox: Path, pause: float) -> None:
    """Copy a folder into the inbox file by file, like a person dragging files over a slow share."""
    dest = inbox / src.name
    dest.mkdir()
    for f in sorted(src.iterdir()):
        data = f.read_bytes()
        with open(dest / f.name, "wb") as out:
            half = len(data) // 2
            out.write(data[:half])
            out.flush()
            time.sleep(pause / 2)
            out.write(data[half:])
        time.sleep(pause / 2)


def _drop_mixed(
    root: Path, inbox: Path, n: int, rng: random.Random, slow_pause: float
) -> tuple[set[str], dict[str, set[str]]]:
    staging = root / "staging"
    valid: set[str] = set()
    invalid: dict[str, set[str]] = {}
    slow_threads = []
    for i in range(n):
        name = f"WO_{i:04d}"
        roll = rng.random()
        if roll < 0.1:
            kind = rng.choice(sorted(INVALID_KINDS))
            images, codes = INVALID_KINDS[kind]
            drop_atomically(staging, inbox, name, images=images)
            invalid[name] = codes
        elif roll < 0.15:
            src = make_work_order(root / "slow-src", name, metadata={"id": i})
            t = threading.Thread(target=_copy_slowly, args=(src, inbox, slow_pause))
            t.start()
            slow_threads.append(t)
            valid.add(name)
        else:
            drop_atomically(staging, inbox, name, metadata={"id": i}, parameters={"p": 1})
            valid.add(name)
        if i % 20 == 0:
            time.sleep(0.05)
    for t in slow_threads:
        t.join()
    return valid, invalid


@pytest.mark.parametrize("mode,count", [("events", 200), ("polling", 60)])
def test_work_orders_flow_to_done_and_failed(tmp_path: Path, mode: str, count: int) -> None:
    rng = random.Random(42)
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url, watch={"mode": mode, "settle": "0.8s", "poll_interval": "0.2s"},
                           batch={"max_work_orders": 40, "max_age": "1s"})
        with DaemonProcess(cfg) as d:
            inbox = d.paths["inbox"]
            valid, invalid = _drop_mixed(tmp_path, inbox, count, rng, slow_pause=0.3)
            d.wait_for(lambda: d.names_in("done") == valid and d.names_in("failed") == set(invalid),
                       timeout=120, what="every work order in done/ or failed/")
            assert d.stop() == 0
        received = received_work_orders(rx.store)
    assert sorted(received) == sorted(valid), "each valid work order arrives in exactly one archive"
    for name, codes in invalid.items():
        report = json.loads((d.paths["failed"] / f"{name}.error.json").read_text())
        assert report["work_order"] == name and report["stage"] == "validation"
        assert codes <= {e["code"] for e in report["errors"]}, (name, report)
        assert all(e["message"] for e in report["errors"])
    assert not any(d.paths["inbox"].iterdir()) and not [p for p in d.paths["processing"].iterdir()
                                                         if not p.name.startswith(".")]
    # slow copies were complete when claimed: their done/ copies are byte-identical to the sources
    for src in (tmp_path / "slow-src").iterdir() if (tmp_path / "slow-src").exists() else []:
        for f in src.iterdir():
            assert (d.paths["done"] / src.name / f.name).read_bytes() == f.read_bytes()


def test_slow_copy_is_not_claimed_before_its_last_file(tmp_path: Path) -> None:
    """Pauses shorter than watch.settle between files, and a pre-sized (zero-tail) image that is filled
    in only after a full settle window: the folder must wait, then arrive complete in done/."""
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url, watch={"settle": "1s"})
        with DaemonProcess(cfg) as d:
            folder = d.paths["inbox"] / "WO_SLOW"
            folder.mkdir()
            data = image_bytes("A-0.jpg", pad_to=50_000)
            for i in range(4):  # one file every 0.7 s (< settle)
                (folder / f"A-{i}.jpg").write_bytes(data)
                time.sleep(0.7)
            # Windows-style copy: the file is pre-sized with zeros, content arrives later.
            big = folder / "B.jpg"
            with open(big, "wb") as f:
                f.truncate(len(data))
            time.sleep(1.4)  # a full settle window with no change: it must still not be claimed
            assert (d.paths["inbox"] / "WO_SLOW").exists(), "claimed while an image was still zeros"
            with open(big, "r+b") as f:
                f.write(data)
            last_write = time.time()
            d.wait_for(lambda: "WO_SLOW" in d.names_in("done") or "WO_SLOW" in d.names_in("failed"),
                       timeout=30, what="WO_SLOW finished")
            assert "WO_SLOW" in d.names_in("done"), (d.paths["failed"] / "WO_SLOW.error.json").read_text()
            claimed = [e for e in d.events() if e.get("event") == "work_order_claimed"]
            held = [e for e in d.events() if e.get("event") == "work_order_looks_incomplete"]
        assert held, "the zero-tail image should have made the daemon wait"
        claimed_at = datetime.fromisoformat(claimed[0]["timestamp"].replace("Z", "+00:00")).timestamp()
        assert claimed_at >= last_write
        for i in range(4):
            assert (d.paths["done"] / "WO_SLOW" / f"A-{i}.jpg").read_bytes() == data
        assert (d.paths["done"] / "WO_SLOW" / "B.jpg").read_bytes() == data


def test_ready_marker_mode_waits_for_marker_and_does_not_archive_it(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url, watch={"ready_marker": ".ready", "settle": "0.3s"})
        with DaemonProcess(cfg) as d:
            drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_M")
            time.sleep(1.5)
            assert (d.paths["inbox"] / "WO_M").exists(), "claimed without its ready marker"
            (d.paths["inbox"] / "WO_M" / ".ready").touch()
            d.wait_for(lambda: "WO_M" in d.names_in("done"), timeout=30, what="WO_M done")
        archives = list(rx.store.glob("*.zip"))
        with zipfile.ZipFile(archives[0]) as zf:
            names = zf.namelist()
    assert names and not any(n.endswith(".ready") for n in names)


def test_duplicate_work_order_is_rejected_and_never_uploaded_twice(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url)
        with DaemonProcess(cfg) as d:
            drop_atomically(tmp_path / "s1", d.paths["inbox"], "WO_D")
            d.wait_for(lambda: "WO_D" in d.names_in("done"), timeout=30, what="first copy done")
            drop_atomically(tmp_path / "s2", d.paths["inbox"], "WO_D")
            d.wait_for(lambda: "WO_D" in d.names_in("failed"), timeout=30, what="second copy failed")
        report = json.loads((d.paths["failed"] / "WO_D.error.json").read_text())
        assert [e["code"] for e in report["errors"]] == ["duplicate_work_order"]
        assert received_work_orders(rx.store) == ["WO_D"]
    # `wodrop validate` by hand, with the daemon's config, knows what the daemon already sent
    again = make_work_order(tmp_path / "again", "WO_D")
    other = make_work_order(tmp_path / "again", "WO_NEW")
    cmd = [sys.executable, "-m", "wodrop", "validate", "--json", "-c", str(cfg), str(again.parent)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    doc = {w["id"]: w for w in json.loads(r.stdout)["work_orders"]}
    assert r.returncode == 1
    assert [e["code"] for e in doc["WO_D"]["errors"]] == ["duplicate_work_order"]
    assert doc[other.name]["valid"]


def test_names_taken_in_done_get_a_suffix_and_nothing_is_overwritten(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url, format={"on_duplicate": "allow"})
        done = tmp_path / "share" / "done"
        done.mkdir(parents=True, exist_ok=True)
        (done / "WO_X").mkdir()
        (done / "WO_X" / "keep.txt").write_text("a user's file")
        with DaemonProcess(cfg) as d:
            drop_atomically(tmp_path / "s1", d.paths["inbox"], "WO_X")
            d.wait_for(lambda: len(d.names_in("done")) == 2, timeout=30, what="suffixed copy in done/")
    assert (done / "WO_X" / "keep.txt").read_text() == "a user's file"
    (other,) = d.names_in("done") - {"WO_X"}
    assert other.startswith("WO_X.") and (done / other / "task_A-0.jpg").exists()


def test_top_level_files_and_dot_folders_are_left_alone(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url)
        with DaemonProcess(cfg) as d:
            inbox = d.paths["inbox"]
            (inbox / "notes.txt").write_text("not a work order")
            make_work_order(inbox, ".staging_WO")
            drop_atomically(tmp_path / "s", inbox, "WO_OK")
            d.wait_for(lambda: "WO_OK" in d.names_in("done"), timeout=30, what="WO_OK done")
            d.wait_for_event("inbox_stray_file", timeout=30)
            time.sleep(1)  # a chance to touch what it must leave alone (asserted below)
        assert (inbox / "notes.txt").read_text() == "not a work order"
        assert (inbox / ".staging_WO").is_dir()
    assert os.listdir(d.paths["failed"]) == []
