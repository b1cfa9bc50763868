"""Run ``wodrop run`` as a real subprocess against a tmp share and a receiver, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
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
        self.env.setdefault("WODROP_UNSAFE_SHORT_SETTLE", "1")  # write_config's sub-second watch.settle
        self.log_path = config.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paths = load_paths(config)

    def start(self) -> DaemonProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process for its lifetime
        # faulthandler: a daemon that hangs on SIGTERM is sent SIGABRT by stop() and logs every stack
        env = {"PYTHONFAULTHANDLER": "1", **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wodrop", "run", "-c", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            if exc_type is None:
                self.stop()
            else:  # the test already failed: don't hide why behind a shutdown problem
                self.kill()

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait for the exit status. A daemon still running after ``timeout`` is a bug (it
        exits in well under a second): its threads' stacks go to the log and the test fails with them."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            tail = self.log_path.read_text(errors="replace")[-8000:]
            raise AssertionError(f"the daemon did not exit within {timeout}s of SIGTERM; stacks at SIGABRT "
                                 f"and log tail:\n{tail}") from None

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
        """Work-order folders in ``paths[key]``; dot-names (the daemon's own ``.wodrop``) are not ones."""
        folder = self.paths[key]
        if not folder.exists():
            return set()
        return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}

    # ---- waiting for what the daemon commits after a folder shows up --------------------------------
    # A folder appears in done/ *before* the DB marks its work order done, its batch done and its spool
    # archive removed (pipeline/finish.py), and SIGTERM cancels a finish half-way: a test that asserts
    # any of those waits for it, here, while the daemon still runs.

    @property
    def db_path(self) -> Path:
        return self.paths["state"] / "wodrop.sqlite3"

    @property
    def spool(self) -> Path:
        return self.paths["state"] / "spool"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]] | None:
        """Rows of ``sql`` on the state DB, opened read-only (never a writer next to the daemon); None
        while it cannot be read yet (not created, locked, schema not migrated)."""
        if not self.db_path.exists():
            return None
        try:
            db = sqlite3.connect(f"{self.db_path.as_uri()}?mode=ro", uri=True, timeout=1)
        except sqlite3.OperationalError:
            return None
        try:
            return list(db.execute(sql, params))
        except sqlite3.OperationalError:
            return None
        finally:
            db.close()

    def wait_for_db(self, sql: str, expected: list[tuple[Any, ...]], params: tuple[Any, ...] = (), *,
                    timeout: float = 60, what: str | None = None) -> list[tuple[Any, ...]]:
        """Wait until ``query(sql)`` returns exactly ``expected``; the timeout says what it returned."""
        last: list[list[tuple[Any, ...]] | None] = [None]

        def check() -> bool:
            last[0] = self.query(sql, params)
            return last[0] == expected

        try:
            self.wait_for(check, timeout, what or f"{sql!r} to return {expected!r}")
        except AssertionError as e:
            raise AssertionError(f"last returned {last[0]!r}\n{e}") from None
        return expected

    def in_flight(self) -> dict[str, Any]:
        """What is not finished yet: batches and work orders in a non-final state, spool files. Empty
        when the daemon has committed every outcome (None: the DB could not be read just now)."""
        batches = self.query("SELECT name, state FROM batches WHERE origin = 'daemon'"
                             " AND state IN ('open', 'sealed', 'uploading', 'uploaded')")
        work_orders = self.query("SELECT name, state FROM work_orders WHERE state IN ('claimed', 'batched')")
        if batches is None or work_orders is None:
            return {"db": None}
        spool = sorted(p.name for p in self.spool.iterdir()) if self.spool.exists() else []
        return {k: v for k, v in (("batches", batches), ("work_orders", work_orders), ("spool", spool)) if v}

    def wait_for_finished(self, timeout: float = 60, what: str = "every outcome committed") -> None:
        """Wait until no batch or work order is in flight and the spool is empty: every move to done/ or
        failed/ has been recorded in the DB and every finished batch's archive removed."""
        last: list[dict[str, Any]] = [{}]

        def check() -> bool:
            last[0] = self.in_flight()
            return not last[0]

        try:
            self.wait_for(check, timeout, what)
        except AssertionError as e:
            raise AssertionError(f"still in flight: {last[0]!r}\n{e}") from None

    def count_events(self, event: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == event)

    def wait_for_event(self, event: str, count: int = 1, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until the log holds at least ``count`` ``event`` lines; returns them all."""
        self.wait_for(lambda: self.count_events(event) >= count, timeout, f"{count} x {event!r} in the log")
        return [e for e in self.events() if e.get("event") == event]


def received_work_orders(store: Path) -> list[str]:
    """Every work-order id in every archive the receiver completed (repeats kept: exactly-once check)."""
    ids: list[str] = []
    for archive in sorted(store.glob("*.zip")):
        with zipfile.ZipFile(archive) as zf:
            assert zf.testzip() is None, f"{archive} has a corrupt member"
            ids.extend(sorted({n.split("/", 1)[0] for n in zf.namelist()}))
    return ids
