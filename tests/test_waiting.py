"""wodrop.waiting: names safe to show, and the waiting list the daemon leaves for ``wodrop status``."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wodrop.waiting import (
    WaitingFolder,
    claim_failed_reason,
    display_name,
    is_utf8,
    load,
    save,
    waiting_path,
)

NOT_UTF8 = os.fsdecode(b"WO_\xff\xfe_1")  # what os.scandir returns for such a folder name


def test_display_name_escapes_bytes_that_are_not_utf8() -> None:
    assert NOT_UTF8 == "WO_\udcff\udcfe_1"
    assert display_name(NOT_UTF8) == "WO_\\xff\\xfe_1"
    assert display_name("WO_é_1 <b>") == "WO_é_1 <b>"  # valid text is left alone
    assert display_name("lone \ud800 surrogate") == "lone \\ud800 surrogate"  # not an escaped byte
    json.dumps(display_name(NOT_UTF8), ensure_ascii=False).encode("utf-8")


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b and b"/" not in b))
def test_display_name_of_any_folder_name_is_printable_utf8(raw: bytes) -> None:
    shown = display_name(os.fsdecode(raw))
    assert shown == raw.decode("utf-8", "backslashreplace")
    shown.encode("utf-8")  # never raises: JSON and logs can carry it


@given(st.text(st.characters(codec="utf-8")))
def test_display_name_leaves_text_unchanged(text: str) -> None:
    assert display_name(text) == text


@given(st.text(st.characters(exclude_categories=())))
def test_display_name_never_fails(text: str) -> None:
    display_name(text).encode("utf-8")


def test_waiting_path_is_in_the_state_folder(tmp_path: Path) -> None:
    assert waiting_path(tmp_path / "state") == tmp_path / "state" / "waiting.json"


def test_save_then_load(tmp_path: Path) -> None:
    path = waiting_path(tmp_path)
    entries = [
        WaitingFolder("WO_1", 1_718_000_000.5, "settling: no change for 3 s yet, 27 s left"),
        WaitingFolder(NOT_UTF8, 1_718_000_100.0, "a temporary file is present (x\udcff.part): still "
                      "being copied"),
        WaitingFolder("<script>alert(1)</script>", 1_718_000_200.0, "empty folder"),
    ]
    save(path, entries, now=1_718_000_300.25)

    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc == {"written_at": 1_718_000_300.25, "waiting": [
        {"name": "WO_1", "since": 1_718_000_000.5, "reason": "settling: no change for 3 s yet, 27 s left"},
        {"name": "WO_\\xff\\xfe_1", "since": 1_718_000_100.0,
         "reason": "a temporary file is present (x\\xff.part): still being copied"},
        {"name": "<script>alert(1)</script>", "since": 1_718_000_200.0, "reason": "empty folder"},
    ]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path) == (1_718_000_300.25, [
        WaitingFolder("WO_1", 1_718_000_000.5, "settling: no change for 3 s yet, 27 s left"),
        WaitingFolder("WO_\\xff\\xfe_1", 1_718_000_100.0,
                      "a temporary file is present (x\\xff.part): still being copied"),
        WaitingFolder("<script>alert(1)</script>", 1_718_000_200.0, "empty folder"),
    ])

    save(path, [], now=1_718_000_400)  # replaced, not appended to
    assert load(path) == (1_718_000_400.0, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["waiting.json"]  # no temp file left


@pytest.mark.parametrize("count", [0, 1, 999, 1000, 1001, 2345])
def test_save_writes_in_chunks_the_bytes_of_one_json_document(tmp_path: Path, count: int) -> None:
    """Written a thousand entries at a time (50,000 waiting folders took 25 MiB as one document),
    byte for byte what one compact ``json.dumps`` of the whole list gives."""
    entries = [WaitingFolder(f"WO_{i}_é<\\", 1.7e9 + i / 3, f'settling: "{i}" \\ s\n') for i in range(count)]
    save(tmp_path / "w.json", entries, 1.7e9 + 0.125)
    doc = {"written_at": 1.7e9 + 0.125,
           "waiting": [{"name": w.name, "since": w.since, "reason": w.reason} for w in entries]}
    assert (tmp_path / "w.json").read_bytes() == json.dumps(doc, ensure_ascii=False,
                                                            separators=(",", ":")).encode("utf-8")
    assert load(tmp_path / "w.json") == (1.7e9 + 0.125, entries)


def test_display_name_of_valid_text_is_the_same_object() -> None:
    name = "".join(["WO_", "1"])  # not interned: a copy would be another object
    assert display_name(name) is name


def test_is_utf8_tells_names_that_were_not_utf8_on_disk() -> None:
    assert is_utf8("WO_é_1") and not is_utf8(NOT_UTF8) and not is_utf8("lone \ud800")


def test_save_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        save(tmp_path / "waiting.json", [WaitingFolder("WO", 1.0, "empty folder")], now=2.0)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "waiting.json").stat().st_mode) == 0o600


def test_save_that_fails_raises_and_leaves_no_temp_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        save(tmp_path / "no-such-folder" / "waiting.json", [], now=1.0)
    (tmp_path / "waiting.json").mkdir()  # the rename cannot replace a folder
    with pytest.raises(OSError):
        save(tmp_path / "waiting.json", [WaitingFolder("WO", 1.0, "empty folder")], now=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["waiting.json"]
    assert load(tmp_path / "waiting.json") is None  # a folder where the file should be: nothing known


def test_a_reader_never_sees_half_a_file(tmp_path: Path) -> None:
    """Saves replace the file whole: a concurrent reader gets the old list or the new one."""
    path = waiting_path(tmp_path)
    big = [WaitingFolder(f"WO_{i:05d}", 1_718_000_000.0 + i, "settling: no change for 1 s yet, 29 s left")
           for i in range(3000)]
    save(path, big, now=1.0)
    stop = threading.Event()
    seen: list[int] = []

    def writer() -> None:
        n = 1
        while not stop.is_set():
            n += 1
            save(path, big[: 1000 + n % 2000], now=float(n))

    t = threading.Thread(target=writer)
    t.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            loaded = load(path)
            assert loaded is not None
            seen.append(len(loaded[1]))
    finally:
        stop.set()
        t.join()
    assert len(set(seen)) > 1  # the writer did replace it while we read


@pytest.mark.parametrize("content", [
    b"",
    b"{",
    b'{"written_at": 1718000000, "waiting": [{"name": "WO", "since": 1718000000, "rea',
    b"\xff\xfe\x00garbage",
    b"[]",
    b"null",
    b'{"waiting": []}',
    b'{"written_at": 1718000000}',
    b'{"written_at": "yesterday", "waiting": []}',
    b'{"written_at": true, "waiting": []}',
    b'{"written_at": NaN, "waiting": []}',
    b'{"written_at": 1e300, "waiting": []}',
    b'{"written_at": -5, "waiting": []}',
    b'{"written_at": 1718000000, "waiting": {}}',
    b'{"written_at": 1718000000, "waiting": ["WO"]}',
    b'{"written_at": 1718000000, "waiting": [{"name": "WO", "since": 1718000000}]}',
    b'{"written_at": 1718000000, "waiting": [{"name": 5, "since": 1718000000, "reason": "x"}]}',
    b'{"written_at": 1718000000, "waiting": [{"name": "WO", "since": Infinity, "reason": "x"}]}',
    b"[" * 200_000,
], ids=lambda c: repr(c[:30]))
def test_load_of_a_garbled_file_is_none(tmp_path: Path, content: bytes) -> None:
    path = waiting_path(tmp_path)
    path.write_bytes(content)
    assert load(path) is None


def test_load_absent_or_unreadable_is_none(tmp_path: Path) -> None:
    assert load(tmp_path / "waiting.json") is None
    assert load(tmp_path / "missing" / "waiting.json") is None
    (tmp_path / "file").write_text("x")
    assert load(tmp_path / "file" / "waiting.json") is None  # NotADirectoryError


def test_load_escapes_surrogates_written_by_someone_else(tmp_path: Path) -> None:
    path = waiting_path(tmp_path)
    path.write_text('{"written_at": 5, "waiting": [{"name": "WO_\\udcff", "since": 1, '
                    '"reason": "r\\ud800"}]}')
    assert load(path) == (5.0, [WaitingFolder("WO_\\xff", 1.0, "r\\ud800")])


def test_claim_failed_reason_says_what_to_fix(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    denied = claim_failed_reason(PermissionError(errno.EACCES, "Permission denied"), inbox)
    assert denied.startswith("cannot move it: permission denied")
    assert str(inbox) in denied and "write permission" in denied
    assert "read-only" in claim_failed_reason(OSError(errno.EROFS, "Read-only file system"), inbox)
    assert claim_failed_reason(OSError(errno.EIO, "Input/output error"), inbox) == (
        "cannot move it: Input/output error")


def test_the_list_is_emptied_soon_after_the_last_folder_leaves_even_with_rare_rescans(tmp_path: Path) -> None:
    """Found by a hostile tester: a change right after a save waited for the next scan (every
    rescan_interval when nothing happens), so ``wodrop status`` listed folders long gone."""
    from helpers.daemon import DaemonProcess, write_config
    from helpers.receiver import ReceiverThread
    from helpers.workorders import drop_atomically

    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url, watch={"rescan_interval": "10m"})
        with DaemonProcess(cfg) as d:
            path = waiting_path(d.paths["state"])
            drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_1")
            def listed() -> list[str] | None:
                got = load(path)
                return None if got is None else [w.name for w in got[1]]

            d.wait_for(lambda: listed() == ["WO_1"], what="WO_1 listed")
            d.wait_for(lambda: "WO_1" in d.names_in("done"), what="WO_1 delivered")
            d.wait_for(lambda: listed() == [], timeout=15, what="the list emptied")
