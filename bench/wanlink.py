"""A WAN link in user space: a TCP proxy that adds a round-trip delay and caps the uplink's bandwidth.

    python bench/wanlink.py --listen 127.0.0.1:P --target 127.0.0.1:Q --rtt 40ms --mbit 400
    python bench/wanlink.py --self-check --rtt 40ms --mbit 400      # measure its own fidelity

For machines without ``tc netem``. What it emulates, per connection accepted on ``--listen`` (forwarded to
``--target``):

- **delay**: every byte, in either direction, leaves the proxy rtt/2 after it was read (a one-way
  delay; a round trip costs one rtt). Each direction is a queue of ``(release time, bytes)`` drained
  by one timer, so delay and throughput are independent (a full window is "on the wire" at once);
- **connection set-up**: the client's first byte is not let through before one rtt after the accept,
  as if a TCP handshake had taken place over the link;
- **bandwidth**: the client->server direction of *all* connections goes through one shared
  serializer (``Link``), a token bucket of ``--mbit`` with no burst: a piece of n bytes occupies
  the link for n/rate seconds, in arrival order, then travels rtt/2 (a FIFO bottleneck queue, as in
  a router). Server->client is uncapped unless ``--down-mbit`` is given (its own shared bucket;
  the link is full duplex).

What it does not emulate: loss, jitter, reordering, TCP's congestion window (slow start, recovery) and
receive windows; the proxy terminates TCP on both sides over loopback, so only the delays and the rate
above shape the traffic. It buffers at most ``cap`` bytes per direction and connection (default
max(8 MiB, 4 x bandwidth x rtt)) before it stops reading, which is what pushes back on a sender that
goes faster than the link.

Importable: ``WanLink(listen_port, target_host, target_port, rtt_ms, mbit)``, then ``await
link.start()`` / ``await link.stop()`` in a running event loop (or ``python bench/wanlink.py`` as a
process, which exits on SIGTERM/SIGINT, after ``--max-seconds``, or when its parent goes away).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

READ_SIZE = 256 * 1024  # bytes per recv(): few, big reads keep the proxy's CPU low
_EPS = 0.0005  # release what is due within half a millisecond in one go
_EOF = b""  # queue marker: half-close the destination (write_eof)
_CLOSE = None  # queue marker: close the destination once everything before it is written


class Link:
    """One direction of the bottleneck, shared by every connection: a zero-burst token bucket.

    ``depart(now, n)`` returns when the last of n bytes arriving at ``now`` has left the bottleneck
    (the link is busy until then): pieces are served in arrival order at exactly ``rate`` bytes/s."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.free_at = 0.0
        self.bytes = 0

    def depart(self, now: float, n: int) -> float:
        self.bytes += n
        if self.rate is None:
            return now
        self.free_at = max(now, self.free_at) + n / self.rate
        return self.free_at


