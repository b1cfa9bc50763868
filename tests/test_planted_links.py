"""Shared folders (failed/, done/) are writable by other people: a link planted where wodrop writes is
refused, never written through (the hostile tester overwrote the state DB this way)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from wodrop import fsops
from wodrop.ledger import Delivery, Ledger


def test_a_link_planted_at_the_reports_temp_name_is_not_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim.db"
    victim.write_bytes(b"precious")
    failed = tmp_path / "failed"
    failed.mkdir()
    names = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(fsops.secrets, "token_hex", lambda n: next(names))
    os.symlink(victim, failed / ".EVIL.error.json.aaaaaaaaaaaa.tmp")
    fsops.write_json_atomic(failed / "EVIL.error.json", {"work_order": "EVIL"})
    assert victim.read_bytes() == b"precious"
    assert json.loads((failed / "EVIL.error.json").read_text()) == {"work_order": "EVIL"}
    assert (failed / ".EVIL.error.json.aaaaaaaaaaaa.tmp").is_symlink(), "the planted link is left as it was"


def _delivery(name: str) -> Delivery:
    return Delivery(name, "batch-1", "r1", 0.0, "inst", 1, 10)


def test_a_ledger_replaced_by_a_link_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    done = tmp_path / "done"
    done.mkdir()
    ledger = Ledger(done, "inst")
    ledger.open()
    ledger.record([_delivery("WO_1")])
    ledger.path.unlink()
    os.symlink(victim, ledger.path)
    with pytest.raises(OSError):
        ledger.record([_delivery("WO_2")])
    assert victim.read_text() == "precious\n"
    other = Ledger(done, "other")
    other.open()  # reading the others' ledgers skips the link, and does not fail
    assert other.delivered("WO_2") is None


def test_a_ledger_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = tmp_path / "done"
    done.mkdir()
    os.symlink(elsewhere, done / ".wodrop")
    with pytest.raises(OSError, match="symbolic link"):
        Ledger(done, "inst").open()
    assert list(elsewhere.iterdir()) == []


def test_a_ledger_folder_removed_while_running_is_made_again(tmp_path: Path) -> None:
    done = tmp_path / "done"
    done.mkdir()
    ledger = Ledger(done, "inst")
    ledger.open()
    ledger.record([_delivery("WO_1")])
    for f in ledger.dir.iterdir():
        f.unlink()
    ledger.dir.rmdir()
    ledger.record([_delivery("WO_2")])
    again = Ledger(done, "other")
    again.open()
    assert again.delivered("WO_2") is not None
