"""A damaged or read-only state DB at start-up (finding 6), and a private state folder (finding 13).

``wodrop run`` must check its DB before it claims anything: one bad page, or a DB it cannot write, is
refused with a sentence saying what is wrong and what to do, exit 2, no Python traceback, and the inbox
left alone (no claim followed by a crash, no crash loop). And whatever the umask, the DB (upload URLs:
bearer capabilities) is 0600 and the state and spool folders 0700.
"""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers.daemon import DaemonProcess, write_config
from helpers.receiver import ReceiverThread
from helpers.workorders import drop_atomically

EXIT_USAGE = 2


@contextmanager
def running_with_umask(d: DaemonProcess, mask: int) -> Iterator[DaemonProcess]:
    """``with DaemonProcess(...)``, the daemon started under umask ``mask`` (inherited at fork)."""
    old = os.umask(mask)
    try:
        d.start()
    finally:
        os.umask(old)
    try:
        yield d
    finally:
        d.__exit__(None, None, None)  # stops it if it still runs


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def exit_of(d: DaemonProcess, timeout: float = 30) -> tuple[int, str]:
    """Wait for a daemon expected to refuse to start; its exit code and everything it printed."""
    assert d.proc is not None
    try:
        code = d.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        d.kill()
        raise AssertionError(f"wodrop run did not exit within {timeout}s (it should refuse to start):\n"
                             + d.log_path.read_text(errors="replace")[-4000:]) from None
    return code, d.log_path.read_text(errors="replace")


@pytest.fixture
def rx(tmp_path: Path) -> Iterator[ReceiverThread]:
    with ReceiverThread(tmp_path / "received") as r:
        yield r


def first_run(tmp_path: Path, rx: ReceiverThread) -> tuple[Path, DaemonProcess]:
    """``wodrop run`` once under umask 022: one work order through to done/, then a clean stop."""
    cfg = write_config(tmp_path, rx.url)
    d = DaemonProcess(cfg, name="first")
    assert not d.paths["state"].exists()  # the daemon creates it
    with running_with_umask(d, 0o022):
        drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_1")
        d.wait_for_db("SELECT name, state FROM work_orders", [("WO_1", "done")])
        d.wait_for_finished()
        assert d.stop() == 0
    return cfg, d


def add_rows(db_path: Path, n: int) -> None:
    """Enough finished work orders for a DB of many pages (their folders are long gone: harmless)."""
    con = sqlite3.connect(db_path)
    with con:
        con.executemany(
            "INSERT INTO work_orders(name, state, path, claimed_at, finished_at, updated_at)"
            " VALUES (?, 'done', ?, 1700000000, 1700000001, 1700000001)",
            [(f"OLD_{i:05d}", f"/srv/share/done/OLD_{i:05d}-{'x' * 80}") for i in range(n)],
        )
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def integrity(db_path: Path) -> list[str]:
    con = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as e:
        return [str(e)]
    finally:
        con.close()


def test_state_db_and_folders_are_private_whatever_the_umask(tmp_path: Path, rx: ReceiverThread) -> None:
    cfg = write_config(tmp_path, rx.url)
    d = DaemonProcess(cfg)
    with running_with_umask(d, 0o022):
        drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_1")
        d.wait_for_db("SELECT name, state FROM work_orders", [("WO_1", "done")])
        d.wait_for_finished()
        state = d.paths["state"]
        # while it runs: the DB and SQLite's companions (which hold the same rows, upload URLs included)
        files = {p.name: mode(p) for p in state.iterdir() if p.name.startswith("wodrop.sqlite3")}
        assert files.get("wodrop.sqlite3") == 0o600, files
        shown = {k: oct(m) for k, m in files.items()}
        assert all(m == 0o600 for m in files.values()), f"not private: {shown}"
        assert oct(mode(state)) == oct(0o700)
        assert oct(mode(d.spool)) == oct(0o700)
        assert d.stop() == 0
    assert oct(mode(d.db_path)) == oct(0o600)
    assert oct(mode(d.paths["state"])) == oct(0o700) and oct(mode(d.spool)) == oct(0o700)


def test_state_folder_made_by_someone_else_0755_is_made_private(tmp_path: Path, rx: ReceiverThread) -> None:
    cfg = write_config(tmp_path, rx.url)
    d = DaemonProcess(cfg)
    (d.paths["state"] / "spool").mkdir(parents=True)
    os.chmod(d.paths["state"], 0o755)
    os.chmod(d.paths["state"] / "spool", 0o755)
    with running_with_umask(d, 0o022):
        d.wait_for_event("wodrop_started")
        assert oct(mode(d.paths["state"])) == oct(0o700)
        assert oct(mode(d.spool)) == oct(0o700)
        assert oct(mode(d.db_path)) == oct(0o600)


def test_one_damaged_page_is_refused_with_what_to_do(tmp_path: Path, rx: ReceiverThread) -> None:
    cfg, first = first_run(tmp_path, rx)
    db_path = first.db_path
    add_rows(db_path, 600)
    assert not Path(f"{db_path}-wal").exists() or Path(f"{db_path}-wal").stat().st_size == 0
    con = sqlite3.connect(db_path)
    page_size, pages, free = (con.execute(f"PRAGMA {p}").fetchone()[0]
                              for p in ("page_size", "page_count", "freelist_count"))
    con.close()
    assert pages >= 12 and free == 0, (pages, free)
    assert db_path.stat().st_size == pages * page_size
    victim = pages // 2  # 1-based page number, well inside the file (not the header page)
    with db_path.open("r+b") as f:
        f.seek((victim - 1) * page_size)
        f.write(random.Random(6).randbytes(page_size))
    assert integrity(db_path) != ["ok"], "the damage did not take: pick another page"
    damaged = db_path.read_bytes()

    drop_atomically(tmp_path / "staging", first.paths["inbox"], "WO_2")
    d = DaemonProcess(cfg, name="damaged").start()
    code, out = exit_of(d)
    assert code == EXIT_USAGE, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    assert "damaged" in out and "aside" in out and "start again" in out, out[-4000:]
    assert "wodrop run:" in out  # the sentence for a person on stderr, not only a log event
    # refused before any claim: the new folder waits in the inbox, processing/ is empty
    assert d.names_in("inbox") == {"WO_2"} and d.names_in("processing") == set()
    assert db_path.read_bytes() == damaged  # left as it was, for the person to move aside

    again = DaemonProcess(cfg, name="damaged-again").start()  # a restart loop: the same clear refusal
    code, out = exit_of(again)
    assert code == EXIT_USAGE and "damaged" in out and "Traceback" not in out, out[-4000:]


def test_read_only_state_db_is_refused(tmp_path: Path, rx: ReceiverThread) -> None:
    cfg, first = first_run(tmp_path, rx)
    db_path = first.db_path
    drop_atomically(tmp_path / "staging", first.paths["inbox"], "WO_2")
    # Tests run as root, for whom mode bits do not stop a write: make the file immutable instead.
    r = subprocess.run(["chattr", "+i", str(db_path)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"chattr +i is not available here ({r.stderr.strip() or r.returncode}); "
                    "cannot make the DB read-only for root")
    try:
        with pytest.raises(PermissionError):  # the precondition: even root cannot write it now
            db_path.open("r+b").close()
        d = DaemonProcess(cfg, name="readonly").start()
        code, out = exit_of(d)
    finally:
        subprocess.run(["chattr", "-i", str(db_path)], check=False)
    assert code == EXIT_USAGE, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    assert "not writable" in out and "wodrop run:" in out, out[-4000:]
    assert d.names_in("inbox") == {"WO_2"} and d.names_in("processing") == set()
