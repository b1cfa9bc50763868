"""The platform API as the vendor's own client calls it: ``POST /v0.2/batches`` and ``GET``/``DELETE
/v0.2/batches/{id}``, no trailing slash, ``Authorization: Token <key>``, ``Content-Type:
application/json``. The reference receiver with ``strict_paths`` accepts only that (a server routed like
the platform), and ``wodrop upload`` and ``wodrop run`` work against it, with the key in
``DEEPOMATIC_API_KEY`` (the vendor client's variable) as well as ``CUSTOMER_API_KEY``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
import structlog
import yaml
from helpers.daemon import DaemonProcess, received_work_orders, write_config
from helpers.files import sha256_file
from helpers.workorders import drop_atomically
from wodrop.config import load_config
from wodrop.secrets import resolve_api_key
from wodrop.upload.api import auth_headers, batch_url, batches_url

REPO = Path(__file__).resolve().parents[1]
KEY = "vendor-key-93b1f0c2d4e6"
AUTH = {"Authorization": f"Token {KEY}"}


def test_the_vendor_paths_and_headers() -> None:
    assert batches_url("https://api.site.example/") == "https://api.site.example/v0.2/batches"
    assert str(batch_url("https://api.site.example", "b/7 x")) == \
        "https://api.site.example/v0.2/batches/b%2F7%20x"
    assert str(batch_url("https://api.site.example/base/", "..")) == \
        "https://api.site.example/base/v0.2/batches/%2E%2E"  # never resolved to /base/v0.2/
    assert auth_headers("k") == {"Authorization": "Token k", "Content-Type": "application/json",
                                 "Accept": "application/json"}


def test_the_strict_receiver_answers_only_the_vendor_paths(rx_factory: Any) -> None:
    rx = rx_factory(api_key=KEY, strict_paths=True)
    assert requests.post(f"{rx.url}/v0.2/batches/", json={"filename": "b"}, headers=AUTH, timeout=10
                         ).status_code == 404
    as_form = requests.post(f"{rx.url}/v0.2/batches", data={"filename": "b"}, headers=AUTH, timeout=10)
    assert as_form.status_code == 415 and "Unsupported media type" in as_form.json()["detail"]
    created = requests.post(f"{rx.url}/v0.2/batches", json={"filename": "b"}, headers=AUTH, timeout=10)
    assert created.status_code == 201
    bid = created.json()["batch_id"]
    assert requests.get(f"{rx.url}/v0.2/batches", headers=AUTH, timeout=10).status_code == 405  # no list
    assert requests.get(f"{rx.url}/v0.2/batches/{bid}/", headers=AUTH, timeout=10).status_code == 404
    got = requests.get(f"{rx.url}/v0.2/batches/{bid}", headers=AUTH, timeout=10)
    assert got.status_code == 200 and got.json()["status"] == "created"
    assert requests.delete(f"{rx.url}/v0.2/batches/{bid}", headers=AUTH, timeout=10).status_code == 204
    # the default receiver keeps accepting both forms (older configs and clients)
    lax = rx_factory(api_key=KEY)
    for path in ("/v0.2/batches", "/v0.2/batches/"):
        assert requests.post(f"{lax.url}{path}", json={"filename": "b"}, headers=AUTH, timeout=10
                             ).status_code == 201
        assert requests.get(f"{lax.url}{path}", headers=AUTH, timeout=10).status_code == 200


def _upload(tmp: Path, url: str, archive: Path, *extra: str,
            env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    config = tmp / "wodrop.yaml"
    config.write_text(yaml.safe_dump({
        "paths": {"state": str(tmp / "state")}, "api": {"url": url}, "log": {"format": "json"},
        "upload": {"chunk_size": "256KiB", "retry_initial_delay": "0.01s", "retry_max_delay": "0.05s",
                   "max_retries": 2}}))
    clean = {k: v for k, v in os.environ.items() if k not in ("CUSTOMER_API_KEY", "DEEPOMATIC_API_KEY")}
    return subprocess.run([sys.executable, "-m", "wodrop", "upload", "-c", str(config), str(archive),
                           "--no-progress", *extra], cwd=REPO, env={**clean, **env}, capture_output=True,
                          text=True, timeout=60, check=False)


def test_wodrop_upload_against_a_server_routed_like_the_platform(tmp_path: Path, rx_factory: Any) -> None:
    rx = rx_factory(api_key=KEY, strict_paths=True)
    archive = tmp_path / "batch-vendor.zip"
    archive.write_bytes(os.urandom(600_000))
    made = _upload(tmp_path, rx.url, archive, env={"DEEPOMATIC_API_KEY": KEY})
    assert made.returncode == 0, made.stderr
    batch_id = made.stdout.split("to batch ")[1].split()[0]
    assert sha256_file(rx.store / f"{batch_id}.zip") == sha256_file(archive)
    # a batch made elsewhere (the web interface): its upload URL is looked up with GET /v0.2/batches/{id}
    other = requests.post(f"{rx.url}/v0.2/batches", json={"filename": "made-in-gui"}, headers=AUTH,
                          timeout=10).json()["batch_id"]
    second = tmp_path / "second.zip"
    second.write_bytes(os.urandom(300_000))
    looked_up = _upload(tmp_path, rx.url, second, "--batch-id", other, env={"CUSTOMER_API_KEY": KEY})
    assert looked_up.returncode == 0, looked_up.stderr
    assert sha256_file(rx.store / f"{other}.zip") == sha256_file(second)
    assert KEY not in made.stdout + made.stderr + looked_up.stdout + looked_up.stderr


def test_the_daemon_against_a_server_routed_like_the_platform(tmp_path: Path, rx_factory: Any) -> None:
    """Uploads, the follow-up and the start-up key check (which lists batches, an endpoint the strict
    server lacks: 405 means it cannot be checked, logged once, never a refusal). The key comes from
    DEEPOMATIC_API_KEY alone."""
    rx = rx_factory(api_key=KEY, strict_paths=True)
    cfg = write_config(tmp_path, rx.url, followup={"poll_interval": "1s"})
    with DaemonProcess(cfg, env={"CUSTOMER_API_KEY": "", "DEEPOMATIC_API_KEY": KEY}) as d:
        for name in ("WO_1", "WO_2"):
            drop_atomically(tmp_path / "staging", d.paths["inbox"], name, metadata={"site": "A"})
        d.wait_for(lambda: d.names_in("done") == {"WO_1", "WO_2"}, timeout=60, what="both in done/")
        d.wait_for_finished()
        d.wait_for_db("SELECT DISTINCT followup, platform_status FROM batches", [("done", "done")],
                      timeout=30, what="the platform's verdict on every batch")
    events = [e["event"] for e in d.events()]
    assert events.count("api_key_check_unavailable") == 1
    assert "api_key_refused" not in events and "item_failed" not in events
    assert sorted(received_work_orders(rx.store)) == ["WO_1", "WO_2"]
    assert KEY not in d.log_path.read_text()


def test_both_key_variables_customer_wins_and_a_conflict_is_said(tmp_path: Path) -> None:
    cfg = load_config(None, {})
    with structlog.testing.capture_logs() as logs:
        both = {"CUSTOMER_API_KEY": "customer-key-1234", "DEEPOMATIC_API_KEY": "deepo-key-1234"}
        assert resolve_api_key(cfg, both) == "customer-key-1234"
        same = {"CUSTOMER_API_KEY": "same-key-123456", "DEEPOMATIC_API_KEY": "same-key-123456"}
        assert resolve_api_key(cfg, same) == "same-key-123456"
        assert resolve_api_key(cfg, {"CUSTOMER_API_KEY": " ", "DEEPOMATIC_API_KEY": "deepo-key-1234"}
                               ) == "deepo-key-1234"
    assert [(e["event"], e["used"]) for e in logs] == [("api_key_env_conflict", "CUSTOMER_API_KEY")]
    assert "customer-key-1234" not in str(logs) and "deepo-key-1234" not in str(logs)
