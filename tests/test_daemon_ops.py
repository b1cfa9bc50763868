"""Daemon behaviour around the edges: sealing rules, scale-out, shutdown, bad keys, rejections,
back-pressure, reloads, systemd notifications and secrets."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
import urllib.request
from pathlib import Path

import pytest
from helpers.daemon import API_KEY, DaemonProcess, received_work_orders, write_config
from helpers.files import free_port
from helpers.receiver import ReceiverThread
from helpers.workorders import drop_atomically

_DONE_BATCHES = ("SELECT name, seal_reason, work_order_count, size FROM batches WHERE state = 'done'"
                 " ORDER BY id")
_DONE_REASONS = "SELECT seal_reason, work_order_count FROM batches WHERE state = 'done' ORDER BY id"


def _batches(d: DaemonProcess) -> list[tuple[str, str, int, int]]:
    rows = d.query(_DONE_BATCHES)
    assert rows is not None, "the state DB cannot be read"
    return rows


def _drop(tmp_path: Path, inbox: Path, names: list[str], **kw: object) -> None:
    for n in names:
        drop_atomically(tmp_path / "staging", inbox, n, **kw)  # type: ignore[arg-type]


def test_batches_seal_by_count(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url, batch={"max_work_orders": 3, "max_age": "30s", "linger": 0})
        with DaemonProcess(cfg) as d:
            names = [f"WO_{i}" for i in range(6)]
            _drop(tmp_path, d.paths["inbox"], names)
            d.wait_for(lambda: d.names_in("done") == set(names), timeout=30, what="6 done")
            # the batch rows go to 'done' after the last folder's rename: wait for them
            d.wait_for_db(_DONE_REASONS, [("count", 3), ("count", 3)], timeout=30)


def test_batches_seal_by_size_and_a_big_work_order_gets_its_own(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url, batch={"max_bytes": "300KiB", "max_age": "3s"})
        with DaemonProcess(cfg) as d:
            small = [f"WO_S{i}" for i in range(5)]
            _drop(tmp_path, d.paths["inbox"], small, images=("A.jpg",), image_size=100_000)
            d.wait_for(lambda: d.names_in("done") == set(small), timeout=30, what="small ones done")
            _drop(tmp_path, d.paths["inbox"], ["WO_BIG"], images=("A-0.jpg", "A-1.jpg", "A-2.jpg", "A-3.jpg"),
                  image_size=100_000)
            d.wait_for(lambda: "WO_BIG" in d.names_in("done"), timeout=30, what="big one done")
            d.wait_for_finished(timeout=30)
            batches = _batches(d)
    assert all(size <= 300 * 1024 for _, reason, _, size in batches if reason != "single")
    assert [n for _, reason, n, _ in batches if reason == "size"], batches
    assert [(reason, n) for _, reason, n, size in batches if size > 300 * 1024] == [("single", 1)]


def test_batches_seal_by_age(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url, batch={"max_age": "1.5s", "max_work_orders": 1000, "linger": 0})
        with DaemonProcess(cfg) as d:
            _drop(tmp_path, d.paths["inbox"], ["WO_A"])
            d.wait_for(lambda: "WO_A" in d.names_in("done"), timeout=30, what="done by age")
            # WO_A is renamed into done/ before the DB records its batch done (finding 16)
            d.wait_for_db(_DONE_REASONS, [("age", 1)], timeout=30)


def test_two_daemons_share_one_inbox_and_never_upload_twice(tmp_path: Path) -> None:
    names = [f"WO_{i:03d}" for i in range(80)]
    with ReceiverThread(tmp_path / "rx") as rx:
        shared = {"inbox": str(tmp_path / "share" / "inbox"), "done": str(tmp_path / "share" / "done"),
                  "failed": str(tmp_path / "share" / "failed")}
        cfgs = []
        for who in ("a", "b"):
            root = tmp_path / who
            root.mkdir()
            cfgs.append(write_config(root, rx.url, paths={
                **shared, "processing": str(tmp_path / "share" / f"processing-{who}"),
                "state": str(root / "state")}, watch={"settle": "0.3s"}))
        with DaemonProcess(cfgs[0]) as a, DaemonProcess(cfgs[1]) as b:
            for d in (a, b):
                d.wait_for(lambda d=d: any(e.get("event") == "wodrop_started" for e in d.events()),
                           what="start-up")
            _drop(tmp_path, a.paths["inbox"], names)
            a.wait_for(lambda: a.names_in("done") == set(names), timeout=60, what="all done")
        claimed = [sum(e.get("event") == "work_order_claimed" for e in d.events()) for d in (a, b)]
    assert sorted(received_work_orders(rx.store)) == names
    assert sum(claimed) == len(names)


def test_second_instance_on_the_same_processing_folder_is_refused(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url)
        with DaemonProcess(cfg) as d:
            d.wait_for(lambda: any(e.get("event") == "wodrop_started" for e in d.events()), what="start")
            second = DaemonProcess(cfg, name="second").start()
            assert second.proc is not None and second.proc.wait(timeout=20) == 2
            assert "another wodrop is already using" in second.log_path.read_text()


def test_folders_on_different_filesystems_are_refused(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the tmp dir")
    done = shm / f"wodrop-test-done-{os.getpid()}"
    cfg = write_config(tmp_path, None, paths={"done": str(done)})
    try:
        d = DaemonProcess(cfg).start()
        assert d.proc is not None and d.proc.wait(timeout=20) == 2
        assert "must be on one filesystem" in d.log_path.read_text()
    finally:
        done.rmdir()


def test_sigterm_mid_upload_exits_0_fast_and_the_next_run_resumes(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url, upload={"max_bandwidth": "512KiB"}, batch={"max_age": "0.5s"})
        d = DaemonProcess(cfg).start()
        _drop(tmp_path, d.paths["inbox"], ["WO_T"], images=("A-0.jpg", "A-1.jpg"), image_size=1_000_000)
        d.wait_for(lambda: rx.stats["bytes_received"] > 300_000, timeout=30, what="upload under way")
        t0 = time.monotonic()
        assert d.stop(timeout=10) == 0
        assert time.monotonic() - t0 < 10
        assert "WO_T" not in d.names_in("done")
        with DaemonProcess(cfg, name="second") as d2:
            d2.wait_for(lambda: "WO_T" in d2.names_in("done"), timeout=30, what="done after restart")
        resumed = [e for e in d2.events() if e.get("event") == "upload_started"]
        assert resumed and resumed[0]["offset"] > 0
        assert rx.stats["bytes_received"] < 1.5 * 2_000_000
    assert received_work_orders(rx.store) == ["WO_T"]


def test_refused_api_key_pauses_uploads_without_failing_anything(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx", api_key="the-right-key-123") as rx:
        port = free_port()
        cfg = write_config(tmp_path, rx.url, status={"listen": f"127.0.0.1:{port}"})
        with DaemonProcess(cfg) as d:
            _drop(tmp_path, d.paths["inbox"], ["WO_K"])
            d.wait_for(lambda: any(e.get("event") == "api_key_refused" for e in d.events()), timeout=30,
                       what="key refused")
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
            body = err.value.read().decode()
            assert err.value.code == 503
            assert "- uploads paused: the platform refused the API key (HTTP 401)" in body
            assert body.count("API key") == 1, body  # the reason once, not wrapped in itself
            d.wait_for(lambda: any(e.get("event") == "batch_sealed" for e in d.events()), timeout=30,
                       what="the work order packed while uploads are paused")
            time.sleep(1)
            assert d.names_in("failed") == set() and d.names_in("processing") == {"WO_K"}


def test_batch_rejected_for_good_sends_its_work_orders_to_failed(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx", faults="status=422:1.0") as rx:
        cfg = write_config(tmp_path, rx.url)
        with DaemonProcess(cfg) as d:
            _drop(tmp_path, d.paths["inbox"], ["WO_R1", "WO_R2"])
            d.wait_for(lambda: d.names_in("failed") == {"WO_R1", "WO_R2"}, timeout=30, what="rejected")
    report = json.loads((d.paths["failed"] / "WO_R1.error.json").read_text())
    assert report["stage"] == "upload" and report["errors"][0]["code"] == "upload_rejected"
    assert "422" in report["errors"][0]["message"] or "injected" in report["errors"][0]["message"]


def test_full_spool_disk_pauses_intake_and_sighup_reload_resumes_it(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url, batch={"min_free_space": "1000TiB"})
        with DaemonProcess(cfg) as d:
            _drop(tmp_path, d.paths["inbox"], ["WO_F"])
            d.wait_for(lambda: any(e.get("event") == "spool_disk_full" for e in d.events()), timeout=30,
                       what="spool full")
            time.sleep(1)
            assert "WO_F" not in d.names_in("done") and "WO_F" not in d.names_in("failed")
            text = cfg.read_text().replace("1000TiB", "1MiB")
            cfg.write_text(text)
            assert d.proc is not None
            d.proc.send_signal(signal.SIGHUP)
            d.wait_for(lambda: "WO_F" in d.names_in("done"), timeout=30, what="resumed after reload")
            assert any(e.get("event") == "config_reloaded" for e in d.events())


def test_sd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url)
        d = DaemonProcess(cfg, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}).start()
        seen: set[str] = set()
        deadline = time.monotonic() + 20
        while not {"READY=1", "WATCHDOG=1", "STATUS"} <= seen and time.monotonic() < deadline:
            for line in sock.recv(4096).decode().splitlines():
                seen.add(line.split("=", 1)[0] if line.startswith("STATUS=") else line)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        # Keep draining while it shuts down: the kernel queues only ~10 datagrams, and WATCHDOG=1 pings
        # that pile up unread while we wait for the exit would crowd STOPPING=1 out.
        sock.settimeout(0.5)
        deadline = time.monotonic() + 20
        while "STOPPING=1" not in seen and time.monotonic() < deadline:
            try:
                seen.update(sock.recv(4096).decode().splitlines())
            except TimeoutError:
                pass
        assert d.proc.wait(timeout=15) == 0
    sock.close()
    assert {"READY=1", "WATCHDOG=1", "STATUS", "STOPPING=1"} <= seen


def test_secrets_never_appear_in_any_output(tmp_path: Path) -> None:
    """The API key and every upload URL's token are absent from logs, reports, status endpoints and the
    `status` command, across a run with retries and a rejected batch."""
    with ReceiverThread(tmp_path / "rx", api_key=API_KEY, faults="status=503:0.2,reset:0.1", seed=3) as rx:
        port = free_port()
        cfg = write_config(tmp_path, rx.url, status={"listen": f"127.0.0.1:{port}"},
                           upload={"max_bandwidth": "1MiB"})
        with DaemonProcess(cfg) as d:
            _drop(tmp_path, d.paths["inbox"], [f"WO_{i}" for i in range(4)], image_size=200_000)
            _drop(tmp_path, d.paths["inbox"], ["BAD"], images=("x.gif",))
            d.wait_for(lambda: any(e.get("event") == "upload_started" for e in d.events()), timeout=30,
                       what="upload started")
            pages = [urllib.request.urlopen(f"http://127.0.0.1:{port}{p}", timeout=5).read().decode()
                     for p in ("/", "/api/status", "/metrics")]
            d.wait_for(lambda: len(d.names_in("done")) == 4, timeout=60, what="all done")
            # BAD's report is one of the outputs searched below: wait for it too
            d.wait_for(lambda: d.names_in("failed") == {"BAD"}, timeout=30, what="BAD in failed/")
        import subprocess
        import sys

        status = subprocess.run([sys.executable, "-m", "wodrop", "status", "-c", str(cfg)],
                                capture_output=True, text=True, timeout=30)
        status_json = subprocess.run([sys.executable, "-m", "wodrop", "status", "--json", "-c", str(cfg)],
                                     capture_output=True, text=True, timeout=30)
        db = sqlite3.connect(tmp_path / "state" / "wodrop.sqlite3")
        urls = [u for (u,) in db.execute("SELECT upload_url FROM batches") if u]
        sessions = [json.loads(p.read_text()) for p in rx.store.glob("*.session.json")]
    tokens = {s["token"] for s in sessions if "token" in s} | {u.split("upload_id=")[1] for u in urls}
    assert tokens, "the test must know the secrets it looks for"
    reports = "".join(p.read_text() for p in (tmp_path / "share" / "failed").glob("*.error.json"))
    everything = "\n".join([d.log_path.read_text(), reports, *pages, status.stdout, status.stderr,
                            status_json.stdout, status_json.stderr])
    assert API_KEY not in everything
    for t in tokens:
        assert t not in everything


def test_inbox_that_vanishes_and_comes_back_does_not_stop_the_daemon(tmp_path: Path) -> None:
    """A share that is unmounted for a while: the daemon waits, restarts its watcher, and resumes."""
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url)
        with DaemonProcess(cfg) as d:
            inbox = d.paths["inbox"]
            d.wait_for(lambda: any(e.get("event") == "watcher_started" for e in d.events()), what="watcher")
            inbox.rmdir()
            d.wait_for(lambda: any(e.get("event") == "inbox_unreachable" for e in d.events()), timeout=30,
                       what="inbox reported unreachable")
            inbox.mkdir()
            _drop(tmp_path, inbox, ["WO_BACK"])
            d.wait_for(lambda: "WO_BACK" in d.names_in("done"), timeout=40, what="work order after remount")
            assert d.proc is not None and d.proc.poll() is None
            d.wait_for(lambda: sum(e.get("event") == "watcher_started" for e in d.events()) >= 2, timeout=20,
                       what="the watcher restarted on the new inbox")
            # the restart the intake asks for once the inbox is back is no failure (and no back-off)
            assert not [e for e in d.events() if e.get("event") == "watcher_failed"
                        and "came back" in str(e.get("error"))]


def test_lagging_uploads_stop_intake_and_the_spool_stays_bounded(tmp_path: Path) -> None:
    """batch.max_sealed: while uploads lag, at most that many sealed batches wait and the rest of the
    folders stay in the inbox; everything flows once the uploads catch up."""
    names = [f"WO_{i}" for i in range(8)]
    with ReceiverThread(tmp_path / "rx", faults="slow=1s:1.0") as rx:
        cfg = write_config(tmp_path, rx.url, batch={"max_sealed": 1, "max_work_orders": 1},
                           upload={"concurrency": 1}, watch={"ready_marker": ".ready"})
        with DaemonProcess(cfg) as d:
            inbox = d.paths["inbox"]
            _drop(tmp_path, inbox, names)
            # Released one at first: dropped ready all at once, the 8 could all be claimed (in one scan)
            # before the first batch is sealed, and no folder would be left to wait for the pause.
            (inbox / names[0] / ".ready").touch()
            d.wait_for_event("intake_paused", timeout=30)
            for name in names[1:]:
                (inbox / name / ".ready").touch()
            most_spooled, deadline = 0, time.monotonic() + 90
            while d.names_in("done") != set(names):
                assert time.monotonic() < deadline, "uploads did not catch up"
                most_spooled = max(most_spooled, len(list((tmp_path / "state" / "spool").glob("*.zip"))))
                time.sleep(0.05)
            paused = [e for e in d.events() if e.get("event") == "intake_paused"]
    assert paused[0]["pending"] > 0, "folders waited in the inbox while intake was paused"
    assert most_spooled <= 2  # one sealed (uploading) + the open one
    assert sorted(received_work_orders(rx.store)) == names


def test_a_damaged_spool_archive_is_never_uploaded_and_its_work_orders_are_packed_again(
    tmp_path: Path,
) -> None:
    with ReceiverThread(tmp_path / "rx", faults="slow=0.5s:1.0") as rx:
        cfg = write_config(tmp_path, rx.url, upload={"max_bandwidth": "256KiB"})
        with DaemonProcess(cfg) as d:
            _drop(tmp_path, d.paths["inbox"], ["WO_Z1", "WO_Z2"], image_size=300_000)
            (started, *_) = d.wait_for_event("upload_started", timeout=30)
            # the archive being uploaded (a second, open one may already sit next to it in the spool)
            archive = d.spool / f"{started['batch']}.zip"
            with open(archive, "r+b") as f:
                f.truncate(100_000)  # the disk lost the end of it
            d.wait_for(lambda: d.names_in("done") == {"WO_Z1", "WO_Z2"}, timeout=90, what="done")
            assert any(e.get("event") == "batch_archive_lost" for e in d.events())
    assert sorted(received_work_orders(rx.store)) == ["WO_Z1", "WO_Z2"]


def test_a_symlink_dropped_in_the_inbox_is_left_alone_with_a_hint(tmp_path: Path) -> None:
    """Found by a hostile tester: a link to a work order sat in the inbox with nothing said."""
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url)
        with DaemonProcess(cfg) as d:
            (tmp_path / "elsewhere").mkdir()
            target = drop_atomically(tmp_path / "staging", tmp_path / "elsewhere", "WO_REAL")
            (d.paths["inbox"] / "WO_LINK").symlink_to(target, target_is_directory=True)
            d.wait_for(lambda: any(e.get("event") == "inbox_stray_file" and e.get("name") == "WO_LINK"
                                   and "symbolic link" in e.get("hint", "") for e in d.events()),
                       what="the link reported")
            _drop(tmp_path, d.paths["inbox"], ["WO_1"])
            d.wait_for(lambda: d.names_in("done") == {"WO_1"}, what="the others flow")
            assert (d.paths["inbox"] / "WO_LINK").is_symlink() and (target / "task_A-0.jpg").exists()
