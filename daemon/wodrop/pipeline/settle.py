"""Settle: decide, without I/O, when a folder in the inbox is complete.

A folder is complete when its signature (every entry's relative path, size, mtime_ns, inode) has not
changed for ``watch.settle`` seconds on the daemon's monotonic clock and no temp-looking file is in it;
or, with ``watch.ready_marker`` set, when the marker exists. File mtimes are only compared with each
other (as part of the signature), never with the local clock: shares have skew and coarse mtimes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Signature = tuple[tuple[str, int, int, int], ...]


@dataclass(frozen=True)
class FolderSnapshot:
    """What a scan saw of one inbox folder."""

    signature: Signature
    has_temp: bool
    has_marker: bool


@dataclass
class _Track:
    signature: Signature
    first_seen: float
    stable_since: float
    held: bool = False


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
            if self._complete(track, snap, now):
                ready.append((track.first_seen, name))
        return [name for _, name in sorted(ready)]

    def _complete(self, track: _Track, snap: FolderSnapshot, now: float) -> bool:
        if self.ready_marker is not None:
            return snap.has_marker and not snap.has_temp
        if snap.has_temp or not snap.signature:
            return False
        return now - track.stable_since >= self.settle

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
