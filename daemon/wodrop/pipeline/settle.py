"""Settle: decide, without I/O, when a folder in the inbox is complete.

A folder is complete when its signature (every entry's relative path, size, mtime_ns, inode) has not
changed for ``watch.settle`` seconds on the daemon's monotonic clock and no temp-looking file is in it;
or, with ``watch.ready_marker`` set, when the marker exists. File mtimes are only compared with each
other (as part of the signature), never with the local clock: shares have skew and coarse mtimes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from wodrop.waiting import display_name

Signature = tuple[tuple[str, int, int, int], ...]


@dataclass(frozen=True)
class FolderSnapshot:
    """What a scan saw of one inbox folder."""

    signature: Signature
    has_temp: bool
    has_marker: bool
    #: the first temp-looking file's relative path (name order), to say which one; None when
    #: ``has_temp`` only means files vanished while the scan looked
    temp_name: str | None = None


@dataclass
class _Track:
    signature: Signature
    first_seen: float
    stable_since: float
    held: bool = False
    last: FolderSnapshot | None = None  # the latest snapshot, for :meth:`Settler.reason`


@dataclass
class Settler:
    """Tracks inbox folders across scans; :meth:`update` returns those that became complete."""

    settle: float
    ready_marker: str | None = None
    _tracks: dict[str, _Track] = field(default_factory=dict)

    def update(self, snapshots: dict[str, FolderSnapshot], now: float) -> list[str]:
        """Feed a full scan of the inbox; returns the names ready to claim, oldest first."""
        for gone in set(self._tracks) - set(snapshots):
            del self._tracks[gone]
        ready: list[tuple[float, str]] = []
        for name, snap in snapshots.items():
            track = self._tracks.get(name)
            if track is None:
                track = self._tracks[name] = _Track(snap.signature, now, now)
            elif track.signature != snap.signature:
                track.signature, track.stable_since, track.held = snap.signature, now, False
            track.last = snap
            if self._complete(track, snap, now):
                ready.append((track.first_seen, name))
        return [name for _, name in sorted(ready)]

    def _complete(self, track: _Track, snap: FolderSnapshot, now: float) -> bool:
        if self.ready_marker is not None:
            return snap.has_marker and not snap.has_temp
        if snap.has_temp or not snap.signature:
            return False
        return now - track.stable_since >= self.settle

    def reason(self, name: str, now: float) -> str:
        """Why the tracked folder ``name`` is not ready, in words, as of the last :meth:`update` and the
        monotonic time ``now`` (pure: no I/O, no clock). A folder that is ready says so: the intake
        words why it is still not claimed (paused, a same-named work order in processing...)."""
        track = self._tracks.get(name)
        if track is None or track.last is None:
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
        if not snap.signature:
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

    def pending(self) -> dict[str, float]:
        """name -> monotonic time first seen, for the backlog metrics."""
        return {n: t.first_seen for n, t in self._tracks.items()}
