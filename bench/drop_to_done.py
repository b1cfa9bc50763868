"""How long N small work orders take from being dropped in the inbox to being in done/.

Peers, measured in the same run on the same data and the same receiver:
- wodrop: a `wodrop run` daemon; the clock runs from the first folder dropped to the last in done/.
- zip+curl: what an operator does by hand (the platform's guide): `zip -0 -r` the folders into one
  archive, create a batch with curl, PUT the archive with curl in one request. No validation, no
  resume, no moves: a floor, not an equal.

Usage: python bench/drop_to_done.py [--count 1000] [--images 3] [--image-size 20000]
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
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers.files import free_port  # noqa: E402
from helpers.workorders import make_work_order  # noqa: E402

WODROP = [sys.executable, "-m", "wodrop"]


def start_receiver(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([*WODROP, "receiver", "--listen", f"127.0.0.1:{port}", "--store", str(store)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            import urllib.request

            urllib.request.urlopen(f"{url}/_receiver/stats", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    raise SystemExit("receiver did not start")


def make_set(staging: Path, count: int, images: int, size: int) -> list[str]:
    names = [f"WO_{i:05d}" for i in range(count)]
    imgs = tuple(f"task_A-{k}.jpg" for k in range(images))
    for n in names:
        make_work_order(staging, n, images=imgs, metadata={"id": n}, image_size=size)
    return names


def bench_wodrop(work: Path, staging: Path, names: list[str], url: str) -> float:
    share, state = work / "share", work / "state"
    cfg = {
        "paths": {**{k: str(share / k) for k in ("inbox", "processing", "done", "failed")},
                  "state": str(state)},
        "watch": {"settle": "1s"},
        "batch": {"max_age": "2s", "max_work_orders": 1000},
        "api": {"url": url},
        "status": {"listen": "off"},
        "log": {"format": "json", "level": "warning"},
    }
    for k in ("inbox", "processing", "done", "failed"):
        (share / k).mkdir(parents=True)
    (work / "wodrop.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "CUSTOMER_API_KEY": "bench-key"}
    proc = subprocess.Popen([*WODROP, "run", "-c", str(work / "wodrop.yaml")], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=open(work / "daemon.log", "wb"))  # noqa: SIM115
    time.sleep(2)  # start-up is not part of drop-to-done
    t0 = time.monotonic()
    for n in names:
        os.rename(staging / n, share / "inbox" / n)
    done = share / "done"
    while len(os.listdir(done)) < len(names):
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited: see {work / 'daemon.log'}")
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return elapsed


def bench_zip_curl(work: Path, staging: Path, url: str) -> float:
    archive = work / "manual.zip"
    t0 = time.monotonic()
    subprocess.run(["zip", "-0", "-r", "-q", str(archive), "."], cwd=staging, check=True)
    out = subprocess.run(["curl", "-sf", "-X", "POST", f"{url}/v0.2/batches/", "-H", "Authorization: Token k",
                          "-H", "Content-Type: application/json", "-d", '{"filename": "manual"}'],
                         capture_output=True, check=True)
    upload_url = json.loads(out.stdout)["upload_url"]
    size = archive.stat().st_size
    subprocess.run(["curl", "-sf", "-X", "PUT", "-T", str(archive),
                    "-H", f"Content-Range: bytes 0-{size - 1}/{size}",
                    "-H", "Content-Type: application/octet-stream", upload_url, "-o", "/dev/null"],
                   check=True)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=20_000)
    args = ap.parse_args()
    if not shutil.which("zip") or not shutil.which("curl"):
        raise SystemExit("needs zip and curl on PATH for the peer")
    with tempfile.TemporaryDirectory(prefix="wodrop-bench-") as tmp:
        work = Path(tmp)
        rx, url = start_receiver(work / "received")
        try:
            make_set(work / "staging-manual", args.count, args.images, args.image_size)
            manual = bench_zip_curl(work, work / "staging-manual", url)
            names = make_set(work / "staging", args.count, args.images, args.image_size)
            wodrop = bench_wodrop(work / "wodrop", work / "staging", names, url)
        finally:
            rx.terminate()
            rx.wait()
    n = args.count
    print(f"\n{n} work orders x {args.images} images of ~{args.image_size // 1000} kB, loopback receiver\n")
    print(f"{'tool':<36}{'seconds':>10}{'WO/s':>10}{'ratio':>8}")
    print(f"{'zip -0 + curl (by hand, no checks)':<36}{manual:>10.2f}{n / manual:>10.1f}{1.0:>8.2f}")
    print(f"{'wodrop run (drop -> done/)':<36}{wodrop:>10.2f}{n / wodrop:>10.1f}{wodrop / manual:>8.2f}")
    print("\nwodrop's time includes watch.settle (1s) and batch.max_age (2s) waits, validation of every "
          "file, per-folder moves to done/, and fsyncs.")


if __name__ == "__main__":
    main()
