"""``wodrop healthcheck`` against a real daemon, the real status server, and sockets that misbehave."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.daemon import DaemonProcess, write_config
from helpers.files import free_port
from helpers.receiver import ReceiverThread
from helpers.statusdb import populate
from wodrop.cli import main
from wodrop.commands.healthcheck import healthz_address
from wodrop.status.server import start_status_server


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wodrop", "healthcheck", *args], capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ, **(env or {})})


def listen_config(tmp_path: Path, listen: str) -> Path:
    path = tmp_path / "health.yaml"
    path.write_text(f"status:\n  listen: '{listen}'\n")
    return path


def test_asks_the_port_the_config_file_gives_the_daemon(tmp_path: Path) -> None:
    """The container case: status.listen on a port of its own, on every interface, from the file that
    WODROP_CONFIG names (the image's HEALTHCHECK passes no option)."""
    port = free_port()
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url, status={"listen": f"0.0.0.0:{port}"})
        env = {"WODROP_CONFIG": str(cfg)}
        with DaemonProcess(cfg) as d:
            d.wait_for(lambda: healthcheck(env=env).returncode == 0, timeout=30, what="healthy")
            r = healthcheck(env=env)
            assert r.stdout == f"healthy: http://127.0.0.1:{port}/healthz: ok\n" and r.stderr == ""
            # the environment overrides the file, as for `wodrop run`: here a port nothing serves
            other = free_port()
            r = healthcheck(env={**env, "WODROP__STATUS__LISTEN": f"127.0.0.1:{other}"})
            assert r.returncode == 1 and r.stdout == ""
            assert r.stderr == (
                f"wodrop healthcheck: unhealthy: http://127.0.0.1:{other}/healthz: connection refused: "
                "wodrop run is not running, or serves another status.listen than this config says\n")
        r = healthcheck("-c", str(cfg))
        assert r.returncode == 1 and "connection refused" in r.stderr


async def test_a_daemon_that_is_stuck_is_unhealthy(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fx = populate(tmp_path)
    runner = await start_status_server(fx.runtime, "127.0.0.1:0")
    try:
        port = runner.addresses[0][1]
        config = listen_config(tmp_path, f"127.0.0.1:{port}")
        assert await asyncio.to_thread(main, ["healthcheck", "-c", str(config)]) == 0
        fx.runtime.last_loop_tick = time.monotonic() - 45
        assert await asyncio.to_thread(main, ["healthcheck", "-c", str(config)]) == 1
    finally:
        await runner.cleanup()
        fx.db.close()
    out, err = capsys.readouterr()
    assert out == f"healthy: http://127.0.0.1:{port}/healthz: ok\n"
    assert err == (f"wodrop healthcheck: unhealthy: http://127.0.0.1:{port}/healthz answered 503: stuck: "
                   "the pipeline has not ticked for 45 s\n")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_no_answer_within_the_timeout(tmp_path: Path, silent_port: int,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = listen_config(tmp_path, f"127.0.0.1:{silent_port}")
    assert main(["healthcheck", "-c", str(config), "--timeout", "0.3"]) == 1
    assert capsys.readouterr().err == (
        f"wodrop healthcheck: unhealthy: http://127.0.0.1:{silent_port}/healthz: no answer within 0.3 s\n")


def test_something_else_on_the_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()

        def answer() -> None:
            conn, _ = s.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

        t = threading.Thread(target=answer)
        t.start()
        config = listen_config(tmp_path, f"127.0.0.1:{s.getsockname()[1]}")
        assert main(["healthcheck", "-c", str(config)]) == 1
        t.join(10)
    assert "not an HTTP answer (BadStatusLine)" in capsys.readouterr().err


class ScriptedServer:
    """Answers one connection on 127.0.0.1 with ``answer``, ``step`` bytes every ``pause`` seconds (all
    at once by default); ``written`` counts what it got out before it stopped."""

    def __init__(self, answer: bytes, *, step: int = 0, pause: float = 0.0) -> None:
        self.answer, self.step, self.pause = answer, step or len(answer), pause
        self.written = 0
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve)

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            for i in range(0, len(self.answer), self.step):
                if i and self.stop.wait(self.pause):
                    return
                try:
                    conn.sendall(self.answer[i : i + self.step])
                except OSError:  # the client gave up and closed
                    return
                self.written = i + self.step

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.sock.close()


def test_a_200_that_is_not_wodrop_is_unhealthy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Something else on the port (another service, a proxy's page) answering 200 is not a healthy wodrop."""
    hello = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world"
    with ScriptedServer(hello) as server:
        config = listen_config(tmp_path, f"127.0.0.1:{server.port}")
        assert main(["healthcheck", "-c", str(config)]) == 1
    assert capsys.readouterr().err == (
        f"wodrop healthcheck: unhealthy: http://127.0.0.1:{server.port}/healthz answered 200 without "
        "wodrop's X-Wodrop-Health header: something that is not wodrop listens on this port (hello world)\n")


def test_the_timeout_bounds_the_whole_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A server that answers one byte at a time, each within the timeout, must not hold the check for
    longer than the timeout: it gives up before the answer (a healthy one, once complete) is through."""
    healthy = b"HTTP/1.1 200 OK\r\nX-Wodrop-Health: ok\r\nContent-Length: 3\r\n\r\nok\n"
    with ScriptedServer(healthy, step=1, pause=0.2) as server:
        config = listen_config(tmp_path, f"127.0.0.1:{server.port}")
        assert main(["healthcheck", "-c", str(config), "--timeout", "1"]) == 1
        assert server.written < len(healthy)
    assert capsys.readouterr().err == (
        f"wodrop healthcheck: unhealthy: http://127.0.0.1:{server.port}/healthz: no answer within 1 s\n")


def test_the_scripted_server_is_healthy_when_it_answers_at_once(tmp_path: Path) -> None:
    """Guards the test above: the same answer, all at once, is wodrop's healthy answer."""
    healthy = b"HTTP/1.1 200 OK\r\nX-Wodrop-Health: ok\r\nContent-Length: 3\r\n\r\nok\n"
    with ScriptedServer(healthy) as server:
        assert main(["healthcheck", "-c", str(listen_config(tmp_path, f"127.0.0.1:{server.port}"))]) == 0


def test_exit_1_never_2_when_it_cannot_check(tmp_path: Path) -> None:
    """Docker reserves exit code 2 of a health check: a config that cannot be used is unhealthy (1)."""
    r = healthcheck("-c", str(listen_config(tmp_path, "off")))
    assert r.returncode == 1 and "cannot check: the status server is off (status.listen: off)" in r.stderr
    r = healthcheck("-c", str(tmp_path / "missing.yaml"))
    assert r.returncode == 1 and "config file not found" in r.stderr
    r = healthcheck(env={"WODROP__STATUS__LISTEN": "9410"})
    assert r.returncode == 1 and "not a bare port: write 127.0.0.1:9410" in r.stderr


def test_wildcard_addresses_are_asked_on_loopback() -> None:
    assert healthz_address("0.0.0.0:9410") == ("127.0.0.1", 9410)
    assert healthz_address(":9411") == ("127.0.0.1", 9411)
    assert healthz_address("[::]:9412") == ("::1", 9412)
    assert healthz_address("[::1]:9413") == ("::1", 9413)
    assert healthz_address("10.1.2.3:9414") == ("10.1.2.3", 9414)
