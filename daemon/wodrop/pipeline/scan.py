"""Scan the inbox's top level and take a signature of each folder (blocking: runs in a thread).

:class:`InboxScanner` remembers the last scan and walks a folder only when what it holds can change
the settler's decision or reason, so that thousands of waiting folders cost little
(bench/idle_scale.py):

- with ``watch.ready_marker`` set, a folder without its marker is never complete, and its reason ("no
  ready marker yet") does not depend on what it holds: one ``faccessat`` of ``<folder>/<marker>``
  instead of a walk (:data:`NO_MARKER` stands for its snapshot);
- a folder held by a temp file at its top level (``photo.jpg.part``) stays held while that very file
  exists: one ``faccessat`` of it instead of a walk (at the top level only: no folder on the way that
  could have become a link). When it is gone the folder is walked again, and since that file leaves
  the signature, the settle clock starts again from that scan;
- every other folder is walked in full on every scan (a file grows in place without changing its
  folder's mtime, so no cheaper test can tell that a settling folder did not change).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from wodrop.pipeline.settle import Entry, FolderSnapshot
from wodrop.workorder.names import is_junk, is_temp

#: signature entry of a sub-folder that cannot be listed (permission denied, path too long, a loop)
UNREADABLE = "!unreadable"
#: the snapshot of a folder whose ready marker is absent: never complete, and nothing else about it
#: matters (Settler.reason says "no ready marker yet" before looking at anything else)
NO_MARKER = FolderSnapshot.of((), False, False)


class _Walk:
    """One folder's walk. Iterative (an explicit stack of relative paths), so a tree of any depth
    costs memory, never Python stack: a work order nested 1,500 folders deep must not crash the
    scanner (RecursionError is not an OSError: it would kill the intake, again at every restart)."""

    def __init__(self, root: str, extra_temp: tuple[str, ...]) -> None:
        self.root, self.extra_temp = root, extra_temp
        self.entries: list[Entry] = []
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
                it = os.scandir(f"{self.root}/{rel}" if rel else self.root)
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
    folder: Path | str, ready_marker: str | None, extra_temp: tuple[str, ...] = ()
) -> FolderSnapshot:
    """Signature of one folder; raises FileNotFoundError if it is gone (claimed elsewhere, removed).
    A folder or sub-folder that cannot be listed, or an entry that cannot be stat'ed, is recorded as a
    ``<path>/!unreadable`` entry instead: never an exception, whatever the depth.

    Names are ``os.scandir``'s: a name that is not valid UTF-8 holds surrogate escapes
    (``\\udcff``); they are kept as they are here (the signature only compares them) and
    :func:`wodrop.waiting.display_name` makes them printable.
    """
    walk = _Walk(os.fspath(folder), extra_temp)
    walk.run()
    has_marker = ready_marker is not None and any(p == ready_marker for p, *_ in walk.entries)
    return FolderSnapshot.of(walk.entries, walk.has_temp, has_marker, walk.temp_name)


def _candidate(name: str, extra_temp: tuple[str, ...]) -> bool:
    return not (name.startswith(".") or is_junk(name) or is_temp(name, extra_temp))


def _look(fd: int, root: str, name: str, prev: FolderSnapshot | None, ready_marker: str | None,
          extra_temp: tuple[str, ...]) -> tuple[FolderSnapshot, bool]:
    """The snapshot of the folder ``name`` in the inbox ``root`` (open as ``fd``), doing only the I/O
    that can change a decision (see the module's docstring); and whether it was walked.
    FileNotFoundError when it is gone."""
    if ready_marker is not None and not os.access(f"{name}/{ready_marker}", os.F_OK, dir_fd=fd,
                                                  follow_symlinks=False):
        return NO_MARKER, False  # (also when it cannot be looked up: no marker seen either way)
    if (prev is not None and prev.temp_name is not None and "/" not in prev.temp_name
            and os.access(f"{name}/{prev.temp_name}", os.F_OK, dir_fd=fd, follow_symlinks=False)):
        return prev, False  # still held by the same temp file
    return snapshot_folder(f"{root}/{name}", ready_marker, extra_temp), True


@dataclass(frozen=True)
class ScanResult:
    """What one :meth:`InboxScanner.scan` saw."""

    #: every candidate folder's snapshot
    snapshots: dict[str, FolderSnapshot]
    #: folders new since the last scan, or whose snapshot is not the last one's
    changed: dict[str, FolderSnapshot]
    #: folders of the last scan that are gone
    gone: list[str]
    #: top-level entries that are not folders (not work orders: reported, never touched)
    strays: list[str]
    #: how many folders were walked in full (each of the others cost one faccessat)
    walked: int


class InboxScanner:
    """Scans of one inbox, each compared with the last, so that the intake's work per scan follows
    the changes, not the size of the inbox (see the module's docstring for what is walked).

    Skipped at the top level: junk (``.DS_Store``, ``@eaDir``...), temp-looking names, and
    dot-folders (a common staging convention: copy to ``.WO_1`` then rename to ``WO_1``).

    :meth:`forget` a folder whose settle state was dropped (claimed): if a folder of that name shows
    up again, it is reported as new.
    """

    def __init__(self) -> None:
        self._last: dict[str, FolderSnapshot] = {}
        #: the settings the last scan was made with: others make every folder new again
        self._settings: tuple[str | None, tuple[str, ...]] | None = None

    def forget(self, name: str) -> None:
        self._last.pop(name, None)

    def scan(self, inbox: Path, ready_marker: str | None, extra_temp: tuple[str, ...] = ()) -> ScanResult:
        """One pass over the inbox; raises OSError when the inbox itself cannot be read. Nothing is
        remembered from a pass that raises: the next one compares with the last complete one."""
        last = self._last
        before = last if self._settings == (ready_marker, extra_temp) else {}
        snapshots: dict[str, FolderSnapshot] = {}
        changed: dict[str, FolderSnapshot] = {}
        strays: list[str] = []
        walked = 0
        root = os.fspath(inbox)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with os.scandir(fd) as it:
                for e in it:
                    name = e.name
                    prev = before.get(name)
                    if prev is None and not _candidate(name, extra_temp):
                        continue  # (whether a name is a candidate depends on the name alone)
                    try:
                        if not e.is_dir(follow_symlinks=False):
                            strays.append(name)
                            continue
                    except FileNotFoundError:
                        continue
                    try:
                        snap, was_walked = _look(fd, root, name, prev, ready_marker, extra_temp)
                    except FileNotFoundError:
                        continue
                    walked += was_walked
                    snapshots[name] = snap
                    if snap is not prev and snap != prev:
                        changed[name] = snap
        finally:
            os.close(fd)
        gone = [name for name in last if name not in snapshots]
        self._last, self._settings = snapshots, (ready_marker, extra_temp)
        return ScanResult(snapshots, changed, gone, strays, walked)

    def look_again(self, inbox: Path, name: str, ready_marker: str | None,
                   extra_temp: tuple[str, ...] = ()) -> FolderSnapshot | None:
        """Look at one folder again, just before acting on a decision made on the last scan (claims
        can wait long for room downstream): its snapshot when it changed since, else None (the next
        scan reports the change as usual). FileNotFoundError when it is gone, another OSError when the
        inbox cannot be read: the next scan tells."""
        prev = self._last.get(name) if self._settings == (ready_marker, extra_temp) else None
        root = os.fspath(inbox)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            snap, _ = _look(fd, root, name, prev, ready_marker, extra_temp)
        finally:
            os.close(fd)
        return None if snap is prev or snap == prev else snap
