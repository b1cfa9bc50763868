"""The reference receiver's emulated processing over raw HTTP: statuses after an upload, an error per work
order whose metadata.json lacks a required key, a verdict that survives a restart, and the flags."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import requests
from helpers.receiver import ReceiverThread
from helpers.workorders import image_bytes

AUTH = {"Authorization": "Token test-key"}
REPO = Path(__file__).resolve().parents[1]


def archive(work_orders: dict[str, dict[str, Any] | None]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for wo, metadata in work_orders.items():
            zf.writestr(f"{wo}/A-1.jpg", image_bytes("A-1.jpg"))
            if metadata is not None:
                zf.writestr(f"{wo}/metadata.json", json.dumps(metadata))
    return buf.getvalue()


def upload(url: str, data: bytes) -> str:
    b = requests.post(f"{url}/v0.2/batches", json={"filename": "b"}, headers=AUTH, timeout=10).json()
    r = requests.put(b["upload_url"], data=data, timeout=30,
                     headers={"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"})
    assert r.status_code == 200, r.text
    return str(b["batch_id"])


def get(url: str, bid: str) -> dict[str, Any]:
    r = requests.get(f"{url}/v0.2/batches/{bid}", headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def test_pending_until_processed_then_errors_per_work_order_and_a_restart_keeps_time(tmp_path: Path) -> None:
    data = archive({"WO_ok": {"site": "A"}, "WO_nokey": {"other": 1}, "WO_nometa": None})
    with ReceiverThread(tmp_path / "store", processing_time=3600.0, require_metadata_keys=("site",)) as rx:
        bid = upload(rx.url, data)
        first = get(rx.url, bid)
        assert first["status"] == "pending" and first["errors"] == []
        listed = requests.get(f"{rx.url}/v0.2/batches", headers=AUTH, timeout=10).json()["results"]
        assert [b["status"] for b in listed] == ["pending"] and "errors" not in listed[0]
    # the next receiver on that store, with no processing time: the same batch is processed now
    with ReceiverThread(tmp_path / "store", require_metadata_keys=("site",)) as rx:
        done = get(rx.url, bid)
        assert done["status"] == "done"
        assert sorted((e["work_order"], e["code"], e["file"]) for e in done["errors"]) == [
            ("WO_nokey", "missing_metadata_key", "metadata.json"),
            ("WO_nometa", "missing_metadata_key", "metadata.json")]
        messages = {e["work_order"]: e["message"] for e in done["errors"]}
        assert messages["WO_nokey"] == "metadata.json has no key 'site'"
        listed = requests.get(f"{rx.url}/v0.2/batches", headers=AUTH, timeout=10).json()["results"]
        assert [b["status"] for b in listed] == ["done"]
    report = json.loads((tmp_path / "store" / f"{bid}.json").read_text())
    assert {wo["id"]: wo["valid"] for wo in report["work_orders"]} == \
        {"WO_ok": True, "WO_nokey": False, "WO_nometa": False}


def test_without_required_keys_a_good_batch_is_done_without_errors(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "store") as rx:
        bid = upload(rx.url, archive({"WO_1": None}))
        assert (get(rx.url, bid)["status"], get(rx.url, bid)["errors"]) == ("done", [])
        broken = upload(rx.url, b"not a zip at all")
        got = get(rx.url, broken)
        assert got["status"] == "failed" and [e["code"] for e in got["errors"]] == ["not_a_zip"]


def test_bad_processing_time_is_a_usage_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "wodrop", "receiver", "--listen", "127.0.0.1:0", "--store",
                        str(tmp_path), "--processing-time", "soon"], cwd=REPO, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2 and "--processing-time: expected a duration like 30s" in r.stderr
