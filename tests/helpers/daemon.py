"""Run ``wodrop run`` as a real subprocess against a tmp share and a receiver, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

API_KEY = "test-key-5f1d0c8e9a7b"


def write_config(root: Path, api_url: str | None, **sections: dict[str, Any]) -> Path:
    """A config with the share under ``root/share`` and state under ``root/state`` (overridable)."""
    share = root / "share"
    cfg: dict[str, Any] = {
        "paths": {
            "inbox": str(share / "inbox"), "processing": str(share / "processing"),
            "done": str(share / "done"), "failed": str(share / "failed"), "state": str(root / "state"),
        },
        "watch": {"settle": "0.6s", "poll_interval": "0.2s", "rescan_interval": "2s"},
        "batch": {"max_age": "1s", "min_free_space": "1MiB"},
        "upload": {"chunk_size": "256KiB", "retry_initial_delay": "0.05s", "retry_max_delay": "0.3s",
                   "concurrency": 2},
        "api": {"url": api_url},
        "status": {"listen": "off"},
        "log": {"format": "json", "level": "debug"},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    for key in ("inbox", "processing", "done", "failed"):
        Path(cfg["paths"][key]).mkdir(parents=True, exist_ok=True)
    path = root / "wodrop.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def load_paths(config: Path) -> dict[str, Path]:
    return {k: Path(v) for k, v in yaml.safe_load(config.read_text())["paths"].items()}


class DaemonProcess:
    """``with DaemonProcess(cfg) as d: ... d.wait_for(lambda: ...)``; logs go to ``d.log_path``."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None, name: str = "daemon") -> None:
        self.config = config
        self.env = {**os.environ, "CUSTOMER_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = config.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paths = load_paths(config)

    def start(self) -> DaemonProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wodrop", "run", "-c", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.stop()

    def stop(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) while waiting for {what}:\n"
                                     + self.log_path.read_text()[-4000:])
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; log tail:\n" + self.log_path.read_text()[-4000:])

    def names_in(self, key: str) -> set[str]:
        folder = self.paths[key]
        return {p.name for p in folder.iterdir() if p.is_dir()} if folder.exists() else set()


def received_work_orders(store: Path) -> list[str]:
    """Every work-order id in every archive the receiver completed (repeats kept: exactly-once check)."""
    ids: list[str] = []
    for archive in sorted(store.glob("*.zip")):
        with zipfile.ZipFile(archive) as zf:
            assert zf.testzip() is None, f"{archive} has a corrupt member"
            ids.extend(sorted({n.split("/", 1)[0] for n in zf.namelist()}))
    return ids
