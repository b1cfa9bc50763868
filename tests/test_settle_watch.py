"""Discover/settle: the settle state machine and its reasons in words, the folder scanner (real
folders: deep, long, not UTF-8) and network-filesystem detection."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from wodrop.config import Config
from wodrop.pipeline.scan import InboxScanner, _Walk, snapshot_folder
from wodrop.pipeline.settle import FolderSnapshot, Settler
from wodrop.pipeline.watch import (
    _poll,
    _StopOrRestart,
    choose_polling,
    filesystem_type,
    is_network_fs,
    watch_inbox,
)
from wodrop.runtime import Runtime
from wodrop.state import StateDB

A_ENTRIES = (("a.jpg", 10, 1, 1),)
A = FolderSnapshot.of(A_ENTRIES, False, False)
A_GROWN = FolderSnapshot.of((("a.jpg", 20, 2, 1),), False, False)
A_TEMP_ENTRIES = (("a.jpg", 10, 1, 1), ("b.jpg.part", 5, 1, 2))
A_TEMP = FolderSnapshot.of(A_TEMP_ENTRIES, True, False)
EMPTY = FolderSnapshot.of((), False, False)


def test_folder_is_ready_only_after_settle_seconds_without_change() -> None:
    s = Settler(settle=5)
    assert s.update({"WO": A}, now=0) == []
    assert s.update({"WO": A}, now=4.9) == []
    assert s.update({"WO": A_GROWN}, now=5.0) == []  # changed: the clock starts again
    assert s.update({"WO": A_GROWN}, now=9.9) == []
    assert s.update({"WO": A_GROWN}, now=10.0) == ["WO"]


def test_temp_files_and_empty_folders_never_settle() -> None:
    s = Settler(settle=1)
    for t in range(0, 100, 10):
        assert s.update({"WO": A_TEMP, "E": EMPTY}, now=t) == []


def test_ready_marker_mode_ignores_time_and_waits_for_the_marker() -> None:
    s = Settler(settle=1, ready_marker=".ready")
    assert s.update({"WO": A}, now=100) == []
    marked = FolderSnapshot.of((*A_ENTRIES, (".ready", 0, 1, 3)), False, True)
    assert s.update({"WO": marked}, now=100) == ["WO"]


def test_hold_gives_one_more_window_only() -> None:
    s = Settler(settle=2)
    s.update({"WO": A}, now=0)
    assert s.update({"WO": A}, now=2) == ["WO"]
    assert s.hold("WO", now=2) is True
    assert s.update({"WO": A}, now=3.9) == []
    assert s.update({"WO": A}, now=4) == ["WO"]
    assert s.hold("WO", now=4) is False


def test_oldest_first_and_forgetting_gone_folders() -> None:
    s = Settler(settle=1)
    s.update({"B": A}, now=0)
    s.update({"B": A, "A": A}, now=0.5)
    assert s.update({"B": A, "A": A}, now=2) == ["B", "A"]
    s.update({"A": A}, now=3)
    assert s.first_seen == {"A": 0.5}


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /srv/share rw,relatime shared:2 - nfs4 nas:/export rw
31 22 0:41 / /mnt/smb\\040drive rw - cifs //nas/drop rw
32 22 0:42 / /mnt/gdrive rw - fuse.rclone gdrive: rw
"""


def test_filesystem_type_uses_the_longest_mount_prefix() -> None:
    assert filesystem_type(Path("/srv/share/inbox"), MOUNTINFO) == "nfs4"
    assert filesystem_type(Path("/srv/shared"), MOUNTINFO) == "ext4"
    assert filesystem_type(Path("/mnt/smb drive/in"), MOUNTINFO) == "cifs"
    assert filesystem_type(Path("/mnt/gdrive/x"), MOUNTINFO) == "fuse.rclone"


def test_network_filesystems_choose_polling() -> None:
    assert all(is_network_fs(t) for t in ("nfs", "nfs4", "cifs", "smb3", "fuse.sshfs"))
    assert not any(is_network_fs(t) for t in ("ext4", "xfs", "btrfs", "tmpfs", "overlay"))
    assert choose_polling("polling", Path("/")) and not choose_polling("events", Path("/"))


def test_watchfiles_force_polling_env_makes_auto_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "1")
    assert choose_polling("auto", Path("/")) and not choose_polling("events", Path("/"))
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "0")
    assert not choose_polling("auto", Path("/"))


def test_an_inbox_whose_path_is_not_utf8_is_polled_whatever_the_mode(tmp_path: Path) -> None:
    inbox = Path(os.fsdecode(os.fsencode(tmp_path) + b"/inbox_\xff"))
    inbox.mkdir()
    assert choose_polling("events", inbox) and choose_polling("auto", inbox)
    assert not choose_polling("events", tmp_path)


