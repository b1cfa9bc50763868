"""Pure parts of discover/settle: the settle state machine and network-filesystem detection."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wodrop.pipeline.settle import FolderSnapshot, Settler
from wodrop.pipeline.watch import choose_polling, filesystem_type, is_network_fs

A = FolderSnapshot((("a.jpg", 10, 1, 1),), False, False)
A_GROWN = FolderSnapshot((("a.jpg", 20, 2, 1),), False, False)
A_TEMP = FolderSnapshot((("a.jpg", 10, 1, 1), ("b.jpg.part", 5, 1, 2)), True, False)
EMPTY = FolderSnapshot((), False, False)


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
    marked = FolderSnapshot((*A.signature, (".ready", 0, 1, 3)), False, True)
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
    assert set(s.pending()) == {"A"}


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
        snap = FolderSnapshot((("a.jpg", version, version, 1),), temp, False)
        if snap.signature != last_sig:
            last_change, last_sig = now, snap.signature
        ready = s.update({"WO": snap}, now=now)
        stable = now - last_change >= settle and not temp
        assert (ready == ["WO"]) == stable
