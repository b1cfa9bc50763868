"""Discover: wake the intake when the inbox's top level changes.

watchfiles (inotify, or polling on network filesystems where inotify sees nothing of other clients'
writes) only *wakes* the intake early; the periodic full rescan is what guarantees nothing is missed
(events are lost on inotify overflow, on shares, and while the watcher restarts).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import watchfiles

from wodrop.logs import get_logger
from wodrop.runtime import Runtime

log = get_logger("wodrop.watch")

NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "9p", "afs", "glusterfs", "davfs"})


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def filesystem_type(path: Path, mountinfo: str | None = None) -> str:
    """The fstype of the mount holding ``path``, from ``/proc/self/mountinfo`` ("" if unknown)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return ""
    target = os.path.realpath(path)
    best, best_type = "", ""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if len(fields) < 5:
            continue
        mount_point = _unescape(fields[4])
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def is_network_fs(fstype: str) -> bool:
    return fstype in NETWORK_FS or fstype.startswith("fuse.") or fstype == "fuse"


def choose_polling(mode: str, inbox: Path) -> bool:
    """``watch.mode``: events, polling, or auto (polling on network filesystems, or when
    ``WATCHFILES_FORCE_POLLING`` is set)."""
    if mode == "polling":
        return True
    if mode == "events":
        return False
    if os.environ.get("WATCHFILES_FORCE_POLLING", "").lower() not in ("", "0", "false", "no"):
        return True  # the container convention for share mounts the kernel can't watch
    return is_network_fs(filesystem_type(inbox))


class _TopLevel:
    """Our own filter (not DefaultFilter, which hides names a user may legitimately use): the inbox's
    direct entries, and the inbox itself (removed, unmounted); deeper changes are the rescans' job."""

    def __init__(self, inbox: Path) -> None:
        self._inbox = os.path.realpath(inbox)

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        return path == self._inbox or os.path.dirname(path) == self._inbox


class _StopOrRestart:
    """watchfiles polls ``is_set()`` from its thread: stop for good, or end this watch to restart."""

    def __init__(self, stop: asyncio.Event, restart: asyncio.Event) -> None:
        self.stop, self.restart = stop, restart

    def is_set(self) -> bool:
        return self.stop.is_set() or self.restart.is_set()

    def set(self) -> None:
        self.stop.set()


async def watch_inbox(runtime: Runtime, wake: asyncio.Event, stop: asyncio.Event,
                      restart: asyncio.Event) -> None:
    """Set ``wake`` on every top-level change. Restart the watcher when it fails, when the inbox is
    replaced (its device/inode change), or when ``restart`` is set (the intake saw the inbox vanish
    and come back): a watch on a removed directory sees nothing ever again."""
    cfg = runtime.cfg
    polling = choose_polling(cfg.watch.mode, cfg.paths.inbox)
    delay = 1.0
    while not stop.is_set():
        try:
            restart.clear()
            ident = _identity(cfg.paths.inbox)
            runtime.watcher = "polling" if polling else "events"
            log.info("watcher_started", mode=runtime.watcher, inbox=str(cfg.paths.inbox))
            async for changes in watchfiles.awatch(
                os.path.realpath(cfg.paths.inbox),
                watch_filter=_TopLevel(cfg.paths.inbox),
                recursive=False,
                force_polling=polling,
                poll_delay_ms=max(50, int(cfg.watch.poll_interval * 1000)),
                debounce=200,
                step=50,
                stop_event=_StopOrRestart(stop, restart),
                rust_timeout=5000,
                yield_on_timeout=True,
            ):
                if changes:
                    wake.set()
                    delay = 1.0
                if _identity(cfg.paths.inbox) != ident:
                    raise FileNotFoundError(f"{cfg.paths.inbox} was replaced or unmounted")
            if restart.is_set() and not stop.is_set():
                raise FileNotFoundError(f"{cfg.paths.inbox} came back after being unreachable")
        except Exception as e:  # the watcher must never take the daemon down
            runtime.watcher = "restarting"
            log.warning("watcher_failed", error=f"{type(e).__name__}: {e}", retry_in=delay)
            wake.set()  # rescan now: events may have been lost
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 60.0)