class Pipe:
    """One direction of one connection: src's bytes, in order, each written to dst ``delay`` seconds
    after leaving ``link``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, link: Link, delay: float, cap: int,
                 not_before: float = 0.0) -> None:
        self.loop, self.link, self.delay, self.cap = loop, link, delay, cap
        self.not_before = not_before
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued = 0
        self.src_paused = False
        self.dst_paused = False
        self.dst_gone = False
        self.last_release = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # -- input side
    def feed(self, data: bytes) -> None:
        if self.dst_gone:
            return
        now = max(self.loop.time(), self.not_before)
        release = self.link.depart(now, len(data)) + self.delay
        self._push(release, data)
        self.queued += len(data)
        if self.queued >= self.cap and not self.src_paused and self.src is not None:
            self.src_paused = True
            self.src.pause_reading()

    def end(self, marker: bytes | None) -> None:
        """The source half-closed (``_EOF``) or went away (``_CLOSE``)."""
        self._push(max(self.loop.time() + self.delay, self.last_release), marker)

    def _push(self, release: float, item: bytes | None) -> None:
        release = max(release, self.last_release)  # never reorder
        self.last_release = release
        self.queue.append((release, item))
        self._arm()

    # -- output side
    def attach(self, dst: asyncio.Transport) -> None:
        self.dst = dst
        self._arm()

    def pause_writing(self) -> None:
        self.dst_paused = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def resume_writing(self) -> None:
        self.dst_paused = False
        self._release()

    def dst_lost(self) -> None:
        """The destination is gone: drop what was meant for it (and what its source sends from now on;
        the source itself is closed by the other direction's close marker, after its delay)."""
        self.dst_gone = True
        self.queue.clear()
        self.queued = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _arm(self) -> None:
        if self.timer is None and self.queue and self.dst is not None and not self.dst_paused \
                and not self.dst_gone:
            self.timer = self.loop.call_at(self.queue[0][0], self._release)

    def _release(self) -> None:
        self.timer = None
        dst = self.dst
        if dst is None or self.dst_gone:
            return
        due = self.loop.time() + _EPS
        while self.queue and self.queue[0][0] <= due and not self.dst_paused:
            _, item = self.queue.popleft()
            if item is _CLOSE:
                dst.close()  # after its buffer is written
                self.dst_gone = True
                self.queue.clear()
                return
            if item == _EOF:
                if dst.can_write_eof():
                    dst.write_eof()
                continue
            self.queued -= len(item)
            dst.write(item)  # may call pause_writing() synchronously
        if self.src_paused and self.queued <= self.cap // 2 and self.src is not None:
            self.src_paused = False
            self.src.resume_reading()
        self._arm()


class _End(asyncio.Protocol):
    """One socket of a proxied connection: reads into ``out`` (to the peer), is written by ``into``."""

    def __init__(self, out: Pipe, into: Pipe) -> None:
        self.out, self.into = out, into
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=2 * READ_SIZE, low=READ_SIZE)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.out.src = transport
        self.into.attach(transport)

    def data_received(self, data: bytes) -> None:
        self.out.feed(data)

    def eof_received(self) -> bool:
        self.out.end(_EOF)
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.end(_CLOSE)
        self.into.dst_lost()

    def pause_writing(self) -> None:
        self.into.pause_writing()

    def resume_writing(self) -> None:
        self.into.resume_writing()


