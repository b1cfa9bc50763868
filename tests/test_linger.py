"""``batch.linger``: a quiet open archive is sealed as soon as an uploader has nothing to send, rather
than waiting out ``batch.max_age`` with the link idle (drop -> done at the speed of the link); while
every uploader is busy it keeps filling."""

from __future__ import annotations

from pathlib import Path

from helpers.daemon import DaemonProcess, received_work_orders, write_config
from helpers.receiver import ReceiverThread
from helpers.workorders import drop_atomically

_SEALED = "SELECT name, seal_reason, work_order_count, sealed_at, uploaded_at FROM batches ORDER BY id"


def test_a_quiet_batch_is_sealed_at_once_when_an_uploader_is_idle(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url, batch={"max_age": "1h", "linger": "0.3s"})
        with DaemonProcess(cfg) as d:
            drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_A")
            d.wait_for(lambda: d.names_in("done") == {"WO_A"}, what="WO_A done long before max_age")
            d.wait_for_finished()
            rows = d.query(_SEALED)
    assert rows is not None and [(r[1], r[2]) for r in rows] == [("idle", 1)]
    assert received_work_orders(rx.store) == ["WO_A"]


def test_while_every_uploader_is_busy_the_open_batch_keeps_filling(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx") as rx:
        # one uploader, held busy by a slow first upload (about 3 s at 64 KiB/s)
        cfg = write_config(tmp_path, rx.url, batch={"max_age": "1h", "linger": "0.3s"},
                           upload={"concurrency": 1, "max_bandwidth": "64KiB"})
        with DaemonProcess(cfg) as d:
            drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_A", image_size=100_000)
            d.wait_for_db("SELECT state FROM batches", [("uploading",)], what="WO_A's batch uploading")
            for name in ("WO_B", "WO_C"):
                drop_atomically(tmp_path / "staging", d.paths["inbox"], name)
                d.wait_for_db("SELECT COUNT(*) FROM work_orders WHERE name = ? AND state = 'batched'", [(1,)],
                              (name,), what=f"{name} packed")
            d.wait_for(lambda: d.names_in("done") == {"WO_A", "WO_B", "WO_C"}, what="all done")
            d.wait_for_finished()
            rows = d.query(_SEALED)
    assert rows is not None
    (_, r1, n1, _, up1), (_, r2, n2, sealed2, _) = rows
    assert (r1, n1) == ("idle", 1)
    assert (r2, n2) == ("idle", 2), "WO_B and WO_C went into one archive while the uploader was busy"
    assert sealed2 >= up1, "the second archive was sealed only once the first upload was done"
    assert sorted(received_work_orders(rx.store)) == ["WO_A", "WO_B", "WO_C"]


def test_linger_zero_waits_for_max_age(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url, batch={"max_age": "1.5s", "linger": 0})
        with DaemonProcess(cfg) as d:
            drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_A")
            d.wait_for(lambda: d.names_in("done") == {"WO_A"}, what="WO_A done")
            d.wait_for_finished()
            rows = d.query(_SEALED)
    assert rows is not None and [(r[1], r[2]) for r in rows] == [("age", 1)]
