"""Packing speed: ``wodrop pack`` vs ``zip -0 -r`` vs ``cat`` of the same work-order folders.

    .venv/bin/python bench/pack_speed.py [--size 1GiB] [--rounds 3] [--old-rev 9ed4119]

Two sets of the same total size, made once: ``small``, 1,000 work orders of one ~1 MiB image (plus a
metadata.json) each, and ``big``, one work order of 10 images of a tenth of the size. Peers, on the
same folders, writing to the same file system:

- ``cat``: every source file, concatenated into one file: the bare copy (a floor: nothing hashed).
- ``zip -0 -r -q``: Info-ZIP storing the folders (it computes each file's CRC-32); no fsync.
- ``wodrop pack (REV)`` with ``--old-rev``: the ``daemon/`` of that git revision (``git archive``),
  to compare with an earlier writer.
- ``wodrop pack``: this checkout. Its time is the whole command: interpreter start-up and imports,
  validating every folder (the default marker checks), the archive with its sha256/md5/crc32c, and
  an fsync of the archive (the others do not fsync).

The page cache cannot be dropped (no root needed, none assumed): every peer runs once untimed first so
that all read from a warm cache, then ``--rounds`` interleaved rounds are timed and the median shown;
``os.sync()`` before each run keeps one run's writeback out of the next. CPU is user + system time of
the command and its children (all threads); "CPU vs zip" is the ratio of those, what the wall-clock
ratio tends to when other work keeps every core busy. The load average is printed: on a shared
machine it says how far the wall-clock figures can be trusted. One more, untimed, ``wodrop pack`` of
each set is checked: ``unzip -tq``, zipfile's CRC test, every file present, and the sha256 it
printed equal to an independent hash of the archive.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "daemon"))
sys.path.insert(0, str(REPO / "tests"))

from helpers.files import sha256_file  # noqa: E402
from helpers.workorders import jpeg_bytes  # noqa: E402
from wodrop.units import format_size, parse_size  # noqa: E402


def make_image(path: Path, size: int, block: bytes) -> None:
    """A file that passes wodrop's JPEG marker checks (a real JPEG's start, FF D9 at the end), of
    ``size`` bytes: incompressible filler that varies every MiB after the JPEG's own bytes."""
    jpeg = jpeg_bytes()
    fill = size - len(jpeg)
    with path.open("wb") as f:
        f.write(jpeg[:-2])
        for i in range(0, fill, len(block)):
            piece = (i.to_bytes(8, "big") + path.name.encode()[:8].ljust(8) + block[16:])[: fill - i]
            f.write(piece)
        f.write(jpeg[-2:])