async def test_polling_looks_at_the_top_level_only_and_ends_on_restart(tmp_path: Path) -> None:
    """Our own poller (one listing per poll, no stat of each entry): a folder added or renamed at the
    top level is a change; a file written inside a folder is not (the intake's rescans see those, as
    with inotify); names that are not UTF-8 are names like any other."""
    inbox = tmp_path / "inbox"
    (inbox / "WO_1").mkdir(parents=True)
    os.mkdir(os.fsencode(inbox) + b"/bad\xff")
    stop, restart = asyncio.Event(), asyncio.Event()
    polls = _poll(inbox, lambda: 0.01, _StopOrRestart(stop, restart))
    assert await anext(polls) is False
    (inbox / "WO_1" / "A-1.jpg").write_bytes(b"x")
    assert await anext(polls) is False
    (inbox / "WO_2").mkdir()
    assert await anext(polls) is True
    assert await anext(polls) is False
    os.rename(os.fsencode(inbox) + b"/bad\xff", os.fsencode(inbox) + b"/bad\xfe")
    assert await anext(polls) is True
    restart.set()  # the intake saw the inbox come back: this watch ends
    with pytest.raises(StopAsyncIteration):
        await anext(polls)


def _watch_runtime(tmp_path: Path, mode: str) -> Runtime:
    paths = {k: tmp_path / k for k in ("inbox", "processing", "done", "failed", "state")}
    for p in paths.values():
        p.mkdir()
    cfg = Config.model_validate({"paths": paths, "status": {"listen": "off"},
                                 "watch": {"mode": mode, "poll_interval": "0.1s"}})
    return Runtime(cfg=cfg, db=StateDB(paths["state"] / "wodrop.sqlite3"))


async def _woken_by(wake: asyncio.Event, change: Callable[[], object], within: float = 10.0) -> bool:
    wake.clear()
    change()
    try:
        await asyncio.wait_for(wake.wait(), within)
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("mode", ["events", "polling"])
async def test_the_watcher_keeps_watching_through_names_that_are_not_utf8(tmp_path: Path, mode: str) -> None:
    """watchfiles cannot hand over a name that is not UTF-8 and ended its watch at each change of
    one (its poller at every poll): the watcher restarted, again and again, with a growing back-off,
    deaf to everything meanwhile. Now such a change wakes the intake like any other, with no restart."""
    rt = _watch_runtime(tmp_path, mode)
    inbox = os.fsencode(rt.cfg.paths.inbox)
    os.mkdir(inbox + b"/bad\xff")
    wake, stop, restart = asyncio.Event(), asyncio.Event(), asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(watch_inbox(rt, wake, stop, restart))
        try:
            deadline, n = time.monotonic() + 10, 0
            while not await _woken_by(wake, lambda n=n: os.mkdir(inbox + b"/first%d" % n), 0.5):
                assert time.monotonic() < deadline, "the watcher never saw a change"
                n += 1  # not watching yet: another change
            for i in range(3):
                assert await _woken_by(wake, lambda i=i: os.mkdir(inbox + b"/bad%d\xfe" % i))
            assert await _woken_by(wake, lambda: os.mkdir(inbox + b"/WO_1"))
            assert rt.watcher == mode
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            rt.db.close()
    assert [e["event"] for e in logs] == ["watcher_started"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 3.0), st.integers(0, 3), st.booleans()), min_size=1, max_size=40),
       st.floats(0.5, 5.0))
def test_never_ready_before_settle_seconds_without_change(
    steps: list[tuple[float, int, bool]], settle: float
) -> None:
    """Whatever the sequence of scans, a folder is reported only after `settle` seconds with the same
    signature and no temp file, and is reported once it has been stable that long."""
    s = Settler(settle=settle)
    now, last_change, last_sig = 0.0, 0.0, None
    for gap, version, temp in steps:
        now += gap
        snap = FolderSnapshot.of((("a.jpg", version, version, 1),), temp, False)
        if snap.signature != last_sig:
            last_change, last_sig = now, snap.signature
        ready = s.update({"WO": snap}, now=now)
        stable = now - last_change >= settle and not temp
        assert (ready == ["WO"]) == stable


# --- why a folder is waiting (Settler.reason) ---

A_PART = FolderSnapshot.of(A_TEMP_ENTRIES, True, False, "b.jpg.part")


