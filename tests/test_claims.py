"""In-flight claims: a work-order id one instance is sending is not sent by another at the same time.

Found by the hostile tester: two instances on one share, the same id dropped again while the first
copy was still in the other instance's batch, were both uploaded (the ledger only knows deliveries)."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import yaml
from helpers.daemon import DaemonProcess, received_work_orders, write_config
from helpers.receiver import ReceiverThread
from helpers.workorders import drop_atomically
from wodrop.claims import Claims


def claims(tmp_path: Path, instance: str, processing: str = "p") -> Claims:
    (tmp_path / "done").mkdir(exist_ok=True)
    return Claims(tmp_path / "done", instance, tmp_path / f"processing-{processing}")


def test_one_instance_gets_an_id_the_other_is_told_who_has_it(tmp_path: Path) -> None:
    a, b = claims(tmp_path, "aaa", "a"), claims(tmp_path, "bbb", "b")
    assert a.take("WO_1") is None
    assert a.take("WO_1") is None, "taking it again is a no-op for its holder (a re-packed archive)"
    held = b.take("WO_1")
    assert held is not None and held.instance == "aaa" and held.work_order == "WO_1"
    b.release("WO_1")  # not b's: left alone
    assert b.take("WO_1") is not None
    a.release("WO_1")
    assert b.take("WO_1") is None and a.take("WO_1") is not None


def test_racing_instances_never_both_get_an_id(tmp_path: Path) -> None:
    holders = [claims(tmp_path, f"i{n}", str(n)) for n in range(8)]

    def race(c: Claims, name: str, gate: threading.Barrier, won: list[str]) -> None:
        gate.wait()
        if c.take(name) is None:
            won.append(c.instance)

    for round_ in range(30):
        name = f"WO_{round_}"
        won: list[str] = []
        gate = threading.Barrier(len(holders))
        threads = [threading.Thread(target=race, args=(c, name, gate, won)) for c in holders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, f"{name}: {won}"


def test_a_torn_or_planted_claim_still_holds_the_id(tmp_path: Path) -> None:
    a, b = claims(tmp_path, "aaa", "a"), claims(tmp_path, "bbb", "b")
    a.take("WO_1")
    a.path_of("WO_1").write_bytes(b'{"work_order": "WO_1", "inst')  # torn by a crash mid-write
    held = b.take("WO_1")
    assert held is not None and held.instance == "unknown"
    target = tmp_path / "victim"
    target.write_text("keep")
    os.symlink(target, a.path_of("WO_2"))
    assert b.take("WO_2") is not None
    b.release("WO_2")
    assert target.read_text() == "keep" and a.path_of("WO_2").is_symlink()


def test_a_claim_from_the_same_processing_folder_under_a_lost_db_is_ours(tmp_path: Path) -> None:
    """The state DB was deleted: a new instance id, but the folder recovery adopts is in our own
    processing/, claimed by us in an earlier life."""
    before, after = claims(tmp_path, "old", "a"), claims(tmp_path, "new", "a")
    before.take("WO_1")
    before.take("WO_2")
    assert after.take("WO_1") is None
    assert after.release_stale(in_flight={"WO_1"}) == 1
    assert not before.path_of("WO_2").exists() and before.path_of("WO_1").exists()


def test_release_stale_keeps_other_instances_claims(tmp_path: Path) -> None:
    a, b = claims(tmp_path, "aaa", "a"), claims(tmp_path, "bbb", "b")
    a.take("WO_1")
    b.take("WO_2")
    assert a.release_stale(in_flight=set()) == 1
    assert not a.path_of("WO_1").exists() and b.path_of("WO_2").exists()


def test_a_linked_claims_folder_is_refused(tmp_path: Path) -> None:
    c = claims(tmp_path, "aaa")
    (tmp_path / "done" / ".wodrop").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "done" / ".wodrop" / "claims")
    with pytest.raises(OSError, match="symbolic link"):
        c.take("WO_1")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_copy_dropped_at_another_instance_while_the_first_is_in_flight_is_not_sent(tmp_path: Path) -> None:
    share = tmp_path / "share"
    with ReceiverThread(tmp_path / "received") as rx:
        cfgs = []
        for who in ("a", "b"):
            root = tmp_path / who
            root.mkdir()
            cfgs.append(write_config(root, rx.url, paths={
                "inbox": str(share / f"inbox-{who}"), "done": str(share / "done"),
                "failed": str(share / "failed"), "processing": str(share / f"processing-{who}"),
                "state": str(root / "state")},
                upload={"max_bandwidth": "20KiB"}))  # a's upload stays in flight until told otherwise
        with DaemonProcess(cfgs[0], name="a") as a, DaemonProcess(cfgs[1], name="b") as b:
            drop_atomically(tmp_path / "staging-a", a.paths["inbox"], "WO_X", image_size=400_000)
            a.wait_for(lambda: ("WO_X", "batched") in (a.in_flight().get("work_orders") or []),
                       what="WO_X in a's batch")
            drop_atomically(tmp_path / "staging-b", b.paths["inbox"], "WO_X", image_size=400_000)
            b.wait_for(lambda: b.names_in("failed") == {"WO_X"}, what="b refused its copy")
            b.wait_for_finished()
            report = json.loads((share / "failed" / "WO_X.error.json").read_text())
            assert [e["code"] for e in report["errors"]] == ["duplicate_work_order"]
            assert "another wodrop instance" in report["errors"][0]["message"]
            # lift a's limit (SIGHUP reloads upload.max_bandwidth): its copy is delivered
            cfg = yaml.safe_load(cfgs[0].read_text())
            cfg["upload"].pop("max_bandwidth")
            cfgs[0].write_text(yaml.safe_dump(cfg))
            assert a.proc is not None
            a.proc.send_signal(signal.SIGHUP)
            a.wait_for(lambda: a.names_in("done") == {"WO_X"}, what="a delivered WO_X")
            a.wait_for_finished()
            a.wait_for(lambda: not any((share / "done" / ".wodrop" / "claims").iterdir()),
                       what="a released its claim")
    assert received_work_orders(rx.store) == ["WO_X"], "sent once"
