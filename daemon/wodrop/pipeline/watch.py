"""Discover: wake the intake when the inbox's top level changes.

inotify (watchfiles), or polling on network filesystems where inotify sees nothing of other clients'
writes, only *wakes* the intake early; the periodic full rescan is what guarantees nothing is missed
(events are lost on inotify overflow, on shares, and while the watcher restarts).

Polling is our own, not watchfiles': every ``watch.poll_interval`` one listing of the inbox's top
level (names only, no stat of any entry), compared with the last one. watchfiles' poller stats every
entry on every poll, in a thread of its own: more than all the rest of an idle daemon with 10,000
waiting folders (bench/idle_scale.py). What a listing does not see (a file added inside a folder) the
intake's own rescans see, as they do with inotify, which does not see it either.

Names that are not UTF-8 are ordinary here: the listing keeps them as surrogate escapes, and when
watchfiles gives up on one (it cannot hand such a name over, and ends its watch), that counts as a
change and the watch goes on at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import watchfiles

from wodrop.logs import get_logger
from wodrop.runtime import Runtime
from wodrop.waiting import is_utf8

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
    ``WATCHFILES_FORCE_POLLING`` is set). An inbox whose path is not UTF-8 is polled whatever the
    mode: watchfiles cannot watch it."""
    if mode == "polling" or not is_utf8(os.path.realpath(inbox)):
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


def _listing(inbox: Path) -> frozenset[str]:
    """The inbox's top-level names: one getdents pass, no stat (blocking)."""
    return frozenset(os.listdir(inbox))


async def _poll(inbox: Path, interval: Callable[[], float], ended: _StopOrRestart) -> AsyncIterator[bool]:
    """Every ``interval()`` seconds (SIGHUP may change it), whether the top level changed since the
    last look, until ``ended``. (A folder replaced by another of the same name between two looks is
    the rescans' to see.)"""
    last = await asyncio.to_thread(_listing, inbox)
    while not ended.is_set():
        await asyncio.sleep(interval())
        listing = await asyncio.to_thread(_listing, inbox)
        changed, last = listing != last, listing
        yield changed


def _unnamed_change(e: BaseException) -> bool:
    """watchfiles ends its watch when an entry whose name is not UTF-8 changes (it cannot hand the
    name over): a Rust error, in anyio's ExceptionGroup."""
    if isinstance(e, BaseExceptionGroup):
        return all(_unnamed_change(sub) for sub in e.exceptions)
    return isinstance(e, RuntimeError) and str(e).startswith("Unable to decode path")


async def _events(inbox: Path, ended: _StopOrRestart) -> AsyncIterator[bool]:
    """inotify on the top level: whether each batch of events held a change, and False every 5 s
    without any (so that the caller checks the inbox is still the same one), until ``ended``."""
    path = os.path.realpath(inbox)
    while not ended.is_set():
        try:
            async for changes in watchfiles.awatch(
                path,
                watch_filter=_TopLevel(inbox),
                recursive=False,
                debounce=200,
                step=50,
                stop_event=ended,
                rust_timeout=5000,
                yield_on_timeout=True,
            ):
                yield bool(changes)
            return
        except Exception as e:
            if not _unnamed_change(e):
                raise
        yield True  # a change it could not name: watch again at once (the rescan sees what it was)


async def watch_inbox(runtime: Runtime, wake: asyncio.Event, stop: asyncio.Event,
                      restart: asyncio.Event) -> None:
    """Set ``wake`` on every top-level change. Restart the watcher when it fails, when the inbox is
    replaced (its device/inode change), or when ``restart`` is set (the intake saw the inbox vanish
    and come back): a watch on a removed directory sees nothing ever again."""
    cfg = runtime.cfg
    inbox = cfg.paths.inbox
    polling = choose_polling(cfg.watch.mode, inbox)
    ended = _StopOrRestart(stop, restart)
    delay = 1.0
    while not stop.is_set():
        try:
            restart.clear()
            ident = _identity(inbox)
            runtime.watcher = "polling" if polling else "events"
            log.info("watcher_started", mode=runtime.watcher, inbox=str(inbox))
            changes = (_poll(inbox, lambda: runtime.cfg.watch.poll_interval, ended) if polling
                       else _events(inbox, ended))
            async for changed in changes:
                if changed:
                    wake.set()
                    delay = 1.0
                if _identity(inbox) != ident:
                    raise FileNotFoundError(f"{inbox} was replaced or unmounted")
            if restart.is_set() and not stop.is_set():  # asked for, not a failure: no back-off
                log.info("watcher_restarting", reason="the inbox came back after being unreachable")
                wake.set()
                delay = 1.0
        except Exception as e:  # the watcher must never take the daemon down
            runtime.watcher = "restarting"
            log.warning("watcher_failed", error=f"{type(e).__name__}: {e}", retry_in=delay)
            wake.set()  # rescan now: events may have been lost
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 60.0)
