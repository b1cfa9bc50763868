"""``wodrop healthcheck``: ask the running daemon's ``/healthz``, for a container's HEALTHCHECK or a probe.

It reads the same config as ``wodrop run`` (``-c``, ``$WODROP_CONFIG``, ``WODROP__*``), so it asks the
port the daemon really serves, whatever the config file or the environment says. An address that
means "every interface" is asked on loopback. Exit 0 healthy, else 1 with one line saying why; never
2 (Docker reserves it), so a config error is 1 too. With the status server off there is nothing to ask:
that is 1 as well, since a check that cannot look must not report health.

Only wodrop's own answer counts: a 200 without the :data:`HEALTH_HEADER` wodrop's ``/healthz`` sets is
something else on the port (another service, a proxy's page). ``--timeout`` bounds the whole check
(connect, send, every read), so a server that answers a byte at a time cannot hold it longer.
"""

from __future__ import annotations

import argparse
import http.client
import io
import socket
import sys
import time

from wodrop.cli import EXIT_FAILED, EXIT_OK, load_cli_config
from wodrop.config import ConfigError, parse_listen

#: set by wodrop's ``/healthz`` (``ok`` or ``stuck``, as its body says): how the check knows it is wodrop
HEALTH_HEADER = "X-Wodrop-Health"
#: the wildcard addresses a server binds to, and where a client on the same host reaches it
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}
_BODY_SHOWN = 200


def healthz_address(listen: str) -> tuple[str, int]:
    """(host, port) to ask for a server bound to ``listen`` (``0.0.0.0:9410`` -> 127.0.0.1, 9410)."""
    host, port = parse_listen(listen)
    return _LOOPBACK.get(host, host), port


def _first_line(body: bytes) -> str:
    line = body[:_BODY_SHOWN].decode("utf-8", "replace").strip().partition("\n")[0]
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in line)


class _Deadline:
    """A socket whose every send and receive waits only for what is left of the whole check's time."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)

    def sendall(self, data: bytes) -> None:
        self._arm()
        self.sock.sendall(data)

    def recv_into(self, buffer: memoryview) -> int:
        self._arm()
        return self.sock.recv_into(buffer)

    def makefile(self, _mode: str) -> io.BufferedReader:
        return io.BufferedReader(_Reader(self))

    def close(self) -> None:
        self.sock.close()


class _Reader(io.RawIOBase):
    """The file http.client reads the answer from: the deadline's socket underneath."""

    def __init__(self, sock: _Deadline) -> None:
        self.sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self.sock.recv_into(buffer)


class _Connection(http.client.HTTPConnection):
    """http.client's parsing on a socket that keeps to one deadline (its own timeout is per read)."""

    def __init__(self, host: str, port: int, deadline: float) -> None:
        super().__init__(host, port)
        self.deadline = deadline

    def connect(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock = socket.create_connection((self.host, self.port), timeout=left)
        self.sock = _Deadline(sock, self.deadline)


def probe(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """(healthy, one line saying why). No proxy and no redirect: only this server's own answer counts,
    and only as wodrop gives it (:data:`HEALTH_HEADER`). ``timeout`` bounds the whole exchange."""
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"
    conn = _Connection(host, port, time.monotonic() + timeout)
    try:
        conn.request("GET", "/healthz", headers={"Connection": "close"})
        answer = conn.getresponse()
        status, health, body = answer.status, answer.getheader(HEALTH_HEADER), answer.read(_BODY_SHOWN)
    except TimeoutError:
        return False, f"{url}: no answer within {timeout:g} s"
    except ConnectionRefusedError:
        return False, (f"{url}: connection refused: wodrop run is not running, or serves another "
                       "status.listen than this config says")
    except OSError as e:
        return False, f"{url}: {e.strerror or e}"
    except http.client.HTTPException as e:
        return False, f"{url}: not an HTTP answer ({type(e).__name__})"
    finally:
        conn.close()
    said = _first_line(body) or "(empty)"
    if health is None:
        return False, (f"{url} answered {status} without wodrop's {HEALTH_HEADER} header: something that "
                       f"is not wodrop listens on this port ({said})")
    if status == 200 and health == "ok":
        return True, f"{url}: {said}"
    return False, f"{url} answered {status}: {said}"


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_cli_config(args)
    except ConfigError as e:
        print(f"wodrop healthcheck: unhealthy: {e}", file=sys.stderr)
        return EXIT_FAILED
    if cfg.status.listen is None:
        print("wodrop healthcheck: cannot check: the status server is off (status.listen: off); turn it "
              "on, or turn the health check off (docker run --no-healthcheck)", file=sys.stderr)
        return EXIT_FAILED
    healthy, why = probe(*healthz_address(cfg.status.listen), args.timeout)
    if healthy:
        print(f"healthy: {why}")
        return EXIT_OK
    print(f"wodrop healthcheck: unhealthy: {why}", file=sys.stderr)
    return EXIT_FAILED