class WanLink:
    """The proxy: ``await start()`` listens on ``listen_host:listen_port``; ``await stop()`` closes all."""

    def __init__(self, listen_port: int, target_host: str, target_port: int, rtt_ms: float,
                 mbit: float | None, *, listen_host: str = "127.0.0.1", down_mbit: float | None = None,
                 cap: int | None = None, handshake: bool = True) -> None:
        self.listen = (listen_host, listen_port)
        self.target = (target_host, target_port)
        self.rtt = rtt_ms / 1000.0
        self.up = Link(mbit * 1e6 / 8 if mbit else None)
        self.down = Link(down_mbit * 1e6 / 8 if down_mbit else None)
        fastest = max(self.up.rate or 0.0, self.down.rate or 0.0)
        self.cap = cap or max(8 << 20, int(4 * fastest * self.rtt))
        self.handshake = handshake
        self.connections = 0
        self.failed = 0
        self._server: asyncio.AbstractServer | None = None
        self._ends: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, *self.listen, backlog=128, reuse_address=True)
        if self.listen[1] == 0:
            self.listen = self._server.sockets[0].getsockname()[:2]

    def _accept(self) -> asyncio.Protocol:
        loop = asyncio.get_running_loop()
        self.connections += 1
        accepted = loop.time()
        up = Pipe(loop, self.up, self.rtt / 2, self.cap,
                  not_before=accepted + self.rtt if self.handshake else 0.0)
        down = Pipe(loop, self.down, self.rtt / 2, self.cap)
        client = _End(up, down)

        async def connect() -> None:
            try:
                transport, _ = await loop.create_connection(lambda: _End(down, up), *self.target)
            except OSError:
                self.failed += 1
                if client.transport is not None:
                    client.transport.abort()
                return
            self._ends.add(transport)

        task = loop.create_task(connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in self._ends:
            t.abort()

    def stats(self) -> dict[str, Any]:
        return {"connections": self.connections, "failed_connects": self.failed,
                "bytes_up": self.up.bytes, "bytes_down": self.down.bytes}


# ---- command line ---------------------------------------------------------------------------------


def parse_ms(value: str) -> float:
    """``40ms``, ``0.04s`` or a bare number of milliseconds -> milliseconds."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s)?\s*", value)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a delay like 40ms, not {value!r}")
    n = float(m[1])
    return n * 1000 if m[2] == "s" else n


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {value!r}")
    return host or "127.0.0.1", int(port)


async def serve(args: argparse.Namespace) -> None:
    (lhost, lport), (thost, tport) = args.listen, args.target
    link = WanLink(lport, thost, tport, args.rtt, args.mbit or None, listen_host=lhost,
                   down_mbit=args.down_mbit, cap=args.cap)
    await link.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    print(f"wanlink: {lhost}:{link.listen[1]} -> {thost}:{tport}, rtt {args.rtt:g} ms, "
          f"up {args.mbit or 'uncapped'} Mbit/s, down {args.down_mbit or 'uncapped'} Mbit/s, "
          f"cap {link.cap} B", file=sys.stderr, flush=True)
    deadline = loop.time() + args.max_seconds
    while not stop.is_set() and loop.time() < deadline and os.getppid() == parent:
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    await link.stop()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print("wanlink: " + json.dumps({**link.stats(), "cpu_s": round(ru.ru_utime + ru.ru_stime, 3)}),
          file=sys.stderr, flush=True)


# ---- self-check -----------------------------------------------------------------------------------

_BUF = 1 << 20


def _recv_exact(sock: socket.socket, n: int, buf: bytearray) -> None:
    view = memoryview(buf)
    while n > 0:
        got = sock.recv_into(view[: min(n, len(buf))])
        if not got:
            raise ConnectionError("closed")
        n -= got


def _sink(conn: socket.socket) -> None:
    """The far end: ``p`` -> echo one byte; ``u<8-byte n>`` -> read n bytes, answer ``k``;
    ``d<8-byte n>`` -> send n bytes."""
    buf = bytearray(_BUF)
    payload = bytes(_BUF)
    with conn:
        while True:
            cmd = conn.recv(1)
            if not cmd:
                return
            if cmd == b"p":
                conn.sendall(b"p")
                continue
            head = bytearray(8)
            _recv_exact(conn, 8, head)
            n = int.from_bytes(head, "big")
            if cmd == b"u":
                _recv_exact(conn, n, buf)
                conn.sendall(b"k")
            else:
                while n > 0:
                    conn.sendall(payload[: min(n, _BUF)])
                    n -= min(n, _BUF)


def _serve_sink(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_sink, args=(conn,), daemon=True).start()


def _upload(port: int, n: int, out: list[float]) -> None:
    """Connect, then send n bytes and wait for the sink's ack; seconds from the first byte to the ack."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"p")
        _recv_exact(s, 1, bytearray(1))  # the connection is up (handshake emulation paid)
        payload = bytes(_BUF)
        t0 = time.perf_counter()
        s.sendall(b"u" + n.to_bytes(8, "big"))
        left = n
        while left > 0:
            s.sendall(payload[: min(left, _BUF)])
            left -= min(left, _BUF)
        _recv_exact(s, 1, bytearray(1))
        out.append(time.perf_counter() - t0)


def self_check(args: argparse.Namespace) -> None:
    rtt = args.rtt / 1000
    rate = args.mbit * 1e6 / 8
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_serve_sink, args=(listener,), daemon=True).start()
    sink_port = listener.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, __file__, "--listen", f"127.0.0.1:{port}", "--target", f"127.0.0.1:{sink_port}",
           "--rtt", f"{args.rtt}ms", "--mbit", str(args.mbit), "--max-seconds", "300"]
    if args.down_mbit:
        cmd += ["--down-mbit", str(args.down_mbit)]
    proxy = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    results: dict[str, Any] = {"rtt_ms": args.rtt, "mbit": args.mbit}
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        # 1. connect + first exchange (expect 2 rtt: emulated handshake + one round trip)
        t0 = time.perf_counter()
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        one = bytearray(1)
        s.sendall(b"p")
        _recv_exact(s, 1, one)
        results["connect_and_first_ping_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        # 2. ping-pong on the open connection (expect rtt)
        pings = []
        for _ in range(args.pings):
            t0 = time.perf_counter()
            s.sendall(b"p")
            _recv_exact(s, 1, one)
            pings.append((time.perf_counter() - t0) * 1000)
        results["ping_ms_median"] = round(statistics.median(pings), 2)
        results["ping_ms_min_max"] = [round(min(pings), 2), round(max(pings), 2)]
        # 3. bulk upload on one connection (expect bytes/rate + rtt)
        n = args.bulk_mib << 20
        ups: list[float] = []
        for _ in range(args.bulk_rounds):
            _upload(port, n, ups)
        t_up = statistics.median(ups)
        results["bulk_up_s"] = [round(x, 3) for x in ups]
        results["bulk_up_expected_s"] = round(n / rate + rtt, 3)
        results["bulk_up_mbit_effective"] = round(n * 8 / (t_up - rtt) / 1e6, 1)
        # 4. two connections at once share the uplink (expect 2 x bytes/rate + rtt for the pair)
        both: list[float] = []
        t0 = time.perf_counter()
        threads = [threading.Thread(target=_upload, args=(port, n // 2, both)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        results["shared_2x_half_s"] = [round(x, 3) for x in both]
        results["shared_expected_s"] = round(n / rate + rtt, 3)
        # 5. bulk download (uncapped unless --down-mbit): how fast the proxy itself can forward
        t0 = time.perf_counter()
        s.sendall(b"d" + n.to_bytes(8, "big"))
        _recv_exact(s, n, bytearray(_BUF))
        t_down = time.perf_counter() - t0
        results["bulk_down_s"] = round(t_down, 3)
        results["bulk_down_mbit"] = round(n * 8 / (t_down - rtt) / 1e6, 1)
        s.close()
    finally:
        proxy.send_signal(signal.SIGTERM)
        try:
            _, err = proxy.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proxy.kill()
            _, err = proxy.communicate()
        listener.close()
    stats_line = [x for x in err.splitlines() if x.startswith("wanlink: {")]
    if stats_line:
        stats = json.loads(stats_line[-1].removeprefix("wanlink: "))
        moved = stats["bytes_up"] + stats["bytes_down"]
        results["proxy_cpu_s"] = stats["cpu_s"]
        results["proxy_cpu_s_per_gib"] = round(stats["cpu_s"] / (moved / 2**30), 3)
    print(json.dumps(results, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", type=parse_hostport, help="HOST:PORT to accept on")
    ap.add_argument("--target", type=parse_hostport, help="HOST:PORT to forward to")
    ap.add_argument("--rtt", type=parse_ms, default=40.0, help="round-trip delay (default 40ms)")
    ap.add_argument("--mbit", type=float, default=400.0,
                    help="client->server bandwidth in Mbit/s, shared by all connections (0: uncapped)")
    ap.add_argument("--down-mbit", type=float, default=None, help="server->client cap (default uncapped)")
    ap.add_argument("--cap", type=int, default=None, help="bytes buffered per direction and connection")
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long (default 1h)")
    ap.add_argument("--self-check", action="store_true", help="measure delay and rate through a proxy")
    ap.add_argument("--bulk-mib", type=int, default=128, help="self-check: bulk transfer size")
    ap.add_argument("--bulk-rounds", type=int, default=3, help="self-check: bulk uploads")
    ap.add_argument("--pings", type=int, default=20, help="self-check: ping-pongs")
    args = ap.parse_args(argv)
    if args.self_check:
        self_check(args)
        return
    if args.listen is None or args.target is None:
        ap.error("--listen and --target are required (or --self-check)")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
