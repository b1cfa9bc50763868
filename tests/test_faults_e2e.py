"""The faults a hostile tester found, each against a real daemon, real folders and a real receiver: one
folder's trouble stays with that folder, and nothing is lost or uploaded twice.

Some tests need root (``chattr +i`` to make a folder immovable, a tmpfs for a small spool): they skip,
saying why, elsewhere."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.daemon import DaemonProcess, received_work_orders, write_config
from helpers.files import free_port
from helpers.receiver import ReceiverThread
from helpers.workorders import drop_atomically, make_work_order
from wodrop.failpoints import EXIT_FAILPOINT


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i``: not even root may rename it (or, for a folder, rename anything out of it)."""
    r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"chattr +i is not available here ({r.stderr.strip()}); needs root on ext4/xfs")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({r.stderr.strip()}); needs root")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def status_json(cfg: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "wodrop", "status", "--json", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def waiting_reason(cfg: Path, name: str) -> str:
    """The reason ``wodrop status`` gives for an inbox folder ("" when it is not listed)."""
    inbox = status_json(cfg).get("inbox") or {}
    return next((w["reason"] for w in inbox.get("waiting", []) if w["name"] == name), "")


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_folder_that_cannot_be_moved_is_held_with_a_reason_and_the_others_flow(tmp_path: Path) -> None:
    """Finding 1: a PermissionError in the claim made the daemon exit 1, on every restart."""
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url)
        d = DaemonProcess(cfg)
        locked = drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_LOCKED")
        with d:
            with immutable(locked):
                for name in ("WO_1", "WO_2"):
                    drop_atomically(tmp_path / "staging", d.paths["inbox"], name)
                d.wait_for(lambda: d.names_in("done") == {"WO_1", "WO_2"}, what="the movable ones done")
                d.wait_for(lambda: "cannot move it" in waiting_reason(cfg, "WO_LOCKED"), timeout=30,
                           what="a reason for the held folder")
                assert d.proc is not None and d.proc.poll() is None
            # fixed by the operator: claimed at its next try (backoff), without a restart
            d.wait_for(lambda: "WO_LOCKED" in d.names_in("done"), timeout=90, what="WO_LOCKED delivered")
            d.wait_for_finished()
    assert sorted(received_work_orders(rx.store)) == ["WO_1", "WO_2", "WO_LOCKED"]


def test_an_inbox_made_read_only_while_running_holds_folders_and_keeps_the_daemon_up(tmp_path: Path) -> None:
    """Finding 1, the inbox itself: nothing can be renamed out of it."""
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url, watch={"ready_marker": ".ready"})
        with DaemonProcess(cfg) as d:
            d.wait_for_event("wodrop_started")
            wo = drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_RO")
            with immutable(d.paths["inbox"]):
                (wo / ".ready").write_text("")
                d.wait_for(lambda: "cannot move it" in waiting_reason(cfg, "WO_RO"), timeout=30,
                           what="the reason")
                assert d.proc is not None and d.proc.poll() is None
            d.wait_for(lambda: "WO_RO" in d.names_in("done"), timeout=90, what="delivered once writable")


def test_names_that_are_not_utf8_are_left_alone_and_never_crash(tmp_path: Path) -> None:
    """Finding 2: ``WO_\\xff\\xfe`` crashed the daemon after the claim, and in recovery on every restart."""
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url)
        d = DaemonProcess(cfg)
        bad_inbox = os.fsencode(d.paths["inbox"]) + b"/WO_\xff\xfe"
        bad_processing = os.fsencode(d.paths["processing"]) + b"/WO_\xfa"
        for bad in (bad_inbox, bad_processing):
            os.mkdir(bad)
            with open(bad + b"/A-1.jpg", "wb") as f:
                f.write(b"\xff\xd8\xff photo \xff\xd9")
        with d:
            drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_OK")
            d.wait_for(lambda: d.names_in("done") == {"WO_OK"}, what="the good one done")
            d.wait_for(lambda: "not valid UTF-8" in waiting_reason(cfg, "WO_\\xff\\xfe"), timeout=30,
                       what="the reason, with the name escaped")
            assert d.stop() == 0
        assert os.path.isdir(bad_inbox) and os.path.isdir(bad_processing), "left where they were"
        with DaemonProcess(cfg, name="again") as again:  # and a restart does not crash on them either
            again.wait_for_event("wodrop_started")
            assert again.stop() == 0


