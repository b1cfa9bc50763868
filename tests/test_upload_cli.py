"""``wodrop upload`` as a user runs it: a real subprocess against real servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.files import free_port, sha256_file

REPO = Path(__file__).resolve().parents[1]
K = 262144


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    return path


def write_config(tmp: Path, api_url: str | None = None, **upload: Any) -> Path:
    settings = {"chunk_size": "256KiB", "retry_initial_delay": "0.01s", "retry_max_delay": "0.05s",
                "max_retries": 5, **upload}
    cfg: dict[str, Any] = {"paths": {"state": str(tmp / "state")}, "upload": settings,
                           "log": {"format": "json"}}
    if api_url:
        cfg["api"] = {"url": api_url}
    path = tmp / "wodrop.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli_env(api_key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUSTOMER_API_KEY", "DEEPOMATIC_API_KEY")}
    if api_key:
        env["CUSTOMER_API_KEY"] = api_key
    return env


def upload_cmd(config: Path, archive: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "wodrop", "upload", "-c", str(config), str(archive), *extra]


def wodrop_upload(config: Path, archive: Path, *extra: str, api_key: str | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(upload_cmd(config, archive, *extra), cwd=REPO, env=cli_env(api_key),
                          capture_output=True, text=True, timeout=timeout, check=False)


def log_events(stderr: str) -> list[dict[str, Any]]:
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


# ---- usage and connectivity errors ---------------------------------------------------------------


def test_no_api_url_and_no_upload_url_is_a_usage_error(tmp_path: Path) -> None:
    archive = random_file(tmp_path / "b.zip", 10)
    r = wodrop_upload(write_config(tmp_path), archive, api_key="k" * 20)
    assert r.returncode == 2
    assert "set api.url or pass --upload-url" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_archive_is_a_usage_error(tmp_path: Path) -> None:
    r = wodrop_upload(write_config(tmp_path), tmp_path / "nope.zip", "--upload-url", "http://127.0.0.1:9/u")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_unreachable_api_retries_then_says_so(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: connection refused
    archive = random_file(tmp_path / "b.zip", 1000)
    config = write_config(tmp_path, f"http://127.0.0.1:{port}", max_retries=2)
    r = wodrop_upload(config, archive, api_key="unreachable-key-123")
    assert r.returncode == 1
    assert f"cannot reach 127.0.0.1:{port}: connection refused, gave up after 3 attempts" in r.stderr
    assert sum(e["event"] == "upload_retry" for e in log_events(r.stderr)) == 2
    assert "Traceback" not in r.stderr and "unreachable-key-123" not in r.stderr + r.stdout


# ---- interoperability with gcp-storage-emulator -------------------------------------------------


@pytest.fixture
def gcs() -> Iterator[str]:
    """A real gcp-storage-emulator on 127.0.0.1 with an in-memory bucket ``bkt``; yields its base URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    proc = subprocess.Popen(
        [str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
         "--default-bucket", "bkt", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("gcp-storage-emulator did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def gcs_session(base: str, name: str) -> str:
    req = urllib.request.Request(
        f"{base}/upload/storage/v1/b/bkt/o?uploadType=resumable&name={name}", method="POST",
        data=b"{}", headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.headers["Location"])


def gcs_read(base: str, name: str) -> bytes:
    with urllib.request.urlopen(f"{base}/storage/v1/b/bkt/o/{name}?alt=media", timeout=10) as resp:
        return bytes(resp.read())


def test_interop_with_gcp_storage_emulator(tmp_path: Path, gcs: str) -> None:
    # The emulator answers a status query on a fresh session with "Range: bytes=0-0" (1 byte saved):
    # an uploader that queried before its first byte would skip byte 0 and the hashes would differ.
    archive = random_file(tmp_path / "batch.zip", 3 * K + 12345)
    url = gcs_session(gcs, "batch.zip")
    r = wodrop_upload(write_config(tmp_path), archive, "--upload-url", url, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(gcs_read(gcs, "batch.zip")).hexdigest() == sha256_file(archive)
    events = log_events(r.stderr)
    assert [e["offset"] for e in events if e["event"] == "upload_progress"][-1] == archive.stat().st_size
    assert "upload_id" not in r.stderr + r.stdout  # the session URL's token never shows


# ---- against the reference receiver --------------------------------------------------------------


def api_json(url: str, key: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    req = urllib.request.Request(
        url, method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Token {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def test_api_mode_uploads_and_keeps_secrets(tmp_path: Path, rx_factory: Any) -> None:
    key = "sk-live-0123456789abcdef"
    rx = rx_factory(api_key=key)
    archive = random_file(tmp_path / "batch-2024.zip", 5 * K + 3)
    r = wodrop_upload(write_config(tmp_path, rx.url), archive, "--no-progress", api_key=key)
    assert r.returncode == 0, r.stderr
    batch_id = r.stdout.split("to batch ")[1].split()[0]
    assert sha256_file(rx.store / f"{batch_id}.zip") == sha256_file(archive)
    batch = api_json(f"{rx.url}/v0.2/batches/{batch_id}/", key)
    assert batch["filename"] == "batch-2024"
    token = batch["upload_url"].split("upload_id=")[1]
    output = r.stdout + r.stderr
    assert key not in output and token not in output
    assert "upload_progress" in r.stderr


def test_batch_id_mode(tmp_path: Path, rx_factory: Any) -> None:
    key = "key-for-batch-id"
    rx = rx_factory(api_key=key)
    batch_id = api_json(f"{rx.url}/v0.2/batches/", key, {"filename": "made-in-gui"})["batch_id"]
    archive = random_file(tmp_path / "a.zip", 2 * K)
    r = wodrop_upload(write_config(tmp_path, rx.url), archive, "--batch-id", batch_id, api_key=key)
    assert r.returncode == 0, r.stderr
    assert sha256_file(rx.store / f"{batch_id}.zip") == sha256_file(archive)


@pytest.mark.parametrize("batch_id", ["no-such-batch", "..", "../../_receiver/stats?x=1#y"])
def test_an_unknown_batch_id_is_named_and_not_retried(tmp_path: Path, rx_factory: Any, batch_id: str) -> None:
    """Whatever the id holds, only ``GET /v0.2/batches/{id}`` is asked (never the list or another path),
    and the platform's 404 says which batch it does not know, at once (no retries)."""
    rx = rx_factory(api_key="key-for-batch-id")
    archive = random_file(tmp_path / "a.zip", 2 * K)
    before = rx.stats["requests"]
    r = wodrop_upload(write_config(tmp_path, rx.url), archive, "--batch-id", batch_id,
                      api_key="key-for-batch-id")
    assert r.returncode == 1
    assert f"wodrop upload: the platform does not know batch {batch_id} (HTTP 404: Not found.)" in r.stderr
    assert "check api.url" not in r.stderr and "upload_retry" not in r.stderr
    assert rx.stats["requests"] == before + 1


def test_an_empty_batch_id_is_a_usage_error(tmp_path: Path, rx_factory: Any) -> None:
    rx = rx_factory()
    archive = random_file(tmp_path / "a.zip", 10)
    r = wodrop_upload(write_config(tmp_path, rx.url), archive, "--batch-id", "", api_key="k" * 20)
    assert r.returncode == 2 and "--batch-id: empty" in r.stderr
    assert rx.stats["sessions_created"] == 0


def test_bad_key(tmp_path: Path, rx_factory: Any) -> None:
    rx = rx_factory(api_key="the-right-key")
    archive = random_file(tmp_path / "a.zip", 100)
    r = wodrop_upload(write_config(tmp_path, rx.url), archive, api_key="the-wrong-key")
    assert r.returncode == 1
    assert "the platform refused the API key (HTTP 401): check CUSTOMER_API_KEY" in r.stderr
    assert "Traceback" not in r.stderr and "the-wrong-key" not in r.stderr + r.stdout


def test_expired_bare_upload_url(tmp_path: Path, rx_factory: Any) -> None:
    rx = rx_factory(faults="expire:1")
    url = api_json(f"{rx.url}/v0.2/batches/", "any", {"filename": "x"})["upload_url"]
    archive = random_file(tmp_path / "a.zip", 2 * K)
    r = wodrop_upload(write_config(tmp_path), archive, "--upload-url", url)
    assert r.returncode == 1
    assert "the upload session has expired; ask for a new upload URL" in r.stderr
    assert url.split("upload_id=")[1] not in r.stderr + r.stdout
    assert "Traceback" not in r.stderr


def test_every_fault_mixed_api_mode_renews_expired_sessions(tmp_path: Path, rx_factory: Any) -> None:
    faults = "status=503:0.1,reset:0.05,partial:0.1,throttle=1s:0.02,expire:0.03,slow=0.05s:0.05"
    rx = rx_factory(faults=faults, seed=11)
    archive = random_file(tmp_path / "a.zip", 48 * K + 5)
    config = write_config(tmp_path, rx.url, max_retries=30)
    r = wodrop_upload(config, archive, "--no-progress", api_key="kkkkkk")
    assert r.returncode == 0, r.stderr
    batch_id = r.stdout.split("to batch ")[1].split()[0]
    assert sha256_file(rx.store / f"{batch_id}.zip") == sha256_file(archive)
    events = [e["event"] for e in log_events(r.stderr)]
    assert "upload_retry" in events
    assert rx.stats["faults_injected"].get("expire") and "upload_session_expired" in events


def test_crash_and_resume(tmp_path: Path, rx_factory: Any) -> None:
    """kill -9 mid-transfer, re-run the same command: it resumes from the server's offset."""
    rx = rx_factory()
    size = 48 * 1024 * 1024
    archive = random_file(tmp_path / "big.zip", size)
    config = write_config(tmp_path, rx.url, chunk_size="1MiB", max_bandwidth="24MiB")
    cmd = upload_cmd(config, archive, "--no-progress")
    proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env("resume-key"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while rx.stats["bytes_saved"] < size // 4:
        assert proc.poll() is None, "the upload finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no cleanup, no goodbye
    proc.communicate(timeout=10)
    first = rx.stats["bytes_received"]
    assert 0 < first < size

    r = subprocess.run(cmd, cwd=REPO, env=cli_env("resume-key"), capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    resumed = [e for e in log_events(r.stderr) if e["event"] == "upload_resumed"]
    assert len(resumed) == 1 and resumed[0]["offset"] > 0
    assert rx.stats["bytes_received"] < 1.3 * size  # resumed, not started over
    assert rx.stats["sessions_created"] == 1
    batch_id = r.stdout.split("to batch ")[1].split()[0]
    assert sha256_file(rx.store / f"{batch_id}.zip") == sha256_file(archive)
