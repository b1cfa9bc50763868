"""A connection dropped in the middle of a streamed span: the receiver keeps what arrived (in 256 KiB
units, like GCS), and the client asks where it stands and sends only the rest."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from helpers.files import sha256_file
from wodrop.config import UploadConfig
from wodrop.upload import api
from wodrop.upload.protocol import RetryPolicy
from wodrop.upload.transport import make_session
from wodrop.upload.uploader import upload_archive
from yarl import URL

MiB = 2**20


class CuttingProxy:
    """TCP proxy to the receiver that cuts its first connection after ``cut`` bytes from the client."""

    def __init__(self, target_port: int, cut: int) -> None:
        self.target_port, self.cut = target_port, cut
        self.connections = 0
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> CuttingProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        limit = self.cut if self.connections == 1 else None
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, limit: int | None) -> None:
            sent = 0
            with contextlib.suppress(ConnectionError):
                while data := await r.read(256 * 1024):
                    if limit is not None and sent + len(data) >= limit:
                        w.write(data[: limit - sent])
                        await w.drain()
                        await asyncio.sleep(0.2)  # let the server read what it got, then drop
                        for writer in (cw, sw):
                            writer.transport.abort()
                        return
                    sent += len(data)
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(cr, sw, limit), pipe(sr, cw, None))


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(UploadConfig()) as http:
        yield http


async def test_a_dropped_span_is_resumed_from_what_the_server_kept(tmp_path: Path, rx_factory: Any) -> None:
    rx = rx_factory()
    size = 16 * MiB
    archive = tmp_path / "a.zip"
    archive.write_bytes(os.urandom(size))
    async with session() as http:
        _, url = await api.create_batch(http, rx.url, "local-receiver", "a")
        port = URL(rx.url).port
        assert port is not None
        async with CuttingProxy(port, cut=10 * MiB) as proxy:
            via_proxy = str(URL(url).with_port(proxy.port))
            await upload_archive(http, archive, via_proxy, size=size, chunk_size=size,
                                 retry=RetryPolicy(0.01, 0.05, 5))
            assert proxy.connections >= 2, "the first connection was cut"
    stats = rx.stats
    stored = next(rx.store.glob("*.zip"))
    assert sha256_file(stored) == sha256_file(archive)
    # what the server kept of the cut span was not sent again: about `size` bytes arrived in all,
    # not size + 10 MiB (a resend from byte 0)
    assert size <= stats["bytes_received"] < size + 1 * MiB, stats