def _deep(top: Path, depth: int) -> None:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        fd, old = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
        os.close(old)
    os.close(fd)


def _remove_deep(top: Path, depth: int) -> None:
    """shutil.rmtree recurses (RecursionError at this depth): walk down, remove bottom-up."""
    for n in range(depth, 0, -1):
        os.rmdir(top / "/".join(["d"] * n))


def test_a_work_order_nested_1500_deep_fails_validation_and_the_daemon_stays_up(tmp_path: Path) -> None:
    """Finding 3: RecursionError in the scanner, crash loop."""
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url)
        d = DaemonProcess(cfg)
        deep = make_work_order(tmp_path / "staging", "WO_DEEP")
        _deep(deep, 1500)
        os.rename(deep, d.paths["inbox"] / "WO_DEEP")
        try:
            with d:
                drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_OK")
                d.wait_for(lambda: d.names_in("done") == {"WO_OK"} and d.names_in("failed") == {"WO_DEEP"},
                           what="WO_OK done, WO_DEEP failed")
                report = json.loads((d.paths["failed"] / "WO_DEEP.error.json").read_text())
                assert [e["code"] for e in report["errors"]] == ["nested_directory"]
                assert d.stop() == 0
        finally:
            for where in ("inbox", "processing", "failed"):
                if (d.paths[where] / "WO_DEEP" / "d").exists():
                    _remove_deep(d.paths[where] / "WO_DEEP", 1500)


def test_a_spool_too_small_for_a_batch_seals_what_it_has_and_delivers_everything(tmp_path: Path) -> None:
    """Finding 4: with max_bytes 512MiB on a small disk the batcher waited for space while holding the
    open archive that took it: nothing delivered, ever."""
    state = tmp_path / "state"
    names = [f"WO_{i:02d}" for i in range(12)]
    with small_disk(state, "3m"), ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url, batch={"max_bytes": "512MiB", "max_age": "30s",
                                                    "linger": 0, "min_free_space": "256KiB"})
        with DaemonProcess(cfg) as d:
            for name in names:  # ~3.6 MB in all, 300 KB each: more than the spool can hold at once
                drop_atomically(tmp_path / "staging", d.paths["inbox"], name, images=("A.jpg",),
                                image_size=300_000)
            d.wait_for(lambda: d.names_in("done") == set(names), timeout=120, what="all delivered")
            d.wait_for_finished()
            sealed = [e for e in d.events() if e.get("event") == "batch_sealed"]
            assert any(e["reason"] == "space" for e in sealed), sealed
            assert d.stop() == 0
    assert sorted(received_work_orders(rx.store)) == names


def test_a_folder_that_cannot_reach_failed_does_not_block_the_ones_behind_it(tmp_path: Path) -> None:
    """Finding 5: one folder that could not be moved to failed/ stalled every folder behind it while
    /readyz said ready. Also a 255-byte name, whose report name would be too long."""
    port = free_port()
    long_name = "W" * 255
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url, status={"listen": f"127.0.0.1:{port}"})
        d = DaemonProcess(cfg)
        with d:
            d.wait_for_event("wodrop_started")
            with immutable(d.paths["failed"]):
                drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_BAD", images=("A.gif",))
                for name in ("WO_1", "WO_2"):
                    drop_atomically(tmp_path / "staging", d.paths["inbox"], name)
                d.wait_for(lambda: d.names_in("done") == {"WO_1", "WO_2"}, what="the good ones done")
                d.wait_for(lambda: readyz(port)[0] == 503 and "WO_BAD" in readyz(port)[1], timeout=30,
                           what="/readyz naming the stuck work order")
            d.wait_for(lambda: "WO_BAD" in d.names_in("failed"), timeout=90, what="WO_BAD in failed/")
            d.wait_for(lambda: readyz(port)[0] == 200, timeout=30, what="ready again")
            drop_atomically(tmp_path / "staging", d.paths["inbox"], long_name, images=("A.gif",))
            d.wait_for(lambda: long_name in d.names_in("failed"), what="the 255-byte name in failed/")
            d.wait_for_finished()
        reports = [p for p in d.paths["failed"].iterdir() if p.name.endswith(".error.json")]
        long_report = next(p for p in reports if p.name.startswith("W" * 100))
        assert len(long_report.name.encode()) <= 255
        assert json.loads(long_report.read_text())["work_order"] == long_name
    assert sorted(received_work_orders(rx.store)) == ["WO_1", "WO_2"]


