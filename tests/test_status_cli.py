"""``wodrop status`` as a real subprocess against a real state DB, while a writer holds a transaction."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from helpers.statusdb import API_KEY, UPLOAD_URL, populate, write_config
from wodrop.status.collect import iso
from wodrop.waiting import WaitingFolder, save, waiting_path

REPO = Path(__file__).resolve().parent.parent
SECRETS = (API_KEY, UPLOAD_URL, "SECRET-UPLOAD-ID")


def wodrop_status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUSTOMER_API_KEY": API_KEY}  # as the daemon's own environment would have it
    return subprocess.run([sys.executable, "-m", "wodrop", "status", "-c", str(config), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=30)


def test_human_and_json_while_a_writer_holds_a_transaction(tmp_path: Path) -> None:
    fx = populate(tmp_path)
    writer = sqlite3.connect(fx.cfg.paths.db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE batches SET state = 'failed' WHERE id = ?", (fx.done_id,))
    try:
        human = wodrop_status(fx.config_path)
        as_json = wodrop_status(fx.config_path, "--json")
    finally:
        writer.execute("ROLLBACK")
        writer.close()

    assert human.returncode == 0, human.stderr
    out = human.stdout
    assert out.splitlines()[:2] == [
        "Health: 2 work orders failed today (see recent failures)",
        "TEST MODE: nothing is sent to the platform (api.url is not set); batches go to the local receiver, "
        f"archives in {fx.cfg.paths.state / 'received'}",
    ]
    up_line = next(line for line in out.splitlines() if "batch-20240611-0002" in line)
    assert up_line.split()[0] == "uploading" and "100.0 MiB / 250.0 MiB (40%)" in up_line
    done_line = next(line for line in out.splitlines() if "batch-20240611-0001" in line)
    assert done_line.split()[0] == "done"  # the uncommitted write is not seen
    assert "- bad_image_name [photo.gif]: photo.gif is not a JPEG or PNG image" in out
    assert "WO_rejected  upload" in out
    assert "Batches by state: done 1, uploading 1" in out
    assert "Work orders by state: batched 2, done 3, failed 2" in out

    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert [b["name"] for b in data["batches"]] == ["batch-20240611-0002", "batch-20240611-0001"]
    assert data["batches"][0]["percent"] == 40.0 and data["batches"][0]["rate_bytes_per_s"] is None
    assert [f["work_order"] for f in data["failures"]] == ["WO_rejected", "WO_bad_<script>"]
    assert data["daemon"] is None and data["inbox"] is None
    assert data["destination"] == {"kind": "local_receiver", "store": str(fx.cfg.paths.state / "received"),
                                   "config_file": str(fx.config_path)}
    assert len(data["activity"]) == 24 and sum(a["work_orders_done"] for a in data["activity"]) == 3

    for text in (human.stdout, human.stderr, as_json.stdout):
        for secret in SECRETS:
            assert secret not in text
    assert "«redacted»" in human.stdout

    fx.db.close()  # no daemon running any more: no -wal/-shm files, still readable
    assert wodrop_status(fx.config_path).returncode == 0


def test_no_state_yet_is_not_an_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    r = wodrop_status(config)
    assert r.returncode == 0
    assert r.stdout.splitlines() == [
        f"no state yet: the daemon has not run with this config (state: {tmp_path}/state/wodrop.sqlite3)",
        "TEST MODE: nothing is sent to the platform (api.url is not set); batches go to the local receiver, "
        f"archives in {tmp_path / 'state' / 'received'}",
    ]
    data = json.loads(wodrop_status(config, "--json").stdout)
    assert data["batches"] == [] and data["failures"] == [] and "no state yet" in data["health"]["reason"]
    assert data["destination"]["kind"] == "local_receiver" and data["activity"] == []
    assert not (tmp_path / "state").exists()  # looking did not create anything


def test_waiting_folders_from_the_daemons_waiting_list(tmp_path: Path) -> None:
    """The daemon leaves its waiting list in the state folder; `wodrop status` shows the oldest first,
    with how long and why, and says how many more there are."""
    fx = populate(tmp_path)
    fx.db.close()
    now = time.time()
    entries = [
        WaitingFolder(os.fsdecode(b"WO_\xff\x1b[31m"), now - 3700,
                      "cannot move it: permission denied. The user wodrop runs as needs write permission"),
        WaitingFolder("WO_copying", now - 125,
                      "a temporary file is present (A-1.jpg.part): still being copied"),
        *(WaitingFolder(f"WO_settling_{i:02d}", now - 60 + i, "settling: no change for 3 s yet, 27 s left")
          for i in range(28)),
    ]
    save(waiting_path(fx.cfg.paths.state), reversed(entries), now=now - 2)

    r = wodrop_status(fx.config_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Waiting in the inbox ("))
    assert lines[start].startswith("Waiting in the inbox (30, as of ") and lines[start].endswith("s ago):")
    header, first, second, third = lines[start + 1:start + 5]
    assert header.split() == ["FOLDER", "WAITING", "WHY"]
    assert first.split()[:2] == ["WO_\\xff\\x1b[31m", "1h01m"]  # no raw escape reaches the terminal
    assert first.endswith("cannot move it: permission denied. The user wodrop runs as needs write permission")
    # the subprocess reads its own clock, a few seconds later under load: 2m05s or a little more
    assert second.split()[0] == "WO_copying" and second.split()[1] in {f"2m{n:02d}s" for n in range(5, 20)}
    assert second.endswith("still being copied")
    assert third.split()[0] == "WO_settling_00"
    assert lines[start + 22] == "  … and 10 more"  # 20 shown
    assert "\x1b" not in r.stdout

    data = json.loads(wodrop_status(fx.config_path, "--json").stdout)
    inbox = data["inbox"]
    assert inbox["waiting_total"] == 30 and len(inbox["waiting"]) == 30
    assert inbox["waiting"][0] == {"name": "WO_\\xff\x1b[31m", "since": iso(now - 3700),
                                   "reason": entries[0].reason}
    assert inbox["waiting_as_of"] == iso(now - 2)

    waiting_path(fx.cfg.paths.state).write_bytes(b"\x00garbled")
    r = wodrop_status(fx.config_path)
    assert r.returncode == 0 and "Waiting in the inbox" not in r.stdout