def test_reason_while_settling_counts_down() -> None:
    s = Settler(settle=30)
    s.update({"WO": A}, now=100)
    assert s.reason("WO", now=100) == "settling: no change for 0 s yet, 30 s left"
    assert s.reason("WO", now=112.4) == "settling: no change for 12 s yet, 18 s left"
    assert s.reason("WO", now=129.5) == "settling: no change for 29 s yet, 1 s left"  # never "0 s left"
    s.update({"WO": A_GROWN}, now=120)  # changed: the count starts again
    assert s.reason("WO", now=125) == "settling: no change for 5 s yet, 25 s left"
    assert s.update({"WO": A_GROWN}, now=150) == ["WO"]
    assert s.reason("WO", now=150) == "ready: waiting to be claimed"


def test_reason_temp_file_empty_folder_and_unknown_name() -> None:
    s = Settler(settle=5)
    s.update({"WO": A_PART, "E": EMPTY, "V": A_TEMP}, now=0)
    assert s.reason("WO", now=60) == "a temporary file is present (b.jpg.part): still being copied"
    assert s.reason("V", now=60) == "files appeared or vanished while it was scanned: still being copied"
    assert s.reason("E", now=60) == "empty folder"
    assert s.reason("nope", now=60) == "not scanned yet"


def test_reason_ready_marker() -> None:
    s = Settler(settle=5, ready_marker="READY.txt")
    s.update({"WO": A, "T": A_PART}, now=0)
    assert s.reason("WO", now=60) == "no ready marker yet (waiting for READY.txt)"
    assert s.reason("T", now=60) == "no ready marker yet (waiting for READY.txt)"
    marked = FolderSnapshot.of((*A_TEMP_ENTRIES, ("READY.txt", 0, 1, 3)), True, True, "b.jpg.part")
    s.update({"WO": marked}, now=61)
    assert s.reason("WO", now=61) == "a temporary file is present (b.jpg.part): still being copied"


def test_reason_after_a_zero_tail_hold() -> None:
    s = Settler(settle=10)
    s.update({"WO": A}, now=0)
    assert s.update({"WO": A}, now=10) == ["WO"]
    assert s.hold("WO", now=10)
    assert s.reason("WO", now=13) == "an image still ends in zeros (still being copied?): waiting 7 s more"
    s.update({"WO": A_GROWN}, now=15)  # the copy went on: an ordinary settle again
    assert s.reason("WO", now=15) == "settling: no change for 0 s yet, 10 s left"


def test_reason_names_a_temp_file_that_is_not_utf8_printably() -> None:
    name = os.fsdecode(b"sub/\xffx.part")
    s = Settler(settle=5)
    s.update({"WO": FolderSnapshot.of(((name, 1, 1, 1),), True, False, name)}, now=0)
    reason = s.reason("WO", now=1)
    assert reason == "a temporary file is present (sub/\\xffx.part): still being copied"
    reason.encode("utf-8")


_SETTLING = re.compile(r"settling: no change for (\d+) s yet, (\d+) s left")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 3.0), st.integers(0, 3), st.booleans(), st.booleans()),
                min_size=1, max_size=40),
       st.floats(0.5, 5.0), st.floats(0.0, 3.0))
def test_reason_agrees_with_update(
    steps: list[tuple[float, int, bool, bool]], settle: float, later: float
) -> None:
    """Whatever the scans, the reason matches what update decided: "ready" exactly when it returned
    the folder, a temp reason exactly when a temp file is there, and a countdown that adds up."""
    s = Settler(settle=settle)
    now, last_change, last_sig = 0.0, 0.0, None
    for gap, version, temp, empty in steps:
        now += gap
        sig = () if empty else (("a.jpg", version, version, 1),)
        snap = FolderSnapshot.of(sig, temp, False, "a.jpg.part" if temp else None)
        if snap.signature != last_sig:
            last_change, last_sig = now, snap.signature
        ready = s.update({"WO": snap}, now=now)
        reason = s.reason("WO", now=now)
        assert (reason == "ready: waiting to be claimed") == (ready == ["WO"])
        if temp:
            assert reason == "a temporary file is present (a.jpg.part): still being copied"
        elif empty:
            assert reason == "empty folder"
        elif not ready:
            m = _SETTLING.fullmatch(reason)
            assert m, reason
            quiet, left = int(m.group(1)), int(m.group(2))
            assert quiet <= now - last_change < quiet + 1
            assert left >= 1 and left - 1 < settle - (now - last_change) <= left
    s.reason("WO", now=now + later)  # any later time: never raises


# --- the scanner on real folders ---


def _paths(folder: Path) -> list[str]:
    """The relative paths a snapshot's signature is made of."""
    walk = _Walk(str(folder), ())
    walk.run()
    return sorted(p for p, *_ in walk.entries)


