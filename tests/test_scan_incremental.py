"""The incremental intake (bench/idle_scale.py): InboxScanner and Settler.apply must decide exactly
what a full scan fed to the original settle rules decides, while doing only the I/O and work that can
change a decision: a folder without its ready marker costs one faccessat, a folder held by a top-level
temp file one faccessat, and the intake's per-scan work follows the changes."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.workorders import make_work_order
from hypothesis import given, settings
from hypothesis import strategies as st
from wodrop.config import Config
from wodrop.pipeline.batcher import SpoolSlots
from wodrop.pipeline.intake import Intake
from wodrop.pipeline.scan import NO_MARKER, InboxScanner, snapshot_folder
from wodrop.pipeline.settle import FolderSnapshot, Settler
from wodrop.runtime import Runtime
from wodrop.state import StateDB
from wodrop.waiting import load, waiting_path


class ReferenceSettler:
    """The settle rules as README documents them, the plain way: every folder looked at on every
    full scan (the settler as it was before the incremental intake: the oracle the new code is checked
    against)."""

    @dataclass
    class _Track:
        signature: int
        first_seen: float
        stable_since: float
        last: FolderSnapshot
        held: bool = False

    def __init__(self, settle: float, ready_marker: str | None = None) -> None:
        self.settle, self.ready_marker = settle, ready_marker
        self._tracks: dict[str, ReferenceSettler._Track] = {}

    def update(self, snapshots: dict[str, FolderSnapshot], now: float) -> list[str]:
        for gone in set(self._tracks) - set(snapshots):
            del self._tracks[gone]
        ready: list[tuple[float, str]] = []
        for name, snap in snapshots.items():
            track = self._tracks.get(name)
            if track is None:
                track = self._tracks[name] = self._Track(snap.signature, now, now, snap)
            elif track.signature != snap.signature:
                track.signature, track.stable_since, track.held = snap.signature, now, False
            track.last = snap
            if self._complete(track, snap, now):
                ready.append((track.first_seen, name))
        return [name for _, name in sorted(ready)]

    def _complete(self, track: _Track, snap: FolderSnapshot, now: float) -> bool:
        if self.ready_marker is not None:
            return snap.has_marker and not snap.has_temp
        if snap.has_temp or not snap.entries:
            return False
        return now - track.stable_since >= self.settle

    def reason(self, name: str, now: float) -> str:
        track = self._tracks.get(name)
        if track is None:
            return "not scanned yet"
        snap = track.last
        if self.ready_marker is not None and not snap.has_marker:
            return f"no ready marker yet (waiting for {self.ready_marker})"
        if snap.has_temp:
            if snap.temp_name is None:
                return "files appeared or vanished while it was scanned: still being copied"
            return f"a temporary file is present ({snap.temp_name}): still being copied"
        if self.ready_marker is not None:
            return "ready: waiting to be claimed"
        if not snap.entries:
            return "empty folder"
        quiet = max(0.0, now - track.stable_since)
        left = self.settle - quiet
        if left <= 0:
            return "ready: waiting to be claimed"
        left_s = max(1, math.ceil(left))
        if track.held:
            return f"an image still ends in zeros (still being copied?): waiting {left_s} s more"
        return f"settling: no change for {math.floor(quiet)} s yet, {left_s} s left"

    def hold(self, name: str, now: float) -> bool:
        track = self._tracks.get(name)
        if track is None or track.held:
            return False
        track.held, track.stable_since = True, now
        return True

    def forget(self, name: str) -> None:
        self._tracks.pop(name, None)

    def first_seen(self) -> dict[str, float]:
        return {n: t.first_seen for n, t in self._tracks.items()}


def full_scan(inbox: Path, marker: str | None) -> dict[str, FolderSnapshot]:
    """Every candidate folder walked in full (what the intake did before it was incremental)."""
    names = InboxScanner().scan(inbox, None).snapshots  # a first scan without a marker walks them all
    return {name: snapshot_folder(inbox / name, marker) for name in names}


# --- Settler.apply / update against the original rules (pure) ---

_SIGS = [(), (("a.jpg", 1, 1, 1),), (("a.jpg", 2, 2, 1),), (("a.jpg", 2, 2, 1), ("b.jpg", 1, 1, 2))]
_snapshot = st.builds(
    lambda sig, temp, marker: FolderSnapshot.of(_SIGS[sig], temp, marker, "x.part" if temp else None),
    st.integers(0, len(_SIGS) - 1), st.booleans(), st.booleans(),
)
_SAME = "same as before"
_step = st.tuples(
    st.floats(0.0, 2.0),  # time passing
    st.just(_SAME) | st.dictionaries(st.sampled_from(["A", "B", "C"]), _snapshot),  # the full scan
    st.sets(st.sampled_from(["A", "B", "C"])),  # names to hold (as the zero-tail check does)
    st.sets(st.sampled_from(["A", "B", "C"])),  # names to forget (claimed)
    st.sampled_from([_SAME, _SAME, None, ".ready"]),  # SIGHUP may switch the marker on and off
    st.sampled_from([_SAME, _SAME, 1.0, 2.5]),  # and change watch.settle
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_step, min_size=1, max_size=30))
def test_apply_and_update_decide_what_the_original_rules_decide(steps: list) -> None:
    ref, full, inc = ReferenceSettler(1.0), Settler(1.0), Settler(1.0)
    last: dict[str, FolderSnapshot] = {}  # what the incremental one was told so far
    now, scan = 0.0, {}
    for gap, new_scan, hold, forget, marker, settle in steps:
        now += gap
        scan = dict(scan) if new_scan == _SAME else new_scan
        for s in (ref, full, inc):
            s.settle = s.settle if settle == _SAME else settle
            s.ready_marker = s.ready_marker if marker == _SAME else marker
        changed = {n: snap for n, snap in scan.items() if n not in last or last[n] != snap}
        gone = [n for n in last if n not in scan]
        expected = ref.update(scan, now)
        assert full.update(scan, now) == expected
        assert inc.apply(changed, gone, now) == expected
        last = dict(scan)
        for s in (full, inc):
            assert {n: s.reason(n, now + 0.5) for n in scan} == {n: ref.reason(n, now + 0.5) for n in scan}
            assert s.first_seen == ref.first_seen()
        for name in sorted(hold & set(scan)):
            assert full.hold(name, now) == inc.hold(name, now) == ref.hold(name, now)
        for name in sorted(forget & set(scan)):
            for s in (ref, full, inc):
                s.forget(name)
            last.pop(name)  # still there next time: new again (as the scanner reports it)


def test_settler_first_seen_is_a_live_view_for_runtime_pending() -> None:
    s = Settler(settle=1)
    view = s.first_seen
    s.apply({"A": FolderSnapshot.of((("a", 1, 1, 1),), False, False)}, [], now=3.0)
    assert view == {"A": 3.0}
    s.forget("A")
    assert view == {}


# --- the scanner on real folders ---


def _write(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_a_folder_without_its_marker_costs_one_lookup_not_a_walk(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    for i in range(5):
        _write(inbox / f"WO_{i}" / "A-1.jpg")
        _write(inbox / f"WO_{i}" / "sub" / "B-1.jpg")
    sc = InboxScanner()
    first = sc.scan(inbox, ".ready")
    assert first.walked == 0 and set(first.changed) == {f"WO_{i}" for i in range(5)}
    assert all(s is NO_MARKER for s in first.snapshots.values())
    again = sc.scan(inbox, ".ready")
    assert again.walked == 0 and again.changed == {} and again.gone == []
    _write(inbox / "WO_3" / "A-2.jpg")  # what it holds does not matter while it has no marker
    assert sc.scan(inbox, ".ready").changed == {}
    _write(inbox / "WO_3" / ".ready", b"")
    marked = sc.scan(inbox, ".ready")
    assert marked.walked == 1 and list(marked.changed) == ["WO_3"]
    assert marked.changed["WO_3"] == full_scan(inbox, ".ready")["WO_3"]
    assert marked.changed["WO_3"].has_marker
    assert sc.scan(inbox, ".ready").changed == {}  # walked again (it may still change), same snapshot


def test_a_marker_that_is_a_dangling_link_or_a_folder_counts(tmp_path: Path) -> None:
    """As in a full scan: any entry named like the marker is the marker."""
    inbox = tmp_path / "inbox"
    _write(inbox / "L" / "A-1.jpg")
    (inbox / "L" / ".ready").symlink_to(tmp_path / "nowhere")
    _write(inbox / "D" / "A-1.jpg")
    (inbox / "D" / ".ready").mkdir()
    snaps = InboxScanner().scan(inbox, ".ready").snapshots
    full = full_scan(inbox, ".ready")
    assert snaps == full and snaps["L"].has_marker and snaps["D"].has_marker


def test_a_folder_held_by_a_top_level_temp_file_is_not_walked_while_it_exists(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    _write(inbox / "WO" / "A-1.jpg")
    _write(inbox / "WO" / "A-2.jpg.part")
    _write(inbox / "DEEP" / "sub" / "A-1.jpg.part")  # a nested one: walked every time
    sc = InboxScanner()
    first = sc.scan(inbox, None)
    assert first.walked == 2 and first.snapshots == full_scan(inbox, None)
    _write(inbox / "WO" / "A-2.jpg.part", b"grown")
    again = sc.scan(inbox, None)
    assert again.walked == 1 and again.changed == {}  # WO kept as it was: still held by that file
    (inbox / "WO" / "A-2.jpg.part").rename(inbox / "WO" / "A-2.jpg")
    done = sc.scan(inbox, None)
    assert done.walked == 2 and list(done.changed) == ["WO"]
    assert done.snapshots == full_scan(inbox, None) and not done.snapshots["WO"].has_temp


def test_gone_folders_settings_changes_and_forget(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    for name in ("A", "B", "C"):
        _write(inbox / name / "A-1.jpg")
    _write(inbox / "stray.txt")
    (inbox / ".staging").mkdir()
    sc = InboxScanner()
    r = sc.scan(inbox, None)
    assert sorted(r.changed) == ["A", "B", "C"] and r.strays == ["stray.txt"]
    (inbox / "A" / "A-1.jpg").unlink()
    (inbox / "A").rmdir()
    r = sc.scan(inbox, ".ready")  # other settings: every folder is reported again, and A is gone
    assert sorted(r.changed) == ["B", "C"] and r.gone == ["A"]
    assert r.changed["B"] is NO_MARKER
    r = sc.scan(inbox, ".ready", ("*.jpg",))
    assert sorted(r.changed) == ["B", "C"] and r.gone == []
    sc.forget("B")
    r = sc.scan(inbox, ".ready", ("*.jpg",))
    assert list(r.changed) == ["B"]  # forgotten (claimed, say), then seen: new again


def test_an_unreachable_inbox_raises_and_the_next_scan_picks_up(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    _write(inbox / "A" / "A-1.jpg")
    sc = InboxScanner()
    sc.scan(inbox, None)
    moved = tmp_path / "away"
    inbox.rename(moved)
    with pytest.raises(FileNotFoundError):
        sc.scan(inbox, None)
    moved.rename(inbox)
    r = sc.scan(inbox, None)
    assert r.changed == {} and r.gone == [] and list(r.snapshots) == ["A"]


# --- both pipelines over random changes on disk ---

_OPS = ["write", "grow", "temp", "temp_nested", "temp_small", "untemp", "finish_temp", "marker",
        "unmarker", "sub", "remove", "recreate", "tick"]


@dataclass
class _Pipelines:
    inbox: Path
    marker: str | None
    now: float = 0.0

    def __post_init__(self) -> None:
        self.ref = ReferenceSettler(settle=2.0, ready_marker=self.marker)
        self.new = Settler(settle=2.0, ready_marker=self.marker)
        self.scanner = InboxScanner()

    def step(self) -> None:
        snaps = full_scan(self.inbox, self.marker)
        scan = self.scanner.scan(self.inbox, self.marker)
        assert set(scan.snapshots) == set(snaps)
        expected = self.ref.update(snaps, self.now)
        assert self.new.apply(scan.changed, scan.gone, self.now) == expected
        for name, snap in scan.snapshots.items():
            want, got = self.ref.reason(name, self.now), self.new.reason(name, self.now)
            if want.startswith("a temporary file is present") and snap.temp_name is not None:
                # the file named may be another temp file than the first by name; it is there
                assert got.startswith("a temporary file is present")
                assert os.path.lexists(self.inbox / name / snap.temp_name)
            else:
                assert got == want, name
            if snap is not NO_MARKER and snap != snaps[name]:  # kept while its temp file is there
                assert snap.has_temp and snaps[name].has_temp
        for name in expected:  # claimed: out of the inbox, forgotten by both
            (self.inbox / name).rename(self.inbox.parent / f"claimed-{name}-{self.now}")
            self.ref.forget(name)
            self.new.forget(name)
            self.scanner.forget(name)
        assert self.new.first_seen == self.ref.first_seen()


def _apply_op(inbox: Path, op: str, name: str, n: int) -> None:
    wo = inbox / name
    if op == "recreate":
        wo.mkdir(parents=True, exist_ok=True)
        return
    if not wo.is_dir():
        return
    if op == "write":
        _write(wo / f"A-{n}.jpg", b"x" * n)
    elif op == "grow":
        with open(wo / "A-0.jpg", "ab") as f:
            f.write(b"y")
    elif op == "temp":
        _write(wo / "B-1.jpg.part", b"p" * n)
    elif op == "temp_small":
        _write(wo / "A-0.jpg.tmp", b"p")  # sorts before B-1.jpg.part
    elif op == "temp_nested":
        _write(wo / "sub" / "C-1.jpg.crdownload", b"c")
    elif op == "untemp":
        for p in (wo / "B-1.jpg.part", wo / "A-0.jpg.tmp", wo / "sub" / "C-1.jpg.crdownload"):
            p.unlink(missing_ok=True)
    elif op == "finish_temp":
        if (wo / "B-1.jpg.part").exists():
            (wo / "B-1.jpg.part").rename(wo / "B-1.jpg")
    elif op == "marker":
        _write(wo / ".ready", b"")
    elif op == "unmarker":
        (wo / ".ready").unlink(missing_ok=True)
    elif op == "sub":
        _write(wo / "sub" / f"D-{n}.jpg", b"d")
    elif op == "remove":
        for p in sorted(wo.rglob("*"), key=lambda p: -len(p.parts)):
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        wo.rmdir()


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([None, ".ready"]),
       st.lists(st.tuples(st.sampled_from(_OPS), st.sampled_from(["W1", "W2", "W3"]), st.integers(1, 9),
                          st.floats(0.0, 1.5)), min_size=1, max_size=40))
def test_scanner_and_apply_decide_what_full_scans_decide(marker: str | None, ops: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        inbox = Path(tmp) / "inbox"
        inbox.mkdir()
        for name in ("W1", "W2"):
            _write(inbox / name / "A-0.jpg")
        p = _Pipelines(inbox, marker)
        p.step()
        for op, name, n, gap in ops:
            if op == "tick":
                p.now += gap
            else:
                _apply_op(inbox, op, name, n)
            p.step()
        p.now += 10  # long quiet: whatever can settle does, in both
        p.step()
        p.step()


# --- the intake on a real inbox ---


def _runtime(tmp_path: Path, **watch: object) -> Runtime:
    paths = {k: tmp_path / k for k in ("inbox", "processing", "done", "failed", "state")}
    for p in paths.values():
        p.mkdir()
    watch = {"settle": "0.3s", "rescan_interval": "1s", **watch}
    cfg = Config.model_validate({"paths": paths, "watch": watch, "status": {"listen": "off"}})
    return Runtime(cfg=cfg, db=StateDB(paths["state"] / "wodrop.sqlite3"))


async def _until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_intake_keeps_the_waiting_list_right_as_folders_come_wait_and_go(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, ready_marker=".ready")
    inbox = rt.cfg.paths.inbox
    for i in range(30):
        _write(inbox / f"WO_{i:02d}" / "A-1.jpg")
    _write(inbox / "WO_T" / "A-1.jpg.part")
    _write(inbox / "WO_T" / ".ready", b"")
    out: asyncio.Queue[int] = asyncio.Queue()
    intake = Intake(rt, SpoolSlots(4))
    task = asyncio.create_task(intake.run(out, []))
    try:
        await _until(lambda: len(rt.waiting) == 31)
        no_marker = "no ready marker yet (waiting for .ready)"
        assert {w.reason for n, w in rt.waiting.items() if n != "WO_T"} == {no_marker}
        assert rt.waiting["WO_T"].reason.startswith("a temporary file is present (A-1.jpg.part)")
        assert set(rt.pending) == set(rt.waiting)
        await _until(lambda: (load(waiting_path(rt.cfg.paths.state)) or (0, []))[1].__len__() == 31)

        _write(inbox / "WO_07" / ".ready", b"")  # marked: claimed, and off the list at once
        wo_id = await asyncio.wait_for(out.get(), 10)
        assert rt.db.work_order(wo_id).name == "WO_07"
        assert (rt.cfg.paths.processing / "WO_07").is_dir()
        assert "WO_07" not in rt.waiting and "WO_07" not in rt.pending

        (inbox / "WO_T" / "A-1.jpg.part").rename(inbox / "WO_T" / "A-1.jpg")  # its copy finished
        wo_id = await asyncio.wait_for(out.get(), 10)
        assert rt.db.work_order(wo_id).name == "WO_T" and "WO_T" not in rt.waiting

        (inbox / "WO_03" / "A-1.jpg").unlink()
        (inbox / "WO_03").rmdir()  # removed by a person: gone from the list
        await _until(lambda: "WO_03" not in rt.waiting)
        _write(inbox / "WO_07" / "A-1.jpg")  # the same name again: a new folder, waiting again
        await _until(lambda: "WO_07" in rt.waiting)
        assert rt.waiting["WO_07"].reason == no_marker
        assert set(rt.pending) == set(rt.waiting) and len(rt.waiting) == 29

        rt.intake_paused = "a test pause"  # a marked folder waits, saying why
        _write(inbox / "WO_11" / ".ready", b"")
        await _until(lambda: rt.waiting["WO_11"].reason.startswith("ready, but intake is paused"))
        rt.intake_paused = None
        wo_id = await asyncio.wait_for(out.get(), 10)
        assert rt.db.work_order(wo_id).name == "WO_11"
        await _until(lambda: "WO_11" not in rt.waiting)

        def saved() -> set[str]:
            loaded = load(waiting_path(rt.cfg.paths.state))
            return {w.name for w in loaded[1]} if loaded else set()

        await _until(lambda: saved() == set(rt.waiting))
        assert json.loads(waiting_path(rt.cfg.paths.state).read_text())["waiting"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rt.db.close()


async def test_intake_settle_mode_counts_down_and_claims_after_the_settle_time(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, settle="0.6s")
    inbox = rt.cfg.paths.inbox
    out: asyncio.Queue[int] = asyncio.Queue()
    task = asyncio.create_task(Intake(rt, SpoolSlots(4)).run(out, []))
    try:
        make_work_order(tmp_path / "staging", "WO_1")
        t0 = time.monotonic()
        (tmp_path / "staging" / "WO_1").rename(inbox / "WO_1")
        await _until(lambda: "WO_1" in rt.waiting)
        assert re.fullmatch(r"settling: no change for \d+ s yet, \d+ s left", rt.waiting["WO_1"].reason)
        wo_id = await asyncio.wait_for(out.get(), 10)
        assert time.monotonic() - t0 >= 0.6  # never before a whole settle window without change
        assert rt.db.work_order(wo_id).name == "WO_1" and rt.waiting == {} and rt.pending == {}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rt.db.close()


async def test_a_claim_decided_too_long_ago_is_decided_again_on_a_fresh_scan(tmp_path: Path) -> None:
    """Claims wait for room in the validator's queue: with a big drop, one pass can take minutes.
    A folder that had settled when the pass began but changed while it waited (a second copy into
    it) must not be taken on that old decision: its settle clock starts again."""
    rt = _runtime(tmp_path, settle="1s")
    inbox = rt.cfg.paths.inbox
    staging = tmp_path / "staging"
    for name in ("WO_A", "WO_B", "WO_C"):
        make_work_order(staging, name)
        (staging / name).rename(inbox / name)  # one pass sees all three settle: claims A, B, C
    out: asyncio.Queue[int] = asyncio.Queue(maxsize=1)  # A fills it; the pass then waits with B
    task = asyncio.create_task(Intake(rt, SpoolSlots(4)).run(out, []))
    try:
        await _until(lambda: (rt.cfg.paths.processing / "WO_B").is_dir())
        decided = time.monotonic()  # the pass that would claim C was decided before this
        make_work_order(staging, "more")
        (staging / "more" / "task_A-0.jpg").rename(inbox / "WO_C" / "task_C-9.jpg")  # C changes
        changed_at = time.time()
        await _until(lambda: time.monotonic() - decided > 0.25)  # more than the pass's tick (settle / 4)
        assert rt.db.work_order(await out.get()).name == "WO_A"  # room: the pass goes on
        assert rt.db.work_order(await asyncio.wait_for(out.get(), 10)).name == "WO_B"
        c = rt.db.work_order(await asyncio.wait_for(out.get(), 10))
        assert c.name == "WO_C" and (rt.cfg.paths.processing / "WO_C" / "task_C-9.jpg").exists()
        assert c.claimed_at - changed_at >= 1.0, "WO_C was taken on a decision made before it changed"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rt.db.close()


def test_look_again_tells_a_change_since_the_last_scan(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    _write(inbox / "WO" / "A-1.jpg")
    _write(inbox / "M" / "A-1.jpg")
    _write(inbox / "M" / ".ready", b"")
    sc = InboxScanner()
    sc.scan(inbox, None)
    assert sc.look_again(inbox, "WO", None) is None  # unchanged
    _write(inbox / "WO" / "A-2.jpg")
    again = sc.look_again(inbox, "WO", None)
    assert again == full_scan(inbox, None)["WO"]
    assert list(sc.scan(inbox, None).changed) == ["WO"]  # the scan still reports it: nothing was kept
    sc.scan(inbox, ".ready")
    assert sc.look_again(inbox, "M", ".ready") is None
    (inbox / "M" / ".ready").unlink()
    assert sc.look_again(inbox, "M", ".ready") is NO_MARKER
    with pytest.raises(FileNotFoundError):
        sc.look_again(inbox, "GONE", None)
