"""sd_notify against a real AF_UNIX datagram socket: the test plays systemd's side."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.statusdb import populate
from wodrop.sdnotify import Notifier, watchdog_loop


class FakeSystemd:
    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.address = address

    def received(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    yield fake
    fake.sock.close()


def test_messages_arrive(systemd: FakeSystemd) -> None:
    n = Notifier({"NOTIFY_SOCKET": systemd.address})
    assert n.enabled
    assert n.ready("up and\nrunning")
    assert n.status("3 pending")
    assert n.watchdog()
    assert n.reloading()
    assert n.stopping()
    got = systemd.received()
    assert got[:3] == ["READY=1\nSTATUS=up and running", "STATUS=3 pending", "WATCHDOG=1"]
    reloading, usec = got[3].split("\n")
    assert reloading == "RELOADING=1"
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < int(usec.removeprefix("MONOTONIC_USEC=")) <= now_usec
    assert got[4] == "STOPPING=1"
    n.close()


def test_abstract_socket() -> None:
    fake = FakeSystemd(f"@wodrop-test-{uuid.uuid4().hex}")
    try:
        assert Notifier({"NOTIFY_SOCKET": fake.address}).ready()
        assert fake.received() == ["READY=1"]
    finally:
        fake.sock.close()


def test_gone_socket_is_not_fatal(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.enabled and n.ready() is False


async def test_noop_outside_systemd(tmp_path: Path) -> None:
    n = Notifier({})
    assert not n.enabled
    assert not (n.ready() or n.status("x") or n.watchdog() or n.stopping() or n.reloading())
    assert n.watchdog_interval() is None
    fx = populate(tmp_path)
    await asyncio.wait_for(watchdog_loop(n, fx.runtime), 1)  # returns at once


def test_watchdog_interval(systemd: FakeSystemd) -> None:
    env = {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "30000000"}
    assert Notifier(env).watchdog_interval() == 15.0
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == 15.0
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval() is None
    assert Notifier({**env, "WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert Notifier({"NOTIFY_SOCKET": systemd.address}).watchdog_interval() is None


async def test_watchdog_loop_pings_and_reports_status(systemd: FakeSystemd, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fx = populate(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)  # the daemon's way: from its environment
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    n = Notifier()
    assert n.watchdog_interval() == 0.05
    task = asyncio.create_task(watchdog_loop(n, fx.runtime, status_every=0.2))
    got: list[str] = []

    async def drain(at_least: int, until: Callable[[], bool]) -> None:
        """Drain like systemd does (the kernel queues only ~10 datagrams): ``at_least`` rounds, then
        until ``until()`` holds, within a deadline (a loaded machine stretches every sleep)."""
        deadline = time.monotonic() + 20
        for i in itertools.count():
            await asyncio.sleep(0.01)
            got.extend(systemd.received())
            if i + 1 >= at_least and until():
                return
            assert time.monotonic() < deadline, f"timed out; received {got}"

    def status_lines() -> list[str]:
        return [m for m in got if m.startswith("STATUS=")]

    await drain(51, lambda: got.count("WATCHDOG=1") >= 10 and bool(status_lines()))
    fx.runtime.pending.clear()
    await drain(29, lambda: status_lines()[-1].startswith("STATUS=0 pending, "))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    n.stopping()
    got += systemd.received()
    assert got.count("WATCHDOG=1") >= 10
    statuses = [m for m in got if m.startswith("STATUS=")]
    assert statuses[0] == ("STATUS=3 pending, uploading batch-20240611-0002: 40% at 12.3 MiB/s, "
                           "2 failed today")
    assert statuses[-1].startswith("STATUS=0 pending, ")
    assert len(statuses) == 2  # unchanged text is not resent
    assert got[-1] == "STOPPING=1"
    fx.db.close()


async def test_status_dropped_by_a_full_queue_is_sent_again(systemd: FakeSystemd, tmp_path: Path) -> None:
    fx = populate(tmp_path)
    # One notifier fills the path to systemd (its socket buffer or systemd's queue, whichever is
    # smaller on this kernel) and then runs the loop, so its first STATUS= must be dropped.
    notifier = Notifier({"NOTIFY_SOCKET": systemd.address})
    while notifier.notify("FILLER=1"):
        pass
    task = asyncio.create_task(watchdog_loop(notifier, fx.runtime, status_every=0.05))
    await asyncio.sleep(0.15)
    assert set(systemd.received()) == {"FILLER=1"}  # the first STATUS= was dropped
    got: list[str] = []
    deadline = time.monotonic() + 20  # sent again within status_every; a loaded machine stretches that
    while not any(m.startswith("STATUS=3 pending") for m in got) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        got += systemd.received()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert any(m.startswith("STATUS=3 pending") for m in got), got
    fx.db.close()
