"""Pure parts of discover/settle: the settle state machine and network-filesystem detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.pipeline.settle import FolderSnapshot, Settler
from daemon.pipeline.watch import choose_polling, filesystem_type, is_network_fs

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