def test_a_lost_state_db_does_not_upload_a_delivered_work_order_again(tmp_path: Path) -> None:
    """Finding 9: deleting the state DB while processing/ held work adopted and uploaded it again."""
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url)
        d = DaemonProcess(cfg, env={"WODROP_FAILPOINT": "upload.ledgered"}, name="crashed")
        drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_1")
        d.start()
        assert d.proc is not None and d.proc.wait(timeout=90) == EXIT_FAILPOINT
        assert "WO_1" in d.names_in("processing") and len(received_work_orders(rx.store)) == 1
        for f in d.paths["state"].glob("wodrop.sqlite3*"):
            f.unlink()
        shutil.rmtree(d.spool)  # the spool goes too: nothing left but processing/ and the share
        with DaemonProcess(cfg, name="fresh") as fresh:
            fresh.wait_for(lambda: fresh.names_in("done") == {"WO_1"}, what="WO_1 in done/")
            fresh.wait_for_finished()
            events = {e.get("event") for e in fresh.events()}
    assert received_work_orders(rx.store) == ["WO_1"], "uploaded once"
    assert {"state_db_new", "work_order_already_delivered"} <= events


def test_instances_on_one_share_know_each_others_deliveries(tmp_path: Path) -> None:
    """Finding 10: an id delivered by one instance and dropped again was uploaded again by another."""
    share = tmp_path / "share"
    names = [f"WO_{i}" for i in range(5)]
    with ReceiverThread(tmp_path / "received") as rx:
        cfgs = []
        for who in ("a", "b"):
            root = tmp_path / who
            root.mkdir()
            cfgs.append(write_config(root, rx.url, paths={
                "inbox": str(share / "inbox"), "done": str(share / "done"), "failed": str(share / "failed"),
                "processing": str(share / f"processing-{who}"), "state": str(root / "state")}))
        with DaemonProcess(cfgs[0], name="a") as a:
            for name in names:
                drop_atomically(tmp_path / "staging", a.paths["inbox"], name)
            a.wait_for(lambda: a.names_in("done") == set(names), what="delivered by a")
            a.wait_for_finished()
        with DaemonProcess(cfgs[1], name="b") as b:
            for name in names:  # the same ids again, to an instance whose own DB never saw them
                drop_atomically(tmp_path / "staging2", b.paths["inbox"], name)
            b.wait_for(lambda: b.names_in("failed") == set(names), what="all refused by b")
            b.wait_for_finished()
    assert sorted(received_work_orders(rx.store)) == names, "each id uploaded once"
    for name in names:
        report = json.loads((share / "failed" / f"{name}.error.json").read_text())
        assert [e["code"] for e in report["errors"]] == ["duplicate_work_order"]


def test_a_work_order_larger_than_the_whole_spool_disk_fails_and_does_not_block_the_others(
    tmp_path: Path,
) -> None:
    """Found by the hostile tester: a 5 MB work order on a 3 MB spool waited forever, and every folder
    behind it with it, while /healthz and /readyz said all was well."""
    state = tmp_path / "state"
    small = [f"WO_{i}" for i in range(4)]
    with small_disk(state, "3m"), ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url, batch={"min_free_space": "100KiB"})
        with DaemonProcess(cfg) as d:
            drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_BIG", images=("A.jpg",),
                            image_size=5_000_000)
            for name in small:
                drop_atomically(tmp_path / "staging", d.paths["inbox"], name)
            d.wait_for(lambda: d.names_in("done") == set(small) and d.names_in("failed") == {"WO_BIG"},
                       timeout=90, what="the small ones done, WO_BIG failed")
            d.wait_for_finished()
            assert d.stop() == 0
        report = json.loads((d.paths["failed"] / "WO_BIG.error.json").read_text())
        assert [e["code"] for e in report["errors"]] == ["too_large_for_spool"]
    assert sorted(received_work_orders(rx.store)) == small
