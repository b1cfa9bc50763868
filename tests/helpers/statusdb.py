"""A realistic state for status tests: real folders, a real state DB and a live Runtime, with secrets
planted where a careless renderer would leak them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from wodrop.config import Config, load_config
from wodrop.redact import register_secret
from wodrop.runtime import Runtime, UploadProgress
from wodrop.state import StateDB

API_KEY = "sk-test-APIKEY-4f2b9c1d8e7a"
UPLOAD_URL = "https://storage.example.test/upload/resumable?upload_id=SECRET-UPLOAD-ID-91b3f0"
MiB = 2**20


@dataclass
class StatusFixture:
    cfg: Config
    config_path: Path
    db: StateDB
    runtime: Runtime
    uploading_id: int
    done_id: int


def write_config(root: Path, listen: str = "127.0.0.1:0") -> Path:
    path = root / "wodrop.yaml"
    path.write_text(
        "paths:\n" + "".join(f"  {k}: {k}\n" for k in ("inbox", "processing", "done", "failed", "state"))
        + f"status:\n  listen: '{listen}'\n",
        encoding="utf-8",
    )
    return path


def populate(root: Path) -> StatusFixture:
    """An uploading batch at 40% (retried once), a done batch, two failures, a pending inbox."""
    register_secret(API_KEY)
    register_secret(UPLOAD_URL)
    config_path = write_config(root)
    cfg = load_config(config_path, environ={})
    for key in ("inbox", "processing", "done", "failed", "state"):
        getattr(cfg.paths, key).mkdir(parents=True, exist_ok=True)
    db = StateDB(cfg.paths.db)

    done = db.create_batch("batch-20240611-0001", cfg.paths.spool / "batch-20240611-0001.zip")
    for i in range(3):
        wo = db.add_work_order(f"WO_{i}", cfg.paths.processing / f"WO_{i}")
        db.assign_to_batch(wo, done, 3 * MiB, 4)
        db.finish_work_order(wo, "done", cfg.paths.done / f"WO_{i}")
    db.seal_batch(done, size=10 * MiB, sha256="0" * 64, md5=None, crc32c=None, work_order_count=3,
                  seal_reason="age")
    db.set_session(done, "remote-1", UPLOAD_URL + "-old")
    db.mark_uploaded(done, 10 * MiB)
    db.finish_batch(done, "done")

    up = db.create_batch("batch-20240611-0002", cfg.paths.spool / "batch-20240611-0002.zip")
    for i in range(3, 5):
        wo = db.add_work_order(f"WO_{i}", cfg.paths.processing / f"WO_{i}")
        db.assign_to_batch(wo, up, 125 * MiB, 10)
    db.seal_batch(up, size=250 * MiB, sha256="1" * 64, md5=None, crc32c=None, work_order_count=2,
                  seal_reason="size")
    db.set_session(up, "remote-2", UPLOAD_URL)
    db.record_error(up, f"connection reset during PUT {UPLOAD_URL}")
    db.set_offset(up, 100 * MiB)

    bad = db.add_work_order("WO_bad_<script>", cfg.paths.processing / "WO_bad_<script>")
    db.finish_work_order(bad, "failed", cfg.paths.failed / "WO_bad_<script>", stage="validation", errors=[
        {"code": "bad_image_name", "file": "photo.gif", "message": "photo.gif is not a JPEG or PNG image"},
        {"code": "empty_file", "file": "A-1.jpg", "message": "A-1.jpg is empty (0 bytes)"},
    ])
    rej = db.add_work_order("WO_rejected", cfg.paths.processing / "WO_rejected")
    db.finish_work_order(rej, "failed", cfg.paths.failed / "WO_rejected", stage="upload", errors=[
        {"code": "upload_rejected", "file": None,
         "message": f"The platform refused the batch (key {API_KEY} at {UPLOAD_URL})"},
    ])

    rt = Runtime(cfg=cfg, db=db, ready=True, watcher="events", api_key_accepted=True)
    now = time.monotonic()
    rt.pending = {"WO_new_1": now - 125.0, "WO_new_2": now - 10.0, "WO_new_3": now - 2.0}
    progress = UploadProgress(batch_id=up, name="batch-20240611-0002", total=250 * MiB)
    progress.sent = 100 * MiB
    progress.started = now - 8.0  # 12.3 MiB/s since it started 8 s ago
    progress.samples = [(now - 8.0, int(100 * MiB - 8 * 12.3 * MiB)), (now, 100 * MiB)]
    progress.furthest = 100 * MiB
    progress.clock = lambda: now  # the rate is read later, on a machine that may be slow: keep it 12.3
    rt.uploads[up] = progress
    return StatusFixture(cfg, config_path, db, rt, up, done)