def _chain(root: Path, depth: int, name: str) -> list[Path]:
    """``root/name/name/...`` ``depth`` folders deep; the folders, outermost first."""
    made, path = [], root
    for _ in range(depth):
        path = path / name
        path.mkdir()
        made.append(path)
    return made


def test_scanner_walks_1500_nested_folders(tmp_path: Path) -> None:
    """A work order nested ~1,500 deep made the recursive walk raise RecursionError (not an OSError:
    it killed the intake, and again after every restart)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "WO_ok").mkdir()
    (inbox / "WO_ok" / "A-1.jpg").write_bytes(b"x")
    (inbox / "WO_deep").mkdir()
    chain = _chain(inbox / "WO_deep", 1500, "d")
    (chain[-1] / "A-1.jpg").write_bytes(b"deep")
    try:
        scan = InboxScanner().scan(inbox, None)
        folders = scan.snapshots
        assert sorted(folders) == ["WO_deep", "WO_ok"] and scan.strays == []
        deep = folders["WO_deep"]
        paths = _paths(inbox / "WO_deep")
        assert len(paths) == deep.entries == 1501 and not deep.has_temp
        assert "/".join(["d"] * 1500) + "/A-1.jpg" in paths
        assert not any("!unreadable" in p for p in paths)
        (chain[-1] / "A-1.jpg").write_bytes(b"deeper")  # a change at the very bottom is seen
        assert snapshot_folder(inbox / "WO_deep", None).signature != deep.signature
    finally:
        (chain[-1] / "A-1.jpg").unlink()
        for folder in reversed(chain):  # shutil.rmtree recurses too (Python 3.11)
            folder.rmdir()


def test_scanner_survives_paths_longer_than_path_max(tmp_path: Path) -> None:
    """Past PATH_MAX (4096 bytes) the kernel answers ENAMETOOLONG: recorded as unreadable, not raised."""
    wo = tmp_path / "WO_long"
    wo.mkdir()
    name = "n" * 200
    fd = os.open(wo, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(30):  # 30 x 201 bytes: well past PATH_MAX, made relative to each parent
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    snap = snapshot_folder(wo, None)
    unreadable = [p for p in _paths(wo) if p.endswith("!unreadable")]
    assert len(unreadable) == 1 and len(os.fsencode(unreadable[0])) > 3900
    assert snap.signature == snapshot_folder(wo, None).signature  # stable: the folder can settle
    shutil.rmtree(wo)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_scanner_records_a_sub_folder_it_may_not_read(tmp_path: Path) -> None:
    wo = tmp_path / "WO"
    (wo / "locked").mkdir(parents=True)
    (wo / "locked" / "A-1.jpg").write_bytes(b"x")
    (wo / "locked").chmod(0)
    try:
        snap = snapshot_folder(wo, None)
    finally:
        (wo / "locked").chmod(0o755)
    assert _paths(wo) == ["locked", "locked/!unreadable"] and snap.entries == 2


def test_scanner_and_reason_with_names_that_are_not_utf8(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    wo = os.fsencode(inbox) + b"/WO_\xff\xfe"
    os.mkdir(wo)
    os.mkdir(wo + b"/sub_\xe9")
    with open(wo + b"/sub_\xe9/A-1.jpg.part", "wb") as f:
        f.write(b"partial")
    with open(wo + b"/z.tmp", "wb") as f:
        f.write(b"")
    folders = InboxScanner().scan(inbox, None).snapshots
    name = os.fsdecode(b"WO_\xff\xfe")
    assert list(folders) == [name]
    snap = folders[name]
    assert snap.has_temp and snap.temp_name == os.fsdecode(b"sub_\xe9/A-1.jpg.part")  # first by name
    s = Settler(settle=5)
    s.update(folders, now=0)
    reason = s.reason(name, now=1)
    assert reason == "a temporary file is present (sub_\\xe9/A-1.jpg.part): still being copied"
    json.dumps({"reason": reason}, ensure_ascii=False).encode("utf-8")


def test_scanner_temp_name_and_marker(tmp_path: Path) -> None:
    wo = tmp_path / "WO"
    (wo / "b").mkdir(parents=True)
    (wo / "b" / "x.PART").write_bytes(b"")
    (wo / "a.crdownload").write_bytes(b"")
    (wo / "READY").write_bytes(b"")
    snap = snapshot_folder(wo, "READY")
    assert snap.has_temp and snap.temp_name == "a.crdownload" and snap.has_marker
    (wo / "a.crdownload").unlink()
    assert snapshot_folder(wo, "READY").temp_name == "b/x.PART"
    (wo / "b" / "x.PART").rename(wo / "b" / "x.jpg")
    snap = snapshot_folder(wo, "READY")
    assert not snap.has_temp and snap.temp_name is None
