"""Idle at scale: what waiting folders, a flood of small work orders and one huge batch cost the daemon.

Three parts, each against a fresh `wodrop run` daemon (its own share and state, default settings
unless said) and one reference `wodrop receiver` on 127.0.0.1:

- idle:  N folders (default 10,000) of a few small files wait in the inbox forever: `watch.mode:
         polling` (--idle-mode), `watch.ready_marker: .ready` and no marker. After the first full
         scan (waiting.json lists them all) and a short warm-up, the daemon's CPU (utime+stime of
         /proc/PID/stat, all threads) is measured over --measure seconds, as % of one core. Then a
         marker is put in a few folders: they must leave the inbox (the cheap path still sees
         markers), and how long that took.
- drop:  N small work orders (default 50,000; one ~4 kB JPEG each) renamed into the inbox at once;
         the time until all are in done/ and the daemon's peak RSS (VmHWM of /proc/PID/status).
- big:   one work order of a few large files (default 4 x 1 GiB of random-looking bytes, framed as
         JPEGs) uploaded through the daemon; the time and the daemon's peak RSS.

Goals (issue 10, "idle at scale"): idle <= 5 % of a core; drop RSS <= 200 MiB; big RSS <= 120 MiB.
Results: bench/RESULTS.md, "Idle at scale".

Usage: python bench/idle_scale.py [--parts idle,drop,big] [--folders 10000] [--measure 60]
       [--idle-mode polling|events] [--drop 50000] [--drop-mode auto] [--big-size 4GiB] [--big-files 4]
       [--workdir DIR]

Set PYTHONPATH=<a checkout>/daemon to measure another version of the daemon with the same script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "daemon"))
from helpers.files import free_port  # noqa: E402
from helpers.workorders import image_bytes, jpeg_bytes  # noqa: E402
from wodrop.units import parse_size  # noqa: E402

WODROP = [sys.executable, "-m", "wodrop"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
GOALS = {"idle": "<= 5 % of a core", "drop": "RSS <= 200 MiB", "big": "RSS <= 120 MiB"}


# ---- /proc --------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads), in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---- processes ----------------------------------------------------------------------------------------

def start_receiver(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([*WODROP, "receiver", "--listen", f"127.0.0.1:{port}", "--store", str(store)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/_receiver/stats", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("receiver did not start")


class Daemon:
    """A `wodrop run` with the share under ``work/share`` and state under ``work/state``."""

    def __init__(self, work: Path, url: str, **sections: dict[str, Any]) -> None:
        self.work = work
        share = work / "share"
        self.paths = {k: share / k for k in ("inbox", "processing", "done", "failed")}
        self.state = work / "state"
        cfg: dict[str, Any] = {
            "paths": {**{k: str(v) for k, v in self.paths.items()}, "state": str(self.state)},
            "api": {"url": url},
            # on by default; a free port so that other daemons on this machine do not collide
            "status": {"listen": f"127.0.0.1:{free_port()}"},
            "log": {"format": "json"},
        }
        for section, values in sections.items():
            cfg.setdefault(section, {}).update(values)
        for p in self.paths.values():
            p.mkdir(parents=True, exist_ok=True)
        self.config = work / "wodrop.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = work / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        env = {**os.environ, "CUSTOMER_API_KEY": "bench-key"}
        env.pop("WATCHFILES_FORCE_POLLING", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*WODROP, "run", "-c", str(self.config)], env=env, cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self.proc.pid

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise SystemExit(f"daemon exited ({self.proc.returncode}): see {self.log}")

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> float:
        """Seconds until ``predicate()``; SystemExit on timeout or if the daemon dies."""
        t0 = time.monotonic()
        while not predicate():
            self.alive()
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}: see {self.log}")
            time.sleep(every)
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def count(self, key: str) -> int:
        with os.scandir(self.paths[key]) as it:
            return sum(1 for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))

    def waiting_count(self) -> int:
        try:
            doc = json.loads((self.state / "waiting.json").read_bytes())
        except (OSError, ValueError):
            return -1
        return len(doc["waiting"])


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


# ---- parts --------------------------------------------------------------------------------------------

def part_idle(work: Path, url: str, folders: int, measure: float, warmup: float,
              mode: str) -> dict[str, Any]:
    d = Daemon(work, url, watch={"mode": mode, "ready_marker": ".ready"})
    files = {"task_A-0.jpg": image_bytes("a.jpg", 2000), "task_A-1.jpg": image_bytes("a.jpg", 3000),
             "metadata.json": b'{"site": "bench"}'}
    names = [f"WAIT_{i:05d}" for i in range(folders)]
    for n in names:
        _write_files(d.paths["inbox"] / n, files)
    print(f"idle: {folders} folders x {len(files)} files in the inbox; starting the daemon", flush=True)
    d.start()
    try:
        first = d.wait(lambda: d.waiting_count() == folders, 600, "the first full scan")
        print(f"idle: first full scan listed in {first:.1f}s; warm-up {warmup:.0f}s, measuring {measure:.0f}s"
              f" (load {load()})", flush=True)
        time.sleep(warmup)
        load0 = load()
        c0, t0 = cpu_seconds(d.pid), time.monotonic()
        time.sleep(measure)
        c1, t1 = cpu_seconds(d.pid), time.monotonic()
        load1 = load()
        d.alive()
        mem = memory_kib(d.pid)
        pct = (c1 - c0) / (t1 - t0) * 100
        # The cheap path must still see a marker: put one in a few folders, they must be taken.
        marked = names[:: max(1, folders // 10)][:10]
        for n in marked:
            (d.paths["inbox"] / n / ".ready").write_bytes(b"")
        inbox = d.paths["inbox"]
        latency = d.wait(lambda: not any((inbox / n).exists() for n in marked), 120,
                         "marked folders to be claimed", every=0.05)
        print(f"idle: {pct:.2f} % of a core ({c1 - c0:.2f} s CPU in {t1 - t0:.1f} s), RSS "
              f"{mem['VmRSS'] / 1024:.1f} MiB (peak {mem['VmHWM'] / 1024:.1f}); {len(marked)} marked "
              f"folders claimed {latency:.2f}s after their marker; load {load0} -> {load1}", flush=True)
    finally:
        d.stop()
    return {"cpu_pct": pct, "cpu_s": c1 - c0, "wall_s": t1 - t0, "rss_mib": mem["VmRSS"] / 1024,
            "hwm_mib": mem["VmHWM"] / 1024, "first_scan_s": first, "marker_latency_s": latency,
            "load": f"{load0} -> {load1}"}


def part_drop(work: Path, url: str, count: int, mode: str) -> dict[str, Any]:
    d = Daemon(work, url, watch={"mode": mode})
    staging = work / "staging"
    data = image_bytes("a.jpg", 4000)
    names = [f"WO_{i:05d}" for i in range(count)]
    for n in names:
        _write_files(staging / n, {"task_A-0.jpg": data})
    print(f"drop: {count} work orders of one {len(data)} B image staged; starting the daemon", flush=True)
    d.start()
    peak = 0
    try:
        time.sleep(3)  # start-up is not part of it
        load0 = load()
        t0 = time.monotonic()
        for n in names:
            os.rename(staging / n, d.paths["inbox"] / n)
        dropped = time.monotonic() - t0
        last = 0.0

        def all_done() -> bool:
            nonlocal peak, last
            peak = max(peak, memory_kib(d.pid)["VmHWM"])
            if time.monotonic() - last > 15:
                last = time.monotonic()
                rss = memory_kib(d.pid)["VmRSS"] / 1024
                print(f"drop: {time.monotonic() - t0:.0f}s: inbox {d.count('inbox')}, done "
                      f"{d.count('done')}, failed {d.count('failed')}, RSS {rss:.0f} MiB (load {load()})",
                      flush=True)
            return d.count("done") + d.count("failed") >= count

        d.wait(all_done, 7200, f"{count} work orders in done/", every=1.0)
        elapsed = time.monotonic() - t0
        load1 = load()
        failed = d.count("failed")
        peak = max(peak, memory_kib(d.pid)["VmHWM"])
        cpu = cpu_seconds(d.pid)
    finally:
        d.stop()
    print(f"drop: {count} done in {elapsed:.1f}s ({count / elapsed:.0f}/s; renames took {dropped:.1f}s), "
          f"{failed} failed, peak RSS {peak / 1024:.1f} MiB, daemon CPU {cpu:.0f}s; load {load0} -> {load1}",
          flush=True)
    return {"seconds": elapsed, "failed": failed, "hwm_mib": peak / 1024, "cpu_s": cpu,
            "load": f"{load0} -> {load1}"}


def _big_jpeg(path: Path, size: int, pool: bytes) -> None:
    """A JPEG of exactly ``size`` bytes: SOI, COM segments of random-looking bytes, a real 8x8 image."""
    img = jpeg_bytes()
    body = size - len(img)
    with open(path, "wb") as f:
        f.write(img[:2])
        i = 0
        while body > 0:
            # the last segment takes what is left; never leave a tail too short for a segment (< 5 B)
            n = body - 4 if body <= 65537 else 65533 if body - 65537 >= 5 else 65000
            off = (i * 7919) % (len(pool) - n)
            f.write(b"\xff\xfe" + (n + 2).to_bytes(2, "big") + pool[off:off + n])
            body -= n + 4
            i += 1
        f.write(img[2:])


def part_big(work: Path, url: str, size: int, files: int) -> dict[str, Any]:
    d = Daemon(work, url)
    staging = work / "staging"
    folder = staging / "BIG_1"
    folder.mkdir(parents=True)
    pool = os.urandom(4 * 2**20)
    each = size // files
    for k in range(files):
        _big_jpeg(folder / f"task_A-{k}.jpg", each, pool)
    total = sum(p.stat().st_size for p in folder.iterdir())
    print(f"big: one work order of {files} files, {total / 2**30:.2f} GiB; starting the daemon", flush=True)
    d.start()
    peak = 0
    try:
        time.sleep(3)
        load0 = load()
        t0 = time.monotonic()
        os.rename(folder, d.paths["inbox"] / "BIG_1")

        def done() -> bool:
            nonlocal peak
            peak = max(peak, memory_kib(d.pid)["VmHWM"])
            return d.count("done") + d.count("failed") >= 1

        d.wait(done, 3600, "the big work order in done/", every=0.5)
        elapsed = time.monotonic() - t0
        failed = d.count("failed")
        load1 = load()
        peak = max(peak, memory_kib(d.pid)["VmHWM"])
    finally:
        d.stop()
    print(f"big: {total / 2**30:.2f} GiB delivered in {elapsed:.1f}s ({'FAILED' if failed else 'ok'}), "
          f"peak RSS {peak / 1024:.1f} MiB; load {load0} -> {load1}", flush=True)
    return {"seconds": elapsed, "failed": failed, "hwm_mib": peak / 1024, "gib": total / 2**30,
            "load": f"{load0} -> {load1}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="idle,drop,big")
    ap.add_argument("--folders", type=int, default=10_000, help="idle: waiting folders")
    ap.add_argument("--measure", type=float, default=60.0, help="idle: seconds of CPU measured")
    ap.add_argument("--warmup", type=float, default=10.0, help="idle: seconds after the first scan")
    ap.add_argument("--idle-mode", default="polling", choices=("polling", "events"), help="idle: watch.mode")
    ap.add_argument("--drop", type=int, default=50_000, help="drop: work orders")
    ap.add_argument("--drop-mode", default="auto", choices=("auto", "events", "polling"))
    ap.add_argument("--big-size", default="4GiB")
    ap.add_argument("--big-files", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where to build the share (default: a temp dir)")
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    big = parse_size(args.big_size)
    tmp = tempfile.mkdtemp(prefix="wodrop-idle-", dir=args.workdir)
    work = Path(tmp)
    if "big" in parts:
        free = shutil.disk_usage(work).free
        if free < 3 * big + 2 * 2**30:  # source, spool archive, receiver's copy
            raise SystemExit(f"big: needs ~{3 * big / 2**30:.0f} GiB free in {work}, has "
                             f"{free / 2**30:.1f}; use --big-size")
    print(f"{os.cpu_count()} CPUs, load {load()}, work dir {work}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    rx, url = start_receiver(work / "received")
    ok = False
    try:
        for part in parts:
            sub = work / part
            sub.mkdir()
            if part == "idle":
                results[part] = part_idle(sub, url, args.folders, args.measure, args.warmup, args.idle_mode)
            elif part == "drop":
                results[part] = part_drop(sub, url, args.drop, args.drop_mode)
            elif part == "big":
                results[part] = part_big(sub, url, big, args.big_files)
            else:
                raise SystemExit(f"unknown part {part!r}")
            shutil.rmtree(sub, ignore_errors=True)
            shutil.rmtree(work / "received", ignore_errors=True)
            (work / "received").mkdir(exist_ok=True)
        ok = True
    finally:
        rx.terminate()
        rx.wait()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work} (the daemon's log is in it): delete it when done", flush=True)

    print("\n| part | figure | goal | detail | load (1/5/15 min, start -> end) |")
    print("|---|---:|---|---|---|")
    if r := results.get("idle"):
        print(f"| idle: {args.folders:,} folders waiting ({args.idle_mode}, ready marker) "
              f"| {r['cpu_pct']:.2f} % of a core | {GOALS['idle']} "
              f"| {r['cpu_s']:.2f} s CPU in {r['wall_s']:.0f} s; RSS {r['rss_mib']:.0f} MiB; first scan "
              f"listed {r['first_scan_s']:.1f} s after start; markers seen in "
              f"{r['marker_latency_s']:.2f} s | {r['load']} |")
    if r := results.get("drop"):
        print(f"| drop: {args.drop:,} work orders at once | peak RSS {r['hwm_mib']:.0f} MiB "
              f"| {GOALS['drop']} "
              f"| all delivered in {r['seconds']:.0f} s ({args.drop / r['seconds']:.0f}/s), {r['failed']} "
              f"failed; daemon CPU {r['cpu_s']:.0f} s | {r['load']} |")
    if r := results.get("big"):
        print(f"| big: {r['gib']:.2f} GiB work order | peak RSS {r['hwm_mib']:.0f} MiB | {GOALS['big']} "
              f"| delivered in {r['seconds']:.0f} s{', FAILED' if r['failed'] else ''} | {r['load']} |")


if __name__ == "__main__":
    main()
