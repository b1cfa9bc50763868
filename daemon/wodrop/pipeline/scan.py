"""Scan the inbox's top level and take a signature of each folder (blocking: runs in a thread)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from wodrop.pipeline.settle import FolderSnapshot
from wodrop.workorder.names import is_junk, is_temp

#: signature entry of a sub-folder that cannot be listed (permission denied, path too long, a loop)
UNREADABLE = "!unreadable"

_Entry = tuple[str, int, int, int]


class _Walk:
    """One folder's walk. Iterative (an explicit stack of relative paths), so a tree of any depth
    costs memory, never Python stack: a work order nested 1,500 folders deep must not crash the
    scanner (RecursionError is not an OSError: it would kill the intake, again at every restart)."""

    def __init__(self, root: Path, extra_temp: tuple[str, ...]) -> None:
        self.root, self.extra_temp = root, extra_temp
        self.entries: list[_Entry] = []
        self.has_temp = False
        self.temp_name: str | None = None

    def _temp(self, path: str) -> None:
        self.has_temp = True
        if self.temp_name is None or path < self.temp_name:
            self.temp_name = path  # the first in name order: the same file from one scan to the next

    def _vanished(self) -> None:
        """Something vanished while we looked (or a listing broke off): files are still moving, so
        this signature must not count as settled."""
        self.has_temp = True

    def run(self) -> None:
        stack = [""]
        while stack:
            rel = stack.pop()
            try:
                it = os.scandir(self.root / rel if rel else self.root)
            except FileNotFoundError:
                if not rel:
                    raise  # the folder itself is gone (claimed elsewhere, removed)
                self._vanished()  # a sub-folder vanished between its stat and its listing
                continue
            except OSError:
                # Unreadable (sub-)folder (EACCES, ENAMETOOLONG deep down, ELOOP...): still part of the
                # signature, so the folder can settle; the validator reports it. (The folder itself
                # gives "/!unreadable", as it always did.)
                self.entries.append((f"{rel}/{UNREADABLE}", 0, 0, 0))
                continue
            try:
                with it:
                    for e in it:
                        self._entry(rel, e, stack)
            except OSError:
                # The listing broke off half-way (EIO on a share, a folder removed under us): the
                # signature is incomplete, so do not let it settle on it.
                self._vanished()

    def _entry(self, rel: str, e: os.DirEntry[str], stack: list[str]) -> None:
        path = f"{rel}/{e.name}" if rel else e.name
        if is_temp(e.name, self.extra_temp):
            self._temp(path)
        try:
            st = e.stat(follow_symlinks=False)
        except FileNotFoundError:
            self._vanished()
            return
        except OSError:
            self.entries.append((f"{path}/{UNREADABLE}", 0, 0, 0))
            return
        self.entries.append((path, st.st_size, st.st_mtime_ns, st.st_ino))
        if stat.S_ISDIR(st.st_mode):  # never a symlink: stat() above did not follow them
            stack.append(path)


def snapshot_folder(
    folder: Path, ready_marker: str | None, extra_temp: tuple[str, ...] = ()
) -> FolderSnapshot:
    """Signature of one folder; raises FileNotFoundError if it is gone (claimed elsewhere, removed).
    A folder or sub-folder that cannot be listed, or an entry that cannot be stat'ed, is recorded as a
    ``<path>/!unreadable`` entry instead: never an exception, whatever the depth.

    Names are ``os.scandir``'s: a name that is not valid UTF-8 holds surrogate escapes
    (``\\udcff``); they are kept as they are here (the signature only compares them) and
    :func:`wodrop.waiting.display_name` makes them printable.
    """
    walk = _Walk(folder, extra_temp)
    walk.run()
    walk.entries.sort()
    has_marker = ready_marker is not None and any(p == ready_marker for p, *_ in walk.entries)
    return FolderSnapshot(tuple(walk.entries), walk.has_temp, has_marker, walk.temp_name)


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
