"""The reference receiver against raw HTTP clients: batch API and GCS resumable-upload semantics."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import pytest
import requests

from helpers.receiver import ReceiverThread

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
    assert got["status"] == "uploaded" and got["size"] == len(data)
