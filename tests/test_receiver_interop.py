"""The receiver with clients nobody on the team wrote, across restarts, and as ``wodrop receiver``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import requests
from google.resumable_media import requests as grm
from helpers.receiver import ReceiverThread
from wodrop.cli import main
from wodrop.receiver import start_receiver

ALIGN = 262144


@pytest.mark.parametrize("checksum", ["md5", "crc32c"])
def test_google_resumable_media_uploads_byte_identical(tmp_path: Path, checksum: str) -> None:
    chunk = 2 * ALIGN
    data = os.urandom(3 * chunk + 12345)  # four chunks, the last one short
    with ReceiverThread(tmp_path / "store") as rx:
        upload = grm.ResumableUpload(
            f"{rx.url}/upload/storage/v1/b/my-bucket/o?uploadType=resumable", chunk, checksum=checksum
        )
        transport = requests.Session()
        transport.headers["Authorization"] = "Bearer anything"
        upload.initiate(transport, io.BytesIO(data), {"name": "batch.zip"}, "application/zip")
        assert upload.resumable_url.startswith(f"{rx.url}/upload/")
        while not upload.finished:
            upload.transmit_next_chunk(transport)  # checks md5Hash/crc32c of the final answer
        assert upload.bytes_uploaded == len(data)
        batch_id = upload.resumable_url.split("/upload/")[1].split("?")[0]
        stored = (rx.store / f"{batch_id}.zip").read_bytes()
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()
        assert rx.stats["chunks"] == 4


def test_session_survives_a_restart(tmp_path: Path) -> None:
    data = os.urandom(5 * ALIGN + 321)
    store = tmp_path / "store"
    with ReceiverThread(store) as rx:
        auth = {"Authorization": "Token k"}
        b = requests.post(f"{rx.url}/v0.2/batches/", json={"filename": "b"}, headers=auth, timeout=10).json()
        head = {"Content-Range": f"bytes 0-{3 * ALIGN - 1}/{len(data)}"}
        r = requests.put(b["upload_url"], data=data[: 3 * ALIGN], headers=head, timeout=10)
        assert r.headers["Range"] == f"bytes=0-{3 * ALIGN - 1}"
    with ReceiverThread(store) as rx2:  # another port: the URL's path and token still hold
        url = rx2.url + "/upload/" + b["upload_url"].split("/upload/")[1]
        r = requests.put(url, headers={"Content-Range": f"bytes */{len(data)}"}, timeout=10)
        assert r.status_code == 308 and r.headers["Range"] == f"bytes=0-{3 * ALIGN - 1}"
        rest = data[3 * ALIGN :]
        tail = {"Content-Range": f"bytes {3 * ALIGN}-{len(data) - 1}/{len(data)}"}
        r = requests.put(url, data=rest, headers=tail, timeout=10)
        assert r.status_code == 200
        assert r.json()["md5Hash"] == base64.b64encode(hashlib.md5(data).digest()).decode()
        assert (store / f"{b['batch_id']}.zip").read_bytes() == data
        report = json.loads((store / f"{b['batch_id']}.json").read_text())
        assert report["sha256"] == hashlib.sha256(data).hexdigest()


async def test_in_loop_receiver_with_aiohttp_client(tmp_path: Path) -> None:
    """start_receiver in the caller's loop (the daemon's zero-config mode); concurrent uploads."""
    rx = await start_receiver(tmp_path / "store", api_key="k3y-k3y")
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Token k3y-k3y"}) as http:

            async def one(i: int) -> tuple[str, bytes]:
                data = os.urandom(4 * ALIGN + i)
                async with http.post(f"{rx.url}/v0.2/batches/", json={"filename": f"b{i}"}) as r:
                    b = await r.json()
                for start in range(0, len(data), 2 * ALIGN):
                    piece = data[start : start + 2 * ALIGN]
                    rng = f"bytes {start}-{start + len(piece) - 1}/{len(data)}"
                    async with http.put(
                        b["upload_url"], data=piece, headers={"Content-Range": rng}, allow_redirects=False
                    ) as r:
                        assert r.status in (200, 308)
                return b["batch_id"], data

            results = await asyncio.gather(*(one(i) for i in range(6)))
        for batch_id, data in results:
            assert (tmp_path / "store" / f"{batch_id}.zip").read_bytes() == data
        assert rx.stats["uploads_completed"] == 6
    finally:
        await rx.stop()


def test_cli_rejects_bad_faults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["receiver", "--faults", "foo:0.1"]) == 2
    assert "wodrop receiver: --faults: unknown fault 'foo'" in capsys.readouterr().err
    assert main(["receiver", "--listen", "nowhere"]) == 2


def test_cli_serves_logs_and_stops_on_sigterm(tmp_path: Path) -> None:
    key = "very-secret-api-key"
    argv = ["receiver", "--listen", "127.0.0.1:0", "--store", str(tmp_path), "--api-key", key]
    proc = subprocess.Popen(
        [sys.executable, "-m", "wodrop", *argv, "--faults", "slow=1ms:0.5", "--seed", "1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = json.loads(proc.stderr.readline())
        assert first["event"] == "receiver listening" and first["store"] == str(tmp_path)
        auth = {"Authorization": f"Token {key}"}
        r = requests.post(f"{first['url']}/v0.2/batches/", json={"filename": "b"}, headers=auth, timeout=10)
        assert r.status_code == 201
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        rest = proc.stderr.read()
    finally:
        proc.kill()
    assert key not in rest and key not in json.dumps(first)
    assert json.loads(rest.splitlines()[-1])["sessions_created"] == 1


def test_gcs_initiate_alias_with_name_and_length(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path / "store") as rx:
        initiate = f"{rx.url}/upload/gcs?uploadType=resumable&name=demo.zip"
        auth = {"Authorization": "Bearer x", "X-Upload-Content-Length": "5"}
        r = requests.post(initiate, headers=auth, allow_redirects=False, timeout=10)
        assert r.status_code == 200
        url = r.headers["Location"]
        done = requests.put(url, data=b"hello", headers={"Content-Range": "bytes 0-4/5"}, timeout=10)
        assert done.json()["name"] == "demo.zip" and done.json()["size"] == "5"
        no_type = requests.post(f"{rx.url}/upload/gcs?name=x", headers=auth, timeout=10)
        assert no_type.status_code == 400
        mismatch = requests.post(initiate, headers={**auth, "X-Upload-Content-Length": "5"}, timeout=10)
        url2 = mismatch.headers["Location"]
        r = requests.put(url2, data=b"toolong", headers={"Content-Range": "bytes 0-6/7"}, timeout=10)
        assert r.status_code == 400 and "declared" in r.json()["detail"]
