"""Upload throughput: ``wodrop upload --upload-url`` vs ``curl -T`` (one PUT) to a local ``wodrop receiver``.

    .venv/bin/python bench/upload_throughput.py [--size 1GiB] [--chunk-size 8MiB --chunk-size 32MiB]

Both clients upload the same file over loopback to fresh sessions of the same receiver, in interleaved
rounds (median reported, after an ``os.sync()`` so one run's writeback does not slow the next); each
stored copy is checked by sha256 and then deleted. wodrop's time includes its start-up and its md5/crc32c
pass (it hashes while it uploads), i.e. what a user waits for. The receiver fsyncs every request, so a
chunked upload pays one fsync per chunk where a single PUT pays one in all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from helpers.files import free_port, sha256_file  # noqa: E402
from wodrop.units import format_size, parse_size  # noqa: E402


def make_file(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as f:
        for i in range(0, size, len(block)):
            # vary every MiB so nothing downstream can dedupe or compress it away
            f.write((i.to_bytes(8, "big") + block[8:])[: size - i])


def start_receiver(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wodrop", "receiver", "--listen", f"127.0.0.1:{port}", "--store", str(store)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("wodrop receiver did not start") from None
            time.sleep(0.05)


def new_session(base: str, name: str) -> tuple[str, str]:
    req = urllib.request.Request(f"{base}/v0.2/batches/", data=json.dumps({"filename": name}).encode(),
                                 method="POST", headers={"Authorization": "Token bench",
                                                         "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        data = json.loads(resp.read())
    return data["batch_id"], data["upload_url"]


def timed(cmd: list[str]) -> float:
    os.sync()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="archive size (default 1GiB)")
    ap.add_argument("--chunk-size", action="append", help="wodrop chunk size(s) (default 8MiB and 32MiB)")
    ap.add_argument("--workdir", type=Path, help="where the file and the receiver's store go (default: tmp)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is shown")
    args = ap.parse_args()
    size = parse_size(args.size)
    chunks = [parse_size(c) for c in args.chunk_size or ["8MiB", "32MiB"]]
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the comparison")

    work = Path(tempfile.mkdtemp(prefix="wodrop-bench-", dir=args.workdir))
    try:
        archive, store = work / "bench.zip", work / "store"
        print(f"creating a {format_size(size)} file in {work} ...", flush=True)
        make_file(archive, size)
        digest = sha256_file(archive)
        tools: dict[str, Callable[[str], list[str]]] = {
            "curl -T (one PUT)": lambda url: [
                "curl", "-sS", "--fail", "-o", "/dev/null", "-X", "PUT", "-T", str(archive),
                "-H", "Content-Type: application/octet-stream",
                "-H", f"Content-Range: bytes 0-{size - 1}/{size}", url],
        }
        for chunk in chunks:
            config = work / f"wodrop-{chunk}.yaml"
            config.write_text(json.dumps({"paths": {"state": str(work / f"state-{chunk}")},
                                          "upload": {"chunk_size": chunk}, "log": {"level": "warning"}}))
            tools[f"wodrop upload, {format_size(chunk)} chunks"] = lambda url, c=config: [
                sys.executable, "-m", "wodrop", "upload", "-c", str(c), str(archive), "--upload-url", url,
                "--no-progress"]
        times: dict[str, list[float]] = {name: [] for name in tools}
        proc, base = start_receiver(store)
        try:
            for _ in range(args.rounds):
                for name, command in tools.items():
                    batch_id, url = new_session(base, "bench")
                    times[name].append(timed(command(url)))
                    stored = store / f"{batch_id}.zip"
                    if sha256_file(stored) != digest:
                        raise SystemExit(f"{name}: the stored copy differs from the file")
                    stored.unlink()
        finally:
            proc.terminate()
            proc.wait(10)
        curl_t = statistics.median(next(iter(times.values())))
        print(f"\n{format_size(size)}, {args.rounds} rounds, median; every stored copy matched by sha256\n")
        print("| tool | seconds | MiB/s | time vs curl | all runs (s) |\n|---|---:|---:|---:|---|")
        for name, ts in times.items():
            t = statistics.median(ts)
            runs = " ".join(f"{x:.2f}" for x in ts)
            print(f"| {name} | {t:.2f} | {size / t / 2**20:.0f} | {t / curl_t:.2f}x | {runs} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
