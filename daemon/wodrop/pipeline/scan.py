"""Scan the inbox's top level and take a signature of each folder (blocking: runs in a thread)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from wodrop.pipeline.settle import FolderSnapshot
from wodrop.workorder.names import is_junk, is_temp


def _walk(root: Path, rel: str, entries: list[tuple[str, int, int, int]], temp: list[bool],
          extra_temp: tuple[str, ...]) -> None:
    try:
        it = os.scandir(root / rel if rel else root)
    except FileNotFoundError:
        raise
    except OSError:
        # Unreadable sub-folder: still part of the signature; the validator will report it.
        entries.append((rel + "/!unreadable", 0, 0, 0))
        return
    with it:
        for e in it:
            path = f"{rel}/{e.name}" if rel else e.name
            if is_temp(e.name, extra_temp):
                temp[0] = True
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                temp[0] = True  # vanished while we looked: something is still moving files
                continue
            entries.append((path, st.st_size, st.st_mtime_ns, st.st_ino))
            if stat.S_ISDIR(st.st_mode):
                _walk(root, path, entries, temp, extra_temp)


def snapshot_folder(
    folder: Path, ready_marker: str | None, extra_temp: tuple[str, ...] = ()
) -> FolderSnapshot:
    """Signature of one folder; raises FileNotFoundError if it is gone (claimed elsewhere, removed)."""
    entries: list[tuple[str, int, int, int]] = []
    temp = [False]
    _walk(folder, "", entries, temp, extra_temp)
    entries.sort()
    has_marker = ready_marker is not None and any(p == ready_marker for p, *_ in entries)
    return FolderSnapshot(tuple(entries), temp[0], has_marker)


def scan_inbox(
    inbox: Path, ready_marker: str | None, extra_temp: tuple[str, ...] = ()
) -> tuple[dict[str, FolderSnapshot], list[str]]:
    """All candidate folders' snapshots, plus the names of top-level entries that are not folders
    (files dropped at the top level are not work orders; they are reported, never touched).

    Skipped: junk (``.DS_Store``, ``@eaDir``...), temp-looking names, and dot-folders (a common
    staging convention: copy to ``.WO_1`` then rename to ``WO_1``).
    """
    folders: dict[str, FolderSnapshot] = {}
    strays: list[str] = []
    with os.scandir(inbox) as it:
        for e in it:
            if e.name.startswith(".") or is_junk(e.name) or is_temp(e.name, extra_temp):
                continue
            try:
                if not e.is_dir(follow_symlinks=False):
                    strays.append(e.name)
                    continue
                folders[e.name] = snapshot_folder(Path(e.path), ready_marker, extra_temp)
            except FileNotFoundError:
                continue
    return folders, strays
