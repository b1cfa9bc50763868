"""``wodrop upload`` next to ``wodrop run`` on one config, and ``wodrop upload`` run twice.

Finding 7: the daemon must never take over a one-shot upload's batch (origin ``cli``) left by an
interrupted or failed ``wodrop upload``: not resume it, not finish it, and above all not unlink the
user's archive. Finding 8: a file already uploaded is refused (exit 1, saying when and to which batch)
unless ``--again``; another file at the same path (other size or mtime) is not.

Real subprocesses against the project's receiver on 127.0.0.1, real files, the real state DB.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers.daemon import API_KEY, DaemonProcess, write_config
from helpers.files import sha256_file
from helpers.receiver import ReceiverThread
from helpers.workorders import drop_atomically

REPO = Path(__file__).resolve().parents[1]


def user_archive(path: Path, size: int, seed: int) -> Path:
    """The user's own file (bytes need not be a zip for ``wodrop upload``): deterministic content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(hashlib.shake_256(f"archive-{seed}".encode()).digest(size))
    return path


def wodrop_upload(config: Path, archive: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUSTOMER_API_KEY": API_KEY}
    return subprocess.run(
        [sys.executable, "-m", "wodrop", "upload", "-c", str(config), str(archive), "--no-progress", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def cli_rows(db_path: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)
    try:
        return list(con.execute("SELECT * FROM batches WHERE origin = 'cli' ORDER BY id"))
    finally:
        con.close()


def copies_in(store: Path, sha256: str) -> int:
    """How many complete uploads the receiver stored with these exact bytes."""
    return sum(1 for f in store.glob("*.zip") if sha256_file(f) == sha256) if store.exists() else 0


def batch_of(stdout: str) -> str:
    assert "to batch " in stdout, stdout
    return stdout.split("to batch ")[1].split()[0]


# ---- finding 7 ----------------------------------------------------------------------------------


def test_daemon_leaves_a_failed_cli_upload_and_its_archive_alone(tmp_path: Path) -> None:
    archive = user_archive(tmp_path / "user" / "export-2024.zip", 600 * 1024 + 7, seed=7)
    digest, mtime_ns = sha256_file(archive), archive.stat().st_mtime_ns

    # 1. `wodrop upload` against a platform whose storage answers 503 to every PUT: gives up, exit 1,
    #    leaving its record (session persisted) in the state DB the daemon shares.
    with ReceiverThread(tmp_path / "received-failing", faults="status=503:1.0", seed=3) as bad:
        port = int(bad.url.rsplit(":", 1)[1])
        cfg = write_config(tmp_path, bad.url, upload={"max_retries": 2, "concurrency": 1})
        r = wodrop_upload(cfg, archive)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "Traceback" not in r.stderr
        assert bad.stats["faults_injected"].get("status"), bad.stats
    db_path = tmp_path / "state" / "wodrop.sqlite3"
    left = cli_rows(db_path)
    assert len(left) == 1
    cli = dict(zip(["id", "name", "origin", "state", "archive_path"], left[0][:5], strict=True))
    assert cli["state"] in ("sealed", "uploading") and cli["archive_path"] == str(archive)

    # 2. The platform is healthy again (same address: the config is not touched) and the daemon starts
    #    on that config. Wait for start-up (recovery runs before `wodrop_started`), then for a work
    #    order dropped afterwards to go all the way through: a full rescan, and, with one upload
    #    worker, every batch recovery queued has been handled before that work order's batch.
    with ReceiverThread(tmp_path / "received", port=port) as good:
        d = DaemonProcess(cfg)
        with d:
            d.wait_for_event("wodrop_started")
            drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_SENTINEL")
            d.wait_for_db("SELECT name, state FROM work_orders", [("WO_SENTINEL", "done")])
            d.wait_for_finished()
            assert d.stop() == 0
        stats = good.stats
        log = d.log_path.read_text()

        # the user's archive: still there, same bytes, same mtime
        assert archive.exists(), "the daemon deleted the user's archive"
        assert sha256_file(archive) == digest and archive.stat().st_mtime_ns == mtime_ns
        # its record: untouched (state, session, offsets, timestamps: the whole row)
        assert cli_rows(db_path) == left
        # the platform never got it: one session and one stored upload, the sentinel's batch
        assert copies_in(good.store, digest) == 0
        assert stats["sessions_created"] == 1 and stats["uploads_completed"] == 1, stats
        assert cli["name"] not in log, "the daemon looked at the cli batch"
        assert "Traceback" not in log

        # 3. The record is still the user's to resume: the same command now completes (exit 0).
        r = wodrop_upload(cfg, archive)
        assert r.returncode == 0, r.stdout + r.stderr
        assert copies_in(good.store, digest) == 1
        assert archive.exists() and sha256_file(archive) == digest


# ---- finding 8 ----------------------------------------------------------------------------------


def test_uploading_the_same_file_again_is_refused_unless_again(tmp_path: Path) -> None:
    archive = user_archive(tmp_path / "user" / "X.zip", 300 * 1024 + 1, seed=8)
    digest = sha256_file(archive)
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url)

        first = wodrop_upload(cfg, archive)
        assert first.returncode == 0, first.stdout + first.stderr
        batch = batch_of(first.stdout)
        assert copies_in(rx.store, digest) == 1

        again = wodrop_upload(cfg, archive)
        assert again.returncode == 1, again.stdout + again.stderr
        assert batch in again.stderr and "--again" in again.stderr, again.stderr
        assert "already uploaded on 20" in again.stderr  # when (a date), not only that it was
        assert "Traceback" not in again.stderr
        assert copies_in(rx.store, digest) == 1 and rx.stats["sessions_created"] == 1
        assert [e for e in events(again.stderr) if e.get("event") == "upload_refused"]

        forced = wodrop_upload(cfg, archive, "--again")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert batch_of(forced.stdout) != batch
        assert copies_in(rx.store, digest) == 2 and rx.stats["sessions_created"] == 2

        # and after the forced upload, a plain re-run is refused again, naming the newest batch
        third = wodrop_upload(cfg, archive)
        assert third.returncode == 1 and batch_of(forced.stdout) in third.stderr, third.stderr
        assert copies_in(rx.store, digest) == 2


def _replace_keeping_size(path: Path, seed: int) -> None:
    size, st = path.stat().st_size, path.stat()
    path.write_bytes(hashlib.shake_256(f"other-{seed}".encode()).digest(size))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # surely another mtime


def test_another_file_at_the_same_path_is_not_refused(tmp_path: Path) -> None:
    archive = user_archive(tmp_path / "user" / "X.zip", 100 * 1024, seed=9)
    with ReceiverThread(tmp_path / "received") as rx:
        cfg = write_config(tmp_path, rx.url)
        first = wodrop_upload(cfg, archive)
        assert first.returncode == 0, first.stderr
        refused = wodrop_upload(cfg, archive)  # the same file: refused (what the rest is compared with)
        assert refused.returncode == 1 and "--again" in refused.stderr, refused.stdout + refused.stderr

        # other content, other size
        user_archive(archive, 120 * 1024, seed=10)
        bigger = wodrop_upload(cfg, archive)
        assert bigger.returncode == 0, bigger.stdout + bigger.stderr
        assert copies_in(rx.store, sha256_file(archive)) == 1

        # other content, same size, other mtime
        _replace_keeping_size(archive, seed=11)
        same_size = wodrop_upload(cfg, archive)
        assert same_size.returncode == 0, same_size.stdout + same_size.stderr
        assert copies_in(rx.store, sha256_file(archive)) == 1
        assert rx.stats["sessions_created"] == 3
