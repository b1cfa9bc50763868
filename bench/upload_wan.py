"""Uploads over an emulated WAN link: ``wodrop upload`` vs curl and the usual resumable-upload clients.

    .venv/bin/python bench/upload_wan.py                          # 256 MiB over 40 ms / 400 Mbit/s, 3 rounds
    .venv/bin/python bench/upload_wan.py --loopback --size 512MiB # no proxy: straight to the receiver
    .venv/bin/python bench/upload_wan.py --rtt 80ms --mbit 100 --wodrop-chunk 32MiB --rounds 5

Each upload goes to a fresh ``wodrop receiver`` (its store under ``--workdir``, default a temporary
directory on disk) through a fresh ``bench/wanlink.py`` proxy: every byte is delayed by rtt/2 each way,
the uplink is one token bucket of ``--mbit`` for all connections, the downlink is uncapped. The
session is created before the clock starts (``POST /v0.2/batches/``, through the proxy) and every
peer gets the same kind of upload URL. Peers, each a separate process (so its CPU is its own):

- ``curl -T`` one PUT with ``Content-Range: bytes 0-N/T``: the floor, nothing to resume;
- google-resumable-media (``ResumableUpload``, 8 MiB chunks, the library's default checksum: none),
  given the session URL the way google-cloud-storage resumes a known session;
- a minimal requests client, sequential PUTs with ``Content-Range``, each waiting for its 308, at
  2.5 MiB (the vendor CLI's chunk) and 512 KiB (the platform guide's example);
- ``wodrop upload ARCHIVE --upload-url URL -c CFG`` with ``upload.chunk_size = --wodrop-chunk``.

The clock is the client process's whole life (start-up included: what a user waits for); "in-process"
is what the client itself reports (curl's ``time_total``; the python clients' own clock around the
transfer; wodrop's ``upload_complete`` log event). Client CPU is the child's user+sys from ``wait4``.
Every upload is checked afterwards: the receiver's stored file must have the source's size and sha256,
otherwise the run is marked FAILED. Rounds are interleaved; medians are shown; ``os.sync()`` runs
before each upload so one run's writeback does not slow the next.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
ALIGN = 262144


# ---- the python clients (run as: python bench/upload_wan.py client KIND URL FILE CHUNK) ----------


def client_chunked(url: str, path: str, chunk: int) -> dict[str, Any]:
    """The vendor CLI's / the guide's way: read a chunk, PUT it with Content-Range, wait for the 308."""
    import requests

    size = os.path.getsize(path)
    http = requests.Session()
    t0 = time.perf_counter()
    offset, puts = 0, 0
    with open(path, "rb") as f:
        while True:
            f.seek(offset)
            body = f.read(chunk)
            end = offset + len(body)
            r = http.put(url, data=body, allow_redirects=False, timeout=(30, 300), headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"bytes {offset}-{end - 1}/{size}"})
            puts += 1
            if r.status_code in (200, 201):
                break
            if r.status_code != 308:
                raise SystemExit(f"PUT {offset}-{end - 1}: HTTP {r.status_code} {r.text[:300]}")
            rng = r.headers.get("Range")
            offset = int(rng.rsplit("-", 1)[1]) + 1 if rng else 0
    return {"transfer_s": time.perf_counter() - t0, "puts": puts}


def client_grm(url: str, path: str, chunk: int) -> dict[str, Any]:
    """google-resumable-media on a session created elsewhere (how google-cloud-storage resumes a known
    session URI): the initiate request's bookkeeping without its POST, then ``transmit_next_chunk``."""
    import requests
    from google.resumable_media import requests as grm

    size = os.path.getsize(path)
    upload = grm.ResumableUpload(url, chunk)
    transport = requests.Session()
    puts = 0
    with open(path, "rb") as stream:
        t0 = time.perf_counter()
        upload._prepare_initiate_request(stream, {"name": "bench.zip"}, "application/zip", total_bytes=size)
        upload._resumable_url = url
        while not upload.finished:
            upload.transmit_next_chunk(transport)
            puts += 1
        elapsed = time.perf_counter() - t0
    if upload.bytes_uploaded != size:
        raise SystemExit(f"google-resumable-media reports {upload.bytes_uploaded} of {size} bytes")
    return {"transfer_s": elapsed, "puts": puts}


