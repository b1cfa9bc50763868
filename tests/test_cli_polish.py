"""The command line around the edges: a closed output pipe, help texts, and a test suite that does not
care which folder it runs in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.statusdb import populate
from helpers.workorders import drop_atomically, make_work_order

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("run", "validate", "pack", "upload", "status", "retry", "healthcheck", "receiver")


def wodrop_into_closed_pipe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``wodrop ARGS`` with stdout a pipe whose reader is already gone: what ``| head`` does to a
    long output, without the race of ``head`` leaving at some point."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "wodrop", *args], stdout=write_end,
                              stderr=subprocess.PIPE, cwd=cwd, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [("status", "--json"), ("status",), ("validate", "--json", "inbox"),
                                  ("retry", "--all")])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path, args: tuple[str, ...]) -> None:
    fx = populate(tmp_path)
    fx.db.close()
    make_work_order(fx.cfg.paths.inbox, "WO_1")
    make_work_order(fx.cfg.paths.failed, "WO_2")
    r = wodrop_into_closed_pipe(args[0], "-c", str(fx.config_path), *args[1:], cwd=tmp_path)
    assert r.returncode == 141, r.stderr
    assert r.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit


def test_a_reader_that_stays_gets_everything(tmp_path: Path) -> None:
    fx = populate(tmp_path)
    fx.db.close()
    r = subprocess.run([sys.executable, "-m", "wodrop", "status", "--json", "-c", str(fx.config_path)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("}"), r.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_gives_the_exit_codes(command: str) -> None:
    r = subprocess.run([sys.executable, "-m", "wodrop", command, "--help"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    codes = r.stdout.partition("\nexit codes:\n")[2]
    assert codes, r.stdout
    assert "  0    " in codes and "  141  " in codes
    assert ("  1    " in codes) == (command not in ("receiver",))
    assert ("  2    " in codes) == (command != "healthcheck"), "Docker reserves 2 for health checks"
    keys = ("CUSTOMER_API_KEY", "DEEPOMATIC_API_KEY", "api.api_key_file")
    assert all(k in r.stdout for k in keys) == (command in ("run", "upload", "receiver"))


@pytest.mark.parametrize(("command", "needles"), [
    ("receiver", ["--listen HOST:PORT address to serve on", "(default: 127.0.0.1:8080)",
                  "--store DIR folder for the received", "(default: ./wodrop-data/received)"]),
    ("upload", ["ARCHIVE the batch archive to send"]),
])
def test_help_says_what_each_argument_is(command: str, needles: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "wodrop", command, "--help"], capture_output=True, text=True,
                       timeout=60, check=False)
    words = " ".join(r.stdout.split())  # whatever the terminal's width
    for needle in needles:
        assert needle in words, (needle, r.stdout)


def test_the_suite_ignores_a_tree_where_wodrop_run_was_tried(tmp_path: Path) -> None:
    """The README's first run leaves ./wodrop-data (a state DB that knows WO_1 and WO_3 were sent) in
    the folder it ran in; tests that read the built-in config found it there and failed. Run tests that
    use the built-in config from such a folder: they must pass as anywhere else."""
    tree = tmp_path / "tree"
    tree.mkdir()
    env = {**os.environ, "CUSTOMER_API_KEY": "", "WODROP__STATUS__LISTEN": "off",
           "WODROP__WATCH__SETTLE": "0.3s", "WODROP__BATCH__MAX_AGE": "0.2s", "WODROP__LOG__FORMAT": "json"}
    log = (tmp_path / "run.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "wodrop", "run"], cwd=tree, env=env, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        data = tree / "wodrop-data"
        deadline = time.monotonic() + 60
        while not (data / "inbox").is_dir():
            assert daemon.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.05)
        for name in ("WO_1", "WO_3"):
            drop_atomically(tmp_path / "staging", data / "inbox", name)
        while {p.name for p in (data / "done").iterdir()} < {"WO_1", "WO_3"}:
            assert daemon.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.05)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        log.close()
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}",
         str(REPO / "tests" / "test_cli_validate_pack.py"),
         f"{REPO / 'tests' / 'test_nofollow.py'}::test_validate_and_pack_commands_refuse_a_linked_folder"],
        cwd=tree, capture_output=True, text=True, timeout=240, check=False)
    assert inner.returncode == 0, inner.stdout[-4000:] + inner.stderr[-2000:]
    assert (data / "state" / "wodrop.sqlite3").is_file()  # the tree still holds what the run left
