"""From dropped in the inbox to in done/: N work orders through a running daemon, over an emulated link.

    .venv/bin/python bench/drop_to_done.py             # 1,000 WOs, 1 GiB, 40 ms / 400 Mbit, 3 rounds
    .venv/bin/python bench/drop_to_done.py --loopback --size 256MiB --rounds 1
    .venv/bin/python bench/drop_to_done.py --max-bytes 64MiB --max-bytes 512MiB   # compare batch sizes

Peers, measured in the same run, rounds interleaved, on the same data, each against a fresh ``wodrop
receiver`` behind a fresh ``bench/wanlink.py`` proxy (one shared uplink of ``--mbit``, ``--rtt``
round trip; see that file):

- **link**: the link's own time for those bytes, ``payload bytes / bandwidth``, computed, not run:
  the floor nobody reaches;
- **zip+curl**: what an operator does by hand (the platform's guide): ``zip -0 -r`` the folders into
  one archive, create a batch with curl, PUT the archive with curl in one request. No validation, no
  resume, nothing moved: a floor for tools, not an equal;
- **wodrop**: a ``wodrop run`` daemon started before the clock (start-up is not drop-to-done), the
  folders renamed into its inbox at once; the clock stops when the last one is in done/. Once with
  ``watch.settle: 1s`` (folders complete when quiet) and once with ``watch.ready_marker`` (each
  folder renamed in with its marker: complete at once), each for every ``--max-bytes`` given.

Every received archive is checked: the work orders in the receiver's store must be exactly the ones
dropped, each once. ``os.sync()`` runs before each timed part so one run's writeback does not slow
the next.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))
from helpers.workorders import make_work_order  # noqa: E402
from upload_wan import Endpoint, parse_size, stop  # noqa: E402
from wanlink import parse_ms  # noqa: E402

MARKER = ".ready"


@dataclass
class Peer:
    name: str
    kind: str  # zip | wodrop
    max_bytes: int = 0
    marker: bool = False
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def make_set(staging: Path, count: int, total: int, images: int) -> int:
    """``count`` work orders of ``images`` JPEGs, ``total`` bytes in all; returns the payload bytes."""
    size = max(1000, total // (count * images))
    imgs = tuple(f"task_A-{k}.jpg" for k in range(images))
    for i in range(count):
        make_work_order(staging, f"WO_{i:05d}", images=imgs, metadata={"id": i}, image_size=size)
    return sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())


def received_ids(store: Path) -> list[str]:
    """Work-order folders in every archive the receiver completed (one entry per folder per archive)."""
    ids: list[str] = []
    for archive in store.glob("*.zip"):
        with zipfile.ZipFile(archive) as z:
            ids += sorted({n.split("/", 1)[0] for n in z.namelist() if "/" in n})
    return ids


def run_zip_curl(work: Path, staging: Path, ep: Endpoint) -> float:
    archive = work / "manual.zip"
    t0 = time.perf_counter()
    subprocess.run(["zip", "-0", "-r", "-q", str(archive), "."], cwd=staging, check=True)
    out = subprocess.run(["curl", "-sSf", "-X", "POST", f"{ep.base}/v0.2/batches",
                          "-H", "Authorization: Token k", "-H", "Content-Type: application/json",
                          "-d", '{"filename": "manual"}'], capture_output=True, check=True)
    upload_url = json.loads(out.stdout)["upload_url"]
    size = archive.stat().st_size
    subprocess.run(["curl", "-sSf", "-X", "PUT", "-T", str(archive),
                    "-H", f"Content-Range: bytes 0-{size - 1}/{size}",
                    "-H", "Content-Type: application/octet-stream", upload_url, "-o", "/dev/null"],
                   check=True)
    wall = time.perf_counter() - t0
    archive.unlink()
    return wall


def _daemon_config(work: Path, share: Path, url: str, peer: Peer) -> Path:
    watch: dict[str, object] = {"ready_marker": MARKER} if peer.marker else {"settle": "1s"}
    cfg = {
        "paths": {**{k: str(share / k) for k in ("inbox", "processing", "done", "failed")},
                  "state": str(work / "state")},
        "watch": watch,
        "batch": {"max_bytes": peer.max_bytes},
        "api": {"url": url},
        "status": {"listen": "off"},
        "log": {"format": "json", "level": "info"},
    }
    for k in ("inbox", "processing", "done", "failed"):
        (share / k).mkdir(parents=True)
    path = work / "wodrop.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_wodrop(work: Path, staging: Path, names: list[str], ep: Endpoint, peer: Peer) -> tuple[float, float]:
    """Wall seconds from the first rename to the last folder in done/, and the daemon's CPU seconds."""
    share = work / "share"
    config = _daemon_config(work, share, ep.base, peer)
    env = {**os.environ, "CUSTOMER_API_KEY": "bench-key"}
    with (work / "daemon.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "wodrop", "run", "-c", str(config)], env=env, cwd=work,
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while b'"watcher_started"' not in (work / "daemon.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("daemon did not start:\n" + (work / "daemon.log").read_text()[-3000:])
            time.sleep(0.05)
        if peer.marker:
            for n in names:
                (staging / n / MARKER).touch()
        os.sync()
        t0 = time.perf_counter()
        for n in names:
            os.rename(staging / n, share / "inbox" / n)
        done = share / "done"
        while sum(1 for e in os.scandir(done) if e.is_dir() and not e.name.startswith(".")) < len(names):
            if proc.poll() is not None:
                raise SystemExit("daemon exited:\n" + (work / "daemon.log").read_text()[-3000:])
            time.sleep(0.02)
        wall = time.perf_counter() - t0
    finally:
        cpu = stop(proc)
    return wall, cpu


def one_round(peer: Peer, args: argparse.Namespace, work: Path, run: int) -> None:
    staging = work / f"staging-{run}"
    make_set(staging, args.count, args.size, args.images)
    names = sorted(os.listdir(staging))
    store = work / f"store-{run}"
    ep = Endpoint(store, None if args.loopback else args.rtt, args.mbit, args.timeout + 60)
    cpu = 0.0
    try:
        if peer.kind == "zip":
            os.sync()
            wall = run_zip_curl(work, staging, ep)
        else:
            wall, cpu = run_wodrop(work / f"wodrop-{run}", staging, names, ep, peer)
    finally:
        ep.close()
    got = received_ids(store)
    why = None
    if sorted(got) != names:
        extra = len(got) - len(set(got))
        why = f"received {len(set(got))} of {len(names)} work orders, {extra} more than once"
    for p in (store, staging, work / f"wodrop-{run}"):
        shutil.rmtree(p, ignore_errors=True)
    if why:
        peer.failures.append(why)
        print(f"  {peer.name}: FAILED ({why})", flush=True)
        return
    peer.walls.append(wall)
    peer.cpus.append(cpu)
    print(f"  {peer.name}: {wall:.2f} s" + (f", daemon CPU {cpu:.2f} s" if peer.kind == "wodrop" else ""),
          flush=True)


def report(peers: list[Peer], args: argparse.Namespace, payload: int) -> None:
    link = "loopback, no proxy" if args.loopback else f"{args.rtt:g} ms RTT, {args.mbit:g} Mbit/s uplink"
    link_s = payload * 8 / (args.mbit * 1e6)
    print(f"\n{args.count} work orders, {payload / 2**20:.0f} MiB of files, {link}, median of "
          f"{args.rounds}\n")
    print("| peer | seconds | x link time | x zip+curl | daemon CPU s | runs |")
    print("|---|---:|---:|---:|---:|---|")
    zipped = next((statistics.median(p.walls) for p in peers if p.kind == "zip" and p.walls), None)
    if not args.loopback:
        print(f"| link's own time (bytes / bandwidth) | {link_s:.2f} | 1.00 | "
              f"{link_s / zipped if zipped else float('nan'):.2f} | | |")
    for p in peers:
        if not p.walls:
            print(f"| {p.name} | FAILED: {'; '.join(p.failures)} | | | | |")
            continue
        m = statistics.median(p.walls)
        x_link = f"{m / link_s:.2f}" if not args.loopback else ""
        x_zip = f"{m / zipped:.2f}" if zipped else ""
        cpu = f"{statistics.median(p.cpus):.1f}" if p.kind == "wodrop" else ""
        runs = " ".join(f"{w:.2f}" for w in p.walls) + (f" ({len(p.failures)} failed)" if p.failures else "")
        print(f"| {p.name} | {m:.2f} | {x_link} | {x_zip} | {cpu} | {runs} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--size", type=parse_size, default=parse_size("1GiB"), help="bytes of files in all")
    ap.add_argument("--images", type=int, default=3, help="JPEGs per work order")
    ap.add_argument("--rtt", type=parse_ms, default=40.0)
    ap.add_argument("--mbit", type=float, default=400.0)
    ap.add_argument("--loopback", action="store_true", help="no proxy: straight to the receiver")
    ap.add_argument("--max-bytes", type=parse_size, action="append", help="batch.max_bytes (repeatable)")
    ap.add_argument("--no-marker", action="store_true", help="only the settle-1s wodrop peer")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--workdir", type=Path, default=None, help="where the data goes (default: a temp dir)")
    args = ap.parse_args()
    if not shutil.which("zip") or not shutil.which("curl"):
        raise SystemExit("needs zip and curl on PATH for the manual peer")
    peers = [Peer("zip -0 + curl, one PUT (by hand, no checks)", "zip")]
    for mb in args.max_bytes or [parse_size("512MiB")]:
        peers.append(Peer(f"wodrop run, settle 1s, max_bytes {mb // 2**20} MiB", "wodrop", mb))
        if not args.no_marker:
            peers.append(Peer(f"wodrop run, ready marker, max_bytes {mb // 2**20} MiB", "wodrop", mb, True))
    with tempfile.TemporaryDirectory(prefix="wodrop-drop-", dir=args.workdir) as tmp:
        work = Path(tmp)
        payload = make_set(work / "probe", args.count, args.size, args.images)
        shutil.rmtree(work / "probe")
        run = 0
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            for peer in peers:
                run += 1
                one_round(peer, args, work, run)
    report(peers, args, payload)


if __name__ == "__main__":
    main()
