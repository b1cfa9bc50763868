"""``wodrop validate`` and ``wodrop pack`` end to end: output shapes, exit codes, archives on disk."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers.workorders import make_work_order
from wodrop.cli import main

REPO = Path(__file__).resolve().parent.parent


def wodrop(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m daemon`` as a real subprocess (what a user or script runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WODROP")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "wodrop", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    root = tmp_path / "inbox"
    make_work_order(root, "WO_1", images=["A-1.jpg", "A-0.jpg", "B.png"], metadata={"k": 1})
    make_work_order(root, "WO_2", images=["A-1.jpg", "A-1.png"], extra_files={"notes.txt": b"x"})
    make_work_order(root, "WO_3", images=["C.jpg"], extra_files={".DS_Store": b"x"})
    return root


def test_validate_json_shape_and_exit_code(inbox: Path) -> None:
    run = wodrop("validate", "--json", str(inbox), cwd=inbox.parent)
    assert run.returncode == 1, run.stderr
    doc = json.loads(run.stdout)
    assert list(doc) == ["work_orders"]
    assert [(w["id"], w["valid"]) for w in doc["work_orders"]] == [
        ("WO_1", True), ("WO_2", False), ("WO_3", True)]
    for w in doc["work_orders"]:
        assert list(w) == ["id", "path", "valid", "errors", "files"]
        assert Path(w["path"]) == inbox / w["id"]
    assert doc["work_orders"][0]["files"] == ["metadata.json", "A-0.jpg", "A-1.jpg", "B.png"]
    assert {(e["code"], e["file"]) for e in doc["work_orders"][1]["errors"]} == {
        ("duplicate_image", "A-1.png"), ("unsupported_file", "notes.txt")}
    assert all(set(e) == {"code", "file", "message"} for e in doc["work_orders"][1]["errors"])


def test_validate_human_output(inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(inbox)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "WO_1  OK  (4 files: metadata.json, A-0.jpg, A-1.jpg, B.png)"
    assert lines[1] == "WO_2  INVALID"
    assert lines[2].startswith("    - ") and lines[3].startswith("    - ")
    assert any("notes.txt" in line and "[unsupported_file]" in line for line in lines[2:4])
    assert lines[4] == "WO_3  OK  (1 file: C.jpg)"
    assert lines[5] == "3 work orders: 2 OK, 1 invalid."


def test_validate_exit_codes(inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(inbox / "WO_1"), str(inbox / "WO_3")]) == 0
    assert main(["validate", str(inbox / "WO_2")]) == 1
    assert main(["validate", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["validate", str(inbox / "WO_1" / "B.png")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["validate", str(tmp_path / "empty")]) == 1
    assert "no work-order folders" in capsys.readouterr().err


def test_pack_round_trip(inbox: Path, tmp_path: Path) -> None:
    out = tmp_path / "batch.zip"
    run = wodrop("pack", str(inbox), "-o", str(out), cwd=tmp_path)
    assert run.returncode == 1, run.stderr  # WO_2 is invalid: reported, left out
    assert "WO_2  INVALID" in run.stdout and "Packed 2 work orders (5 files)" in run.stdout
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"sha256 {sha}" in run.stdout and f"{out.stat().st_size:,} bytes" in run.stdout
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["WO_1/metadata.json", "WO_1/A-0.jpg", "WO_1/A-1.jpg", "WO_1/B.png",
                                 "WO_3/C.jpg"]
        for name in zf.namelist():
            assert zf.read(name) == (inbox / name).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.zip", "inbox"]  # no temp file left


def test_pack_all_valid_exits_0(inbox: Path, tmp_path: Path) -> None:
    out = tmp_path / "ok.zip"
    assert main(["pack", str(inbox / "WO_1"), str(inbox / "WO_3"), "-o", str(out)]) == 0
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None and len(zf.namelist()) == 5


def test_pack_never_overwrites(inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine.zip"
    out.write_bytes(b"a user's file")
    assert main(["pack", str(inbox), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"a user's file"


def test_pack_nothing_valid_writes_nothing(
    inbox: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "none.zip"
    assert main(["pack", str(inbox / "WO_2"), "-o", str(out)]) == 1
    assert "Nothing to pack" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inbox"]


def test_pack_duplicate_ids_across_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = make_work_order(tmp_path / "site1", "WO_7", images=["A.jpg"])
    make_work_order(tmp_path / "site2", "WO_7", images=["B.jpg"])
    out = tmp_path / "b.zip"
    assert main(["pack", str(tmp_path / "site1"), str(tmp_path / "site2"), "-o", str(out)]) == 1
    text = capsys.readouterr().out
    assert "WO_7  INVALID" in text and "[duplicate_work_order]" in text and str(first) in text
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["WO_7/A.jpg"]
