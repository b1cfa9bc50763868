"""The reference receiver against raw HTTP clients: batch API and GCS resumable-upload semantics."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import pytest
import requests
from helpers.receiver import ReceiverThread
from helpers.workorders import image_bytes

ALIGN = 262144
AUTH = {"Authorization": "Token test-key"}


@pytest.fixture
def rx(tmp_path: Path) -> Iterator[ReceiverThread]:
    with ReceiverThread(tmp_path / "store") as r:
        yield r


def new_batch(rx: ReceiverThread, filename: str = "batch-1", headers: dict[str, str] = AUTH) -> dict:
    r = requests.post(f"{rx.url}/v0.2/batches/", json={"filename": filename}, headers=headers, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def put(url: str, start: int, data: bytes, total: int | str) -> requests.Response:
    end = start + len(data) - 1
    headers = {"Content-Range": f"bytes {start}-{end}/{total}", "Content-Type": "application/octet-stream"}
    return requests.put(url, data=data, headers=headers, timeout=30)


def query(url: str, total: int | str = "*") -> requests.Response:
    return requests.put(url, headers={"Content-Range": f"bytes */{total}"}, timeout=10)


def saved(resp: requests.Response) -> int:
    """Bytes the server holds according to a 308 (no Range = 0)."""
    assert resp.status_code == 308, (resp.status_code, resp.text)
    rng = resp.headers.get("Range")
    if rng is None:
        return 0
    assert rng.startswith("bytes=0-")
    return int(rng.removeprefix("bytes=0-")) + 1


def test_happy_path_two_chunks(rx: ReceiverThread) -> None:
    data = os.urandom(2 * ALIGN + 1234)
    b = new_batch(rx)
    assert b["status"] == "created" and b["upload_url"].startswith(f"{rx.url}/upload/{b['batch_id']}?")
    assert saved(put(b["upload_url"], 0, data[: 2 * ALIGN], len(data))) == 2 * ALIGN
    done = put(b["upload_url"], 2 * ALIGN, data[2 * ALIGN :], len(data))
    assert done.status_code == 200, done.text
    meta = done.json()
    assert meta["size"] == str(len(data))
    assert meta["md5Hash"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert meta["crc32c"] == base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
    stored = rx.store / f"{b['batch_id']}.zip"
    assert stored.read_bytes() == data
    report = json.loads((rx.store / f"{b['batch_id']}.json").read_text())
    assert report["sha256"] == hashlib.sha256(data).hexdigest() and report["size"] == len(data)
    got = requests.get(f"{rx.url}/v0.2/batches/{b['batch_id']}/", headers=AUTH, timeout=10).json()
    # no processing time: processed at once; random bytes are no zip, so the whole batch failed
    assert got["status"] == "failed" and got["size"] == len(data)
    assert [(e["work_order"], e["code"]) for e in got["errors"]] == [(None, "not_a_zip")]


def test_nothing_saved_means_no_range(rx: ReceiverThread) -> None:
    url = new_batch(rx)["upload_url"]
    r = query(url, 10 * ALIGN)
    assert r.status_code == 308 and "Range" not in r.headers


def test_range_reports_what_is_saved(rx: ReceiverThread) -> None:
    url = new_batch(rx)["upload_url"]
    data = os.urandom(3 * ALIGN)
    assert saved(put(url, 0, data[:ALIGN], "*")) == ALIGN
    assert saved(query(url)) == ALIGN
    assert saved(put(url, ALIGN, data[ALIGN : 2 * ALIGN], "*")) == 2 * ALIGN


def test_resent_bytes_are_ignored(rx: ReceiverThread) -> None:
    b = new_batch(rx)
    data = os.urandom(4 * ALIGN + 77)
    assert saved(put(b["upload_url"], 0, data[: 2 * ALIGN], len(data))) == 2 * ALIGN
    # The client lost the answer and resends from ALIGN: the overlap must not be appended twice.
    assert saved(put(b["upload_url"], ALIGN, data[ALIGN : 3 * ALIGN], len(data))) == 3 * ALIGN
    before = rx.stats["bytes_received"]
    done = put(b["upload_url"], 0, data, len(data))  # everything again, from 0
    assert done.status_code == 200
    assert rx.stats["bytes_received"] - before == len(data)  # all read, only the new bytes saved
    assert rx.stats["bytes_saved"] == len(data)
    assert (rx.store / f"{b['batch_id']}.zip").read_bytes() == data
    assert done.json()["md5Hash"] == base64.b64encode(hashlib.md5(data).digest()).decode()


def test_gap_is_not_accepted(rx: ReceiverThread) -> None:
    b = new_batch(rx)
    data = os.urandom(3 * ALIGN)
    r = put(b["upload_url"], ALIGN, data[ALIGN : 2 * ALIGN], len(data))
    assert saved(r) == 0
    assert saved(put(b["upload_url"], 0, data[:ALIGN], len(data))) == ALIGN
    assert saved(put(b["upload_url"], 2 * ALIGN, data[2 * ALIGN :], len(data))) == ALIGN
    assert not (rx.store / f"{b['batch_id']}.zip").exists()
    assert (rx.store / f"{b['batch_id']}.zip.part").stat().st_size == ALIGN


@pytest.mark.parametrize("total", ["*", 10 * ALIGN])
def test_non_final_chunk_must_be_a_multiple_of_256k(rx: ReceiverThread, total: int | str) -> None:
    url = new_batch(rx)["upload_url"]
    r = put(url, 0, os.urandom(ALIGN + 1), total)
    assert r.status_code == 400 and str(ALIGN) in r.json()["detail"]
    assert "Range" not in query(url).headers


def test_final_chunk_of_any_size(rx: ReceiverThread) -> None:
    data = os.urandom(1000)
    b = new_batch(rx)
    r = put(b["upload_url"], 0, data, len(data))
    assert r.status_code == 200 and r.json()["size"] == "1000"
    empty = new_batch(rx, "empty")
    r = query(empty["upload_url"], 0)  # a zero-byte object is finalised by its status query
    assert r.status_code == 200 and r.json()["size"] == "0"


def test_unknown_total_is_finalised_by_a_later_declaration(rx: ReceiverThread) -> None:
    data = os.urandom(2 * ALIGN)
    b = new_batch(rx)
    assert saved(put(b["upload_url"], 0, data, "*")) == 2 * ALIGN
    r = query(b["upload_url"], len(data))
    assert r.status_code == 200 and r.json()["size"] == str(len(data))


def test_status_query_of_finished_session_is_200_with_checksums(rx: ReceiverThread) -> None:
    data = os.urandom(ALIGN + 5)
    b = new_batch(rx)
    assert put(b["upload_url"], 0, data, len(data)).status_code == 200
    r = query(b["upload_url"], len(data))
    assert r.status_code == 200
    meta = r.json()
    assert meta["size"] == str(len(data)) and meta["batch_id"] == b["batch_id"]
    assert meta["md5Hash"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert meta["crc32c"] == base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
    assert query(b["upload_url"]).status_code == 200  # bytes */* too


def test_delete_on_upload_url_is_499_then_gone(rx: ReceiverThread) -> None:
    b = new_batch(rx)
    assert saved(put(b["upload_url"], 0, os.urandom(ALIGN), "*")) == ALIGN
    assert requests.delete(b["upload_url"], timeout=10).status_code == 499
    assert query(b["upload_url"]).status_code == 410
    assert not (rx.store / f"{b['batch_id']}.zip.part").exists()


def test_protocol_errors_are_400_and_save_nothing(rx: ReceiverThread) -> None:
    url = new_batch(rx)["upload_url"]
    data = os.urandom(2 * ALIGN)
    r = requests.put(url, data=data, headers={"Content-Range": f"bytes 0-{ALIGN - 1}/*"}, timeout=10)
    assert r.status_code == 400 and "body" in r.json()["detail"]  # body longer than the range
    bad_range = {"Content-Range": "bytes=0-0/1"}
    assert requests.put(url, data=b"x", headers=bad_range, timeout=10).status_code == 400
    assert requests.put(url, data=b"x", timeout=10).status_code == 400  # no Content-Range
    assert saved(query(url)) == 0
    assert saved(put(url, 0, data[:ALIGN], 5 * ALIGN)) == ALIGN
    r = put(url, ALIGN, data[ALIGN:], 6 * ALIGN)  # total differs from the declared one
    assert r.status_code == 400 and "declared" in r.json()["detail"]
    assert saved(query(url)) == ALIGN


def test_wrong_token_or_unknown_session_is_404(rx: ReceiverThread) -> None:
    b = new_batch(rx)
    assert query(b["upload_url"].replace("upload_id=", "upload_id=x")).status_code == 404
    assert query(f"{rx.url}/upload/{'0' * 32}?upload_id=abc").status_code == 404
    assert query(f"{rx.url}/upload/{b['batch_id']}").status_code == 404


def test_api_key(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "store", api_key="s3cret-key") as rx:
        url = f"{rx.url}/v0.2/batches/"
        body = {"filename": "b"}
        r = requests.post(url, json=body, headers={"Authorization": "Token wrong"}, timeout=10)
        assert r.status_code == 401 and r.json() == {"detail": "Invalid token."}
        assert requests.post(url, json=body, timeout=10).status_code == 401
        bearer = {"Authorization": "Bearer s3cret-key"}  # the batch API takes DRF tokens only
        assert requests.get(url, headers=bearer, timeout=10).status_code == 401
        b = new_batch(rx, headers={"Authorization": "Token s3cret-key"})
        # The upload URL is the capability: no Authorization needed (and a wrong one is ignored).
        r = requests.put(b["upload_url"], headers={"Content-Range": "bytes */*", **AUTH}, timeout=10)
        assert r.status_code == 308


def test_any_key_accepted_without_api_key_but_header_required(rx: ReceiverThread) -> None:
    new_batch(rx, headers={"Authorization": "Token whatever"})
    r = requests.post(f"{rx.url}/v0.2/batches/", json={"filename": "b"}, timeout=10)
    assert r.status_code == 401


@pytest.mark.parametrize("body", [b"not json", b"[]", b"{}", b'{"filename": ""}', b'{"filename": 3}'])
def test_bad_create_requests_are_400(rx: ReceiverThread, body: bytes) -> None:
    r = requests.post(f"{rx.url}/v0.2/batches/", data=body, headers=AUTH, timeout=10)
    assert r.status_code == 400 and r.json()["detail"]


def test_list_get_delete_batches(rx: ReceiverThread) -> None:
    a, b = new_batch(rx, "a"), new_batch(rx, "b")
    listed = requests.get(f"{rx.url}/v0.2/batches/", headers=AUTH, timeout=10).json()
    assert [x["batch_id"] for x in listed["results"]] == [a["batch_id"], b["batch_id"]]
    assert listed["count"] == 2
    item = f"{rx.url}/v0.2/batches/{a['batch_id']}/"
    assert saved(put(a["upload_url"], 0, os.urandom(ALIGN), "*")) == ALIGN
    assert requests.get(item, headers=AUTH, timeout=10).json()["status"] == "uploading"
    assert requests.delete(item, headers=AUTH, timeout=10).status_code == 204
    assert requests.get(item, headers=AUTH, timeout=10).status_code == 404
    assert query(a["upload_url"]).status_code == 404
    assert put(b["upload_url"], 0, b"tiny", 4).status_code == 200
    item_b = f"{rx.url}/v0.2/batches/{b['batch_id']}/"
    assert requests.delete(item_b, headers=AUTH, timeout=10).status_code == 409


def test_stats_over_http_match_python(rx: ReceiverThread) -> None:
    b = new_batch(rx)
    put(b["upload_url"], 0, os.urandom(ALIGN), "*")
    over_http = requests.get(f"{rx.url}/_receiver/stats", timeout=10).json()
    assert over_http["sessions_created"] == 1 and over_http["bytes_received"] == ALIGN
    assert over_http["chunks"] == 1 and over_http["requests"] == 3  # POST, PUT, this GET
    assert rx.stats == over_http


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
    return buf.getvalue()


def test_stored_archive_and_per_work_order_report(rx: ReceiverThread) -> None:
    archive = _zip_bytes(
        {
            "WO_1/metadata.json": b'{"site": "x"}',
            "WO_1/task_A-1.jpg": image_bytes("a.jpg", pad_to=3 * ALIGN),  # spans several chunks
            "WO_1/task_B.png": image_bytes("b.png"),
            "WO_2/parameters.json": b"[1]",
            "WO_2/notes.txt": b"hello",
            "WO_2/task_A-.jpg": image_bytes("a.jpg"),
            "WO_2/task_C.jpg": image_bytes("c.png"),
            "WO_2/task_C.jpeg": image_bytes("c.jpg"),
            "bad id!/task_A.jpg": image_bytes("a.jpg"),
            "stray.jpg": image_bytes("a.jpg"),
        }
    )
    b = new_batch(rx, "batch-20260101")
    cut = len(archive) // ALIGN * ALIGN
    assert saved(put(b["upload_url"], 0, archive[:cut], len(archive))) == cut
    assert put(b["upload_url"], cut, archive[cut:], len(archive)).status_code == 200
    assert (rx.store / f"{b['batch_id']}.zip").read_bytes() == archive
    assert not (rx.store / f"{b['batch_id']}.zip.part").exists()
    report = json.loads((rx.store / f"{b['batch_id']}.json").read_text())
    assert report["batch_id"] == b["batch_id"] and report["filename"] == "batch-20260101"
    assert report["size"] == len(archive) and report["sha256"] == hashlib.sha256(archive).hexdigest()
    assert report["md5"] == base64.b64encode(hashlib.md5(archive).digest()).decode()
    assert report["received_at"].endswith("Z")
    assert [e["code"] for e in report["errors"]] == ["unexpected_file"]
    by_id = {wo["id"]: wo for wo in report["work_orders"]}
    assert by_id["WO_1"] == {"id": "WO_1", "valid": True, "errors": []}
    codes = sorted((e["code"], e["file"]) for e in by_id["WO_2"]["errors"])
    assert codes == [
        ("bad_image_name", "task_A-.jpg"),
        ("duplicate_image", "task_C.jpeg"),
        ("image_content_mismatch", "task_C.jpg"),
        ("invalid_json", "parameters.json"),
        ("unsupported_file", "notes.txt"),
    ]
    assert by_id["WO_2"]["valid"] is False
    assert [e["code"] for e in by_id["bad id!"]["errors"]] == ["bad_work_order_id"]


def test_not_a_zip_is_stored_with_a_batch_error(rx: ReceiverThread) -> None:
    b = new_batch(rx)
    assert put(b["upload_url"], 0, b"definitely not a zip", 20).status_code == 200
    report = json.loads((rx.store / f"{b['batch_id']}.json").read_text())
    assert [e["code"] for e in report["errors"]] == ["not_a_zip"] and report["work_orders"] == []