def client_main(argv: list[str]) -> None:
    kind, url, path, chunk = argv[0], argv[1], argv[2], int(argv[3])
    result = (client_grm if kind == "grm" else client_chunked)(url, path, chunk)
    print(json.dumps(result))


# ---- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{what} did not start") from None
            time.sleep(0.05)


@dataclass
class Reaped:
    rc: int
    wall: float
    cpu: float
    stdout: str
    stderr: str


def run_timed(cmd: list[str], timeout: float) -> Reaped:
    """Run cmd to its end (killed after ``timeout``): wall seconds, and its own user+sys from wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Reaped(proc.returncode, wall, ru.ru_utime + ru.ru_stime,
                      out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def stop(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM, reap (SIGKILL after 15 s); the process's CPU seconds."""
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.02)


class Endpoint:
    """A fresh receiver (and, unless ``rtt`` is None, a wanlink proxy in front of it) for one upload."""

    def __init__(self, store: Path, rtt: float | None, mbit: float, max_seconds: float) -> None:
        port = free_port()
        self.store = store
        self.receiver = subprocess.Popen(
            [sys.executable, "-m", "wodrop", "receiver", "--listen", f"127.0.0.1:{port}",
             "--store", str(store)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proxy: subprocess.Popen[bytes] | None = None
        try:
            wait_port(port, self.receiver, "wodrop receiver")
            if rtt is not None:
                pport = free_port()
                self.proxy = subprocess.Popen(
                    [sys.executable, str(BENCH / "wanlink.py"), "--listen", f"127.0.0.1:{pport}",
                     "--target", f"127.0.0.1:{port}", "--rtt", f"{rtt}ms", "--mbit", str(mbit),
                     "--max-seconds", str(max_seconds)],
                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wait_port(pport, self.proxy, "wanlink proxy")
                port = pport
        except BaseException:
            self.close()
            raise
        self.base = f"http://127.0.0.1:{port}"

    def new_session(self) -> tuple[str, str]:
        req = urllib.request.Request(
            f"{self.base}/v0.2/batches/", data=json.dumps({"filename": "bench"}).encode(), method="POST",
            headers={"Authorization": "Token bench", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = json.loads(resp.read())
        return data["batch_id"], data["upload_url"]

    def close(self) -> tuple[float, float]:
        """Stop both; (receiver CPU s, proxy CPU s)."""
        proxy_cpu = stop(self.proxy) if self.proxy is not None and self.proxy.returncode is None else 0.0
        rx_cpu = stop(self.receiver) if self.receiver.returncode is None else 0.0
        return rx_cpu, proxy_cpu


# ---- the benchmark --------------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    kind: str  # curl | grm | chunked | wodrop
    chunk: int = 0
    walls: list[float] = field(default_factory=list)
    inproc: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rx_cpus: list[float] = field(default_factory=list)
    proxy_cpus: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def mib(n: int) -> str:
    v = n / 2**20
    return f"{v:g} MiB" if v >= 1 else f"{n // 1024} KiB"


def parse_size(value: str) -> int:
    units = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30}
    v = value.strip().lower()
    num = v.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(float(num) * units[v[len(num):].strip()])


def make_file(path: Path, size: int) -> str:
    """Random-looking, every MiB different (nothing can dedupe it); returns its sha256."""
    block = os.urandom(1 << 20)
    h = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(0, size, len(block)):
            piece = (i.to_bytes(8, "big") + block[8:])[: size - i]
            f.write(piece)
            h.update(piece)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def command(peer: Peer, url: str, archive: Path, size: int, work: Path, run: int) -> list[str]:
    if peer.kind == "curl":
        return ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total}", "-X", "PUT",
                "-T", str(archive), "-H", "Content-Type: application/octet-stream",
                "-H", f"Content-Range: bytes 0-{size - 1}/{size}", url]
    if peer.kind in ("grm", "chunked"):
        return [sys.executable, str(Path(__file__).resolve()), "client", peer.kind, url, str(archive),
                str(peer.chunk)]
    state = work / f"state-{run}"
    config = work / f"wodrop-{run}.yaml"
    config.write_text(json.dumps({"paths": {"state": str(state)}, "upload": {"chunk_size": peer.chunk},
                                  "log": {"level": "info", "format": "json"}}))
    return [sys.executable, "-m", "wodrop", "upload", "-c", str(config), str(archive), "--upload-url", url,
            "--no-progress"]


def in_process_seconds(peer: Peer, r: Reaped) -> float | None:
    try:
        if peer.kind == "curl":
            return float(r.stdout.strip())
        if peer.kind in ("grm", "chunked"):
            return float(json.loads(r.stdout.strip().splitlines()[-1])["transfer_s"])
        for line in r.stderr.splitlines():
            if '"upload_complete"' in line:
                return float(json.loads(line)["seconds"])
    except (ValueError, KeyError, IndexError):
        pass
    return None


def one_upload(peer: Peer, args: argparse.Namespace, work: Path, archive: Path, size: int, digest: str,
               run: int) -> None:
    store = work / f"store-{run}"
    ep = Endpoint(store, None if args.loopback else args.rtt, args.mbit, args.timeout + 60)
    try:
        batch_id, url = ep.new_session()
        os.sync()
        r = run_timed(command(peer, url, archive, size, work, run), args.timeout)
    finally:
        rx_cpu, proxy_cpu = ep.close()
    stored = store / f"{batch_id}.zip"
    why = None
    if r.rc != 0:
        why = f"exit {r.rc}: {(r.stderr or r.stdout).strip()[-300:]}"
    elif not stored.exists():
        why = "the receiver holds no complete file"
    elif stored.stat().st_size != size:
        why = f"stored {stored.stat().st_size} bytes, not {size}"
    elif sha256_file(stored) != digest:
        why = "the stored copy's sha256 differs"
    shutil.rmtree(store, ignore_errors=True)
    if why is not None:
        peer.failures.append(why)
        print(f"  {peer.name}: FAILED ({why})", flush=True)
        return
    peer.walls.append(r.wall)
    peer.cpus.append(r.cpu)
    peer.rx_cpus.append(rx_cpu)
    peer.proxy_cpus.append(proxy_cpu)
    t = in_process_seconds(peer, r)
    if t is not None:
        peer.inproc.append(t)
    print(f"  {peer.name}: {r.wall:.2f} s (in-process {t if t is None else round(t, 2)}), "
          f"client CPU {r.cpu:.2f} s, receiver CPU {rx_cpu:.2f} s, proxy CPU {proxy_cpu:.2f} s", flush=True)


def report(peers: list[Peer], args: argparse.Namespace, size: int) -> None:
    link = "loopback, no proxy" if args.loopback else f"{args.rtt:g} ms RTT, {args.mbit:g} Mbit/s uplink"
    print(f"\n{mib(size)}, {link}, median of {args.rounds} rounds; every upload verified by size and sha256"
          f" unless marked FAILED\n")
    curl = peers[0]
    curl_t = statistics.median(curl.walls) if curl.walls else float("nan")
    curl_cpu = statistics.median(curl.cpus) if curl.cpus else float("nan")
    print("| peer | seconds | MiB/s | speed vs curl | in-process s | client CPU s | CPU vs curl "
          "| receiver CPU s | all runs (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for p in peers:
        name = p.name + (f" **FAILED {len(p.failures)}/{args.rounds}**" if p.failures else "")
        if not p.walls:
            print(f"| {name} | - | - | - | - | - | - | - | {'; '.join(p.failures)[:200]} |")
            continue
        t, cpu = statistics.median(p.walls), statistics.median(p.cpus)
        inproc = f"{statistics.median(p.inproc):.2f}" if p.inproc else "-"
        runs = " ".join(f"{x:.2f}" for x in p.walls)
        print(f"| {name} | {t:.2f} | {size / t / 2**20:.1f} | {curl_t / t:.2f}x | {inproc} | {cpu:.2f} "
              f"| {cpu / curl_cpu:.1f}x | {statistics.median(p.rx_cpus):.2f} | {runs} |")
    if not args.loopback:
        all_proxy = [c for p in peers for c in p.proxy_cpus]
        if all_proxy:
            print(f"\nwanlink proxy CPU per upload: median {statistics.median(all_proxy):.2f} s "
                  f"(max {max(all_proxy):.2f} s)")
        print(f"ideal time at {args.mbit:g} Mbit/s: {size * 8 / (args.mbit * 1e6):.2f} s + a few RTTs")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(sys.argv[2:])
        return
    sys.path.insert(0, str(REPO / "daemon"))
    from wodrop.config import UploadConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256MiB", help="archive size (default 256MiB)")
    ap.add_argument("--rtt", default="40ms", help="round-trip delay of the link (default 40ms)")
    ap.add_argument("--mbit", type=float, default=400.0, help="uplink Mbit/s (default 400)")
    ap.add_argument("--loopback", action="store_true", help="no proxy: straight to the receiver")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians shown (default 3)")
    ap.add_argument("--wodrop-chunk", default=str(UploadConfig().chunk_size),
                    help="wodrop's upload.chunk_size (default: the project's default)")
    ap.add_argument("--workdir", type=Path, help="where the file and the receivers' stores go (default tmp)")
    ap.add_argument("--peers", help="comma-separated subset: curl,grm,chunked-2.5m,chunked-512k,wodrop")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before an upload is killed")
    args = ap.parse_args()
    size = parse_size(args.size)
    from wanlink import parse_ms  # bench/ is on sys.path when run as a script

    args.rtt = parse_ms(args.rtt)
    wchunk = parse_size(args.wodrop_chunk)
    if wchunk % ALIGN:
        raise SystemExit("--wodrop-chunk must be a multiple of 256 KiB")
    peers = [
        Peer("curl -T (one PUT)", "curl"),
        Peer("google-resumable-media, 8 MiB chunks", "grm", 8 << 20),
        Peer("requests, 2.5 MiB chunks (vendor CLI)", "chunked", 5 * 2**19),
        Peer("requests, 512 KiB chunks (guide)", "chunked", 2 * ALIGN),
        Peer(f"wodrop upload, {mib(wchunk)} chunks", "wodrop", wchunk),
    ]
    if args.peers:
        keys = ["curl", "grm", "chunked-2.5m", "chunked-512k", "wodrop"]
        wanted = set(args.peers.split(","))
        if "curl" not in wanted:
            raise SystemExit("--peers must include curl (the reference)")
        peers = [p for k, p in zip(keys, peers, strict=True) if k in wanted]
    work = Path(tempfile.mkdtemp(prefix="wodrop-wan-", dir=args.workdir))
    t_start = time.monotonic()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    try:
        archive = work / "bench.zip"
        print(f"creating a {mib(size)} file in {work} ...", flush=True)
        digest = make_file(archive, size)
        run = 0
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds}", flush=True)
            for peer in peers:
                run += 1
                one_upload(peer, args, work, archive, size, digest, run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(peers, args, size)
    print(f"\nwall time of the whole benchmark: {time.monotonic() - t_start:.0f} s; load average at the end: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
