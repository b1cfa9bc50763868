"""kill -9 the daemon at random points while a fault-injecting receiver misbehaves; restart each time.
In the end every work order was received exactly once, is in done/, and every received archive is a
valid zip whose bytes are the ones that were sealed."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from pathlib import Path

import pytest
from helpers.daemon import DaemonProcess, received_work_orders, write_config
from helpers.receiver import ReceiverThread
from helpers.workorders import drop_atomically

FAULTS = "status=503:0.05,reset:0.04,partial:0.05,throttle=0.1s:0.03,expire:0.01,slow=0.2s:0.03"


def _count(d: DaemonProcess, event: str) -> int:
    return sum(1 for e in d.events() if e.get("event") == event)


@pytest.mark.slow
def test_kill_9_at_random_points_loses_nothing_and_uploads_nothing_twice(tmp_path: Path) -> None:
    rng = random.Random(7)
    names: list[str] = []
    kills = 0
    with ReceiverThread(tmp_path / "received", faults=FAULTS, seed=11) as rx:
        cfg = write_config(
            tmp_path, rx.url,
            batch={"max_bytes": "700KiB", "max_age": "0.5s"},
            upload={"max_bandwidth": "1MiB", "concurrency": 2},
            watch={"settle": "0.3s"},
        )
        inbox = cfg.parent / "share" / "inbox"
        for wave in range(12):
            for i in range(5):
                name = f"WO_{wave:02d}_{i}"
                drop_atomically(tmp_path / "staging", inbox, name, images=("A-0.jpg", "A-1.jpg", "B.jpg"),
                                image_size=rng.randint(20_000, 90_000), metadata={"w": wave})
                names.append(name)
            d = DaemonProcess(cfg).start()
            started = kills + 1
            d.wait_for(lambda d=d, n=started: _count(d, "wodrop_started") >= n, timeout=30,
                       what="start-up")
            time.sleep(rng.uniform(0.1, 2.5))
            d.kill()
            kills += 1
        d = DaemonProcess(cfg, name="final").start()
        try:
            d.wait_for(lambda: d.names_in("done") == set(names), timeout=180, what="all work orders done")
            # The last folder lands in done/ before its batch row goes to 'done' and its spool archive is
            # removed (both asserted below), and SIGTERM cancels a finish half-way: wait for them first.
            d.wait_for_finished(timeout=60)
            assert d.stop() == 0
        finally:
            if d.proc and d.proc.poll() is None:
                d.kill()
        stats = rx.stats
    assert kills >= 10
    # the kills hit the interesting places: mid-upload (resumed from the server's offset) and mid-batch
    events = d.events() + DaemonProcess(cfg).events()
    assert any(e.get("event") == "upload_started" and e.get("resumed") for e in events)
    assert any(e.get("event") == "recovery_open_batch_rebuilt" for e in events)
    assert sorted(received_work_orders(rx.store)) == sorted(names), "each work order received exactly once"
    # every received archive is byte for byte an archive the daemon sealed
    db = sqlite3.connect(tmp_path / "state" / "wodrop.sqlite3")
    sealed = {name: sha for name, sha in db.execute("SELECT name, sha256 FROM batches WHERE state = 'done'")}
    for meta_path in rx.store.glob("*.json"):
        if meta_path.name.endswith(".session.json"):
            continue
        meta = json.loads(meta_path.read_text())
        archive = meta_path.with_suffix(".zip")
        assert hashlib.sha256(archive.read_bytes()).hexdigest() == meta["sha256"] == sealed[meta["filename"]]
    assert not [p for p in (tmp_path / "share" / "processing").iterdir() if not p.name.startswith(".")]
    assert list((tmp_path / "state" / "spool").iterdir()) == []
    assert sum(stats["faults_injected"].values()) > 0, stats