def make_sets(root: Path, size: int) -> dict[str, Path]:
    block = os.urandom(1 << 20)
    small, big = root / "small", root / "big"
    for i in range(1000):
        wo = small / f"WO_{i:04d}"
        wo.mkdir(parents=True)
        (wo / "metadata.json").write_text(json.dumps({"id": wo.name}))
        make_image(wo / "task_A-0.jpg", size // 1000, block)
    wo = big / "WO_BIG"
    wo.mkdir(parents=True)
    for i in range(10):
        make_image(wo / f"task_A-{i}.jpg", size // 10, block)
    return {"1,000 work orders of ~1 MiB": small, "1 work order of 10 big files": big}


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command, after an os.sync()."""
    os.sync()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-2000:]!r}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def old_daemon(rev: str, into: Path) -> Path:
    """``daemon/`` as of git revision ``rev``, extracted (read-only git use) under ``into``."""
    into.mkdir()
    tar = subprocess.run(["git", "-C", str(REPO), "archive", rev, "daemon"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar.stdout, check=True)
    return into / "daemon"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="size of each set (default 1GiB)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds; the median is shown")
    ap.add_argument("--old-rev", help="also time `wodrop pack` as of this git revision")
    ap.add_argument("--workdir", type=Path, help="where the sets and the outputs go (default: tmp)")
    args = ap.parse_args()
    size = parse_size(args.size)
    zip_bin = shutil.which("zip")
    if not zip_bin:
        raise SystemExit("Info-ZIP zip is needed for the comparison (apt-get install zip)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WODROP")}
    env["PYTHONPATH"] = str(REPO / "daemon")

    work = Path(tempfile.mkdtemp(prefix="wodrop-pack-bench-", dir=args.workdir))
    try:
        print(f"creating two sets of {format_size(size)} in {work} ...", flush=True)
        sets = make_sets(work / "sets", size)
        out = work / "out"
        out.mkdir()
        peers: dict[str, Callable[[Path], tuple[list[str], dict[str, str] | None]]] = {}
        peers["cat"] = lambda src: (["sh", "-c", 'cat "$@" > "$0"', str(out / "cat"),
                                     *map(str, sorted(src.rglob("*.*")))], None)
        peers["zip -0 -r -q"] = lambda src: ([zip_bin, "-0", "-r", "-q", str(out / "zip.zip"),
                                              *sorted(p.name for p in src.iterdir())], None)
        if args.old_rev:
            old_env = {**env, "PYTHONPATH": str(old_daemon(args.old_rev, work / "old"))}
            where = subprocess.run([sys.executable, "-c", "import wodrop; print(wodrop.__file__)"],
                                   env=old_env, capture_output=True, text=True, check=True).stdout
            if not where.startswith(str(work / "old")):
                raise SystemExit(f"--old-rev: python imports wodrop from {where.strip()}, not the old copy")
            peers[f"wodrop pack ({args.old_rev})"] = lambda src: (
                [sys.executable, "-m", "wodrop", "pack", str(src), "-o", str(out / "old.zip")], old_env)
        peers["wodrop pack"] = lambda src: (
            [sys.executable, "-m", "wodrop", "pack", str(src), "-o", str(out / "wodrop.zip")], env)

        results: dict[str, dict[str, list[tuple[float, float]]]] = {}
        load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
        for label, src in sets.items():
            results[label] = {name: [] for name in peers}
            for rnd in range(args.rounds + 1):  # round 0 warms the cache and is not counted
                for name, peer in peers.items():
                    for f in out.iterdir():
                        f.unlink()
                    cmd, cmd_env = peer(src)
                    timing = run(cmd, src, cmd_env)
                    if rnd:
                        results[label][name].append(timing)
                    print(f"  {label}, {name}: {timing[0]:.2f} s{'' if rnd else ' (warm-up)'}", flush=True)
            check(work, env, src)

        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"\n{format_size(size)} per set, {args.rounds} timed rounds after a warm-up round, median; "
              f"{os.cpu_count()} CPUs; load average {load_before} before, {load} after\n")
        print("| set | peer | seconds | MiB/s | vs zip -0 | vs cat | CPU s | CPU vs zip | all runs (s) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for label, by_peer in results.items():
            cat_t = statistics.median(t for t, _ in by_peer["cat"])
            zip_t = statistics.median(t for t, _ in by_peer["zip -0 -r -q"])
            zip_cpu = statistics.median(c for _, c in by_peer["zip -0 -r -q"])
            for name, timings in by_peer.items():
                t = statistics.median(w for w, _ in timings)
                cpu = statistics.median(c for _, c in timings)
                runs = " ".join(f"{w:.2f}" for w, _ in timings)
                print(f"| {label} | {name} | {t:.2f} | {size / t / 2**20:.0f} | {t / zip_t:.2f}x | "
                      f"{t / cat_t:.2f}x | {cpu:.2f} | {cpu / zip_cpu:.2f}x | {runs} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check(work: Path, env: dict[str, str], src: Path) -> None:
    """The last wodrop archive: readable by unzip and zipfile, every CRC right, the sha256 it printed
    equal to the file's, every source file in it."""
    r = subprocess.run([sys.executable, "-m", "wodrop", "pack", str(src), "-o", str(work / "check.zip")],
                       cwd=work, env=env, capture_output=True, text=True, check=True)
    printed = next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("sha256 "))
    if printed != sha256_file(work / "check.zip"):
        raise SystemExit("wodrop printed a sha256 that is not its archive's")
    if shutil.which("unzip"):
        subprocess.run(["unzip", "-tq", str(work / "check.zip")], check=True, stdout=subprocess.DEVNULL)
    with zipfile.ZipFile(work / "check.zip") as zf:
        if zf.testzip() is not None:
            raise SystemExit("a CRC in wodrop's archive is wrong")
        names = set(zf.namelist())
    expected = {f"{p.parent.name}/{p.name}" for p in src.rglob("*.*")}
    if names != expected:
        raise SystemExit(f"wodrop's archive misses {sorted(expected - names)[:5]}")
    (work / "check.zip").unlink()


if __name__ == "__main__":
    main()
