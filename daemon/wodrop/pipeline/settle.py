"""Settle: decide, without I/O, when a folder in the inbox is complete.

A folder is complete when its signature (every entry's relative path, size, mtime_ns, inode) has not
changed for ``watch.settle`` seconds on the daemon's monotonic clock and no temp-looking file is in it;
or, with ``watch.ready_marker`` set, when the marker exists. File mtimes are only compared with each
other (as part of the signature), never with the local clock: shares have skew and coarse mtimes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from wodrop.waiting import display_name

#: one entry of a folder: relative path, size, mtime_ns, inode
Entry = tuple[str, int, int, int]


@dataclass(frozen=True, slots=True)
class FolderSnapshot:
    """What a scan saw of one inbox folder. Not its entries: a digest of them is enough to tell a
    change, and 50,000 waiting folders of 20 files each would otherwise hold every file's path."""

    #: a digest of every entry, in name order (Python's hash of their tuple: 64 bits, salted per
    #: process, never stored): a change makes another one, but for a 2**-64 chance
    signature: int
    #: how many entries (0: an empty folder)
    entries: int
    has_temp: bool
    has_marker: bool
    #: the first temp-looking file's relative path (name order), to say which one; None when
    #: ``has_temp`` only means files vanished while the scan looked
    temp_name: str | None = None

    @classmethod
    def of(cls, entries: Iterable[Entry], has_temp: bool, has_marker: bool,
           temp_name: str | None = None) -> FolderSnapshot:
        ordered = tuple(sorted(entries))
        return cls(hash(ordered), len(ordered), has_temp, has_marker, temp_name)


@dataclass(slots=True)
class _Track:
    last: FolderSnapshot  # the latest snapshot
    stable_since: float  # when its signature last changed
    held: bool = False


@dataclass
class Settler:
    """Tracks inbox folders across scans; :meth:`apply` returns those that are complete.

    Its work per scan follows the changes, not the number of folders: it is told only which folders
    changed or went, and looks again only at the folders that can become complete with no new
    snapshot (:attr:`live`).
    """

    settle: float
    ready_marker: str | None = None
    #: name -> monotonic time first seen (``Runtime.pending``, for the backlog metrics); read only
    first_seen: dict[str, float] = field(default_factory=dict)
    _tracks: dict[str, _Track] = field(default_factory=dict)
    _live: set[str] = field(default_factory=set)
    _live_marker: str | None = field(init=False)  # the ready_marker _live was sorted out for

    def __post_init__(self) -> None:
        self._live_marker = self.ready_marker

    def update(self, snapshots: dict[str, FolderSnapshot], now: float) -> list[str]:
        """Feed a full scan of the inbox: :meth:`apply` with every folder."""
        return self.apply(snapshots, [name for name in self._tracks if name not in snapshots], now)

    def apply(self, changed: dict[str, FolderSnapshot], gone: Iterable[str], now: float) -> list[str]:
        """Feed what a scan saw: the folders that are new or whose snapshot changed (an unchanged one
        may be in it too), and those that are gone. Returns every name ready to claim, oldest first."""
        for name in gone:
            self.forget(name)
        if self.ready_marker != self._live_marker:  # SIGHUP changed the rule: sort all out again
            self._live_marker = self.ready_marker
            self._live = {n for n, t in self._tracks.items() if self._may_complete(t.last)}
        for name, snap in changed.items():
            track = self._tracks.get(name)
            if track is None:
                self._tracks[name] = _Track(snap, now)
                self.first_seen[name] = now
            else:
                if track.last.signature != snap.signature:
                    track.stable_since, track.held = now, False
                track.last = snap
            if self._may_complete(snap):
                self._live.add(name)
            else:
                self._live.discard(name)
        ready = sorted((self.first_seen[n], n) for n in self._live if self._complete(self._tracks[n], now))
        return [name for _, name in ready]

    @property
    def live(self) -> set[str]:
        """The folders that are complete, or can become so with no new snapshot (settling, by time
        alone): the only ones whose :meth:`reason` can change between two snapshots. Read only."""
        return self._live

    def _may_complete(self, snap: FolderSnapshot) -> bool:
        if self.ready_marker is not None:
            return snap.has_marker and not snap.has_temp
        return not snap.has_temp and snap.entries > 0

    def _complete(self, track: _Track, now: float) -> bool:
        if not self._may_complete(track.last):
            return False
        return self.ready_marker is not None or now - track.stable_since >= self.settle

    def reason(self, name: str, now: float) -> str:
        """Why the tracked folder ``name`` is not ready, in words, as of the last :meth:`apply` and the
        monotonic time ``now`` (pure: no I/O, no clock). A folder that is ready says so: the intake
        words why it is still not claimed (paused, a same-named work order in processing...)."""
        track = self._tracks.get(name)
        if track is None:
            return "not scanned yet"
        snap = track.last
        if self.ready_marker is not None and not snap.has_marker:
            return f"no ready marker yet (waiting for {display_name(self.ready_marker)})"
        if snap.has_temp:
            if snap.temp_name is None:
                return "files appeared or vanished while it was scanned: still being copied"
            return f"a temporary file is present ({display_name(snap.temp_name)}): still being copied"
        if self.ready_marker is not None:
            return "ready: waiting to be claimed"
        if not snap.entries:
            return "empty folder"
        quiet = max(0.0, now - track.stable_since)
        left = self.settle - quiet
        if left <= 0:
            return "ready: waiting to be claimed"
        left_s = max(1, math.ceil(left))  # never "0 s left" while not ready
        if track.held:
            return f"an image still ends in zeros (still being copied?): waiting {left_s} s more"
        return f"settling: no change for {math.floor(quiet)} s yet, {left_s} s left"

    def hold(self, name: str, now: float) -> bool:
        """A settled folder looks mid-copy (a pre-sized image with a zero tail): wait one more settle
        window with no change. Returns False when it was already held once (then it is claimed and the
        validator reports it)."""
        track = self._tracks.get(name)
        if track is None or track.held:
            return False
        track.held, track.stable_since = True, now
        return True

    def forget(self, name: str) -> None:
        self._tracks.pop(name, None)
        self.first_seen.pop(name, None)
        self._live.discard(name)
