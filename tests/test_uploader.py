"""``upload_archive`` and the batch API against the real reference receiver (127.0.0.1, real files)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers.files import sha256_file
from helpers.receiver import ReceiverThread
from wodrop.config import UploadConfig
from wodrop.upload import api
from wodrop.upload.bandwidth import Bandwidth
from wodrop.upload.protocol import (
    AuthRefused,
    RetryPolicy,
    SessionExpired,
    UploadGaveUp,
    UploadRejected,
)
from wodrop.upload.transport import make_session
from wodrop.upload.uploader import upload_archive

K = 262144
FAST = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_retries=30)


def make_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(UploadConfig()) as session:
        yield session


class Recorder:
    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.retries: list[tuple[str, float, str]] = []

    def on_offset(self, n: int) -> None:
        self.offsets.append(n)

    def on_retry(self, cause: str, delay: float, message: str) -> None:
        self.retries.append((cause, delay, message))

    @property
    def causes(self) -> set[str]:
        return {c for c, _, _ in self.retries}


async def upload(http: aiohttp.ClientSession, rx: ReceiverThread, archive: Path, *,
                 rec: Recorder | None = None, retry: RetryPolicy = FAST, **kw: Any) -> str:
    """Create a batch on ``rx`` and upload ``archive`` to it; returns the batch id."""
    batch_id, url = await api.create_batch(http, rx.url, "any-key-works", archive.stem)
    rec = rec or Recorder()
    await upload_archive(http, archive, url, size=archive.stat().st_size, chunk_size=kw.pop("chunk_size", K),
                         retry=retry, on_offset=rec.on_offset, on_retry=rec.on_retry, **kw)
    return batch_id


@pytest.mark.parametrize(
    "size", [1000, K, 7 * K + 5000, 3 * K + 1], ids=["under-a-chunk", "one-chunk", "many", "last-is-1-byte"]
)
async def test_happy_path_sizes(
    tmp_path: Path, rx_factory: Any, http: aiohttp.ClientSession, size: int
) -> None:
    rx = rx_factory()
    archive = make_file(tmp_path / "a.zip", size)
    rec = Recorder()
    batch_id = await upload(http, rx, archive, rec=rec)
    assert sha256_file(rx.store / f"{batch_id}.zip") == sha256_file(archive)
    expected = [min(n * K, size) for n in range(1, -(-size // K) + 1)]
    assert rec.offsets == expected and not rec.retries
    assert rx.stats["bytes_received"] == size  # nothing sent twice
    assert rx.stats["status_queries"] == 0  # never queried a fresh session


async def test_zero_byte_archive(tmp_path: Path, rx_factory: Any, http: aiohttp.ClientSession) -> None:
    rx = rx_factory()
    archive = make_file(tmp_path / "empty.zip", 0)
    batch_id, url = await api.create_batch(http, rx.url, "k" * 8, "empty")
    copy = await upload_archive(http, archive, url, size=0, chunk_size=K, retry=FAST)
    assert copy.size == 0
    assert rx.stats["requests"] == 2 and rx.stats["chunks"] + rx.stats["status_queries"] == 1
    assert rx.stats["uploads_completed"] == 1
    assert (rx.store / f"{batch_id}.zip").read_bytes() == b""


async def test_checksums_checked_against_the_servers_answer(
    tmp_path: Path, rx_factory: Any, http: aiohttp.ClientSession
) -> None:
    from wodrop.digest import Hashes

    rx = rx_factory()
    archive = make_file(tmp_path / "a.zip", 2 * K + 10)
    good = Hashes.of_file(archive).result()
    await upload(http, rx, archive, expected=good)
    other = make_file(tmp_path / "b.zip", 2 * K + 10)
    wrong = good  # the same size, other bytes: the server's md5/crc32c of b.zip differ
    with pytest.raises(UploadRejected, match="the server's copy differs"):
        await upload(http, rx, other, expected=wrong)


@pytest.mark.parametrize(
    ("faults", "cause", "seed"),
    [
        ("status=503:0.3", "server_error", 7),
        ("status=500:0.3", "server_error", 7),
        ("status=408:0.3", "timeout", 7),
        ("reset:0.3", "connection", 7),
        ("partial:0.5", "server_error", 7),  # a chunk of which nothing was saved
        ("throttle=1s:0.12", "throttled", 6),  # Retry-After is whole seconds: a seed with one hit
        ("slow=0.01s:0.5", None, 7),
    ],
)
async def test_each_fault_alone(
    tmp_path: Path, rx_factory: Any, http: aiohttp.ClientSession, faults: str, cause: str | None, seed: int
) -> None:
    rx = rx_factory(faults=faults, seed=seed)
    archive = make_file(tmp_path / "a.zip", 9 * K + 777)
    rec = Recorder()
    batch_id = await upload(http, rx, archive, rec=rec)
    assert sha256_file(rx.store / f"{batch_id}.zip") == sha256_file(archive)
    assert rx.stats["faults_injected"], "the fault never fired: the test proves nothing"
    if cause is not None:
        assert cause in rec.causes
    if cause == "throttled":  # Retry-After honoured, not the (0.05 s max) backoff
        assert next(d for c, d, _ in rec.retries if c == "throttled") == 1.0
    assert rec.offsets == sorted(rec.offsets) and rec.offsets[-1] == archive.stat().st_size


async def test_progress_is_reported_as_the_connection_takes_the_bytes(
    tmp_path: Path, rx_factory: Any, http: aiohttp.ClientSession
) -> None:
    """A stall check and a rate need to see data move within a span, not only when the server confirms
    the span at its end: under a limit, the offset every paced piece reaches is reported once written."""
    rx = rx_factory()
    size = 2 * K + 1000
    archive = make_file(tmp_path / "a.zip", size)
    events: list[tuple[str, int]] = []
    limiter = Bandwidth(512 * 1024, burst=64 * 1024)  # pieces of 64 KiB: 4 per 256 KiB span
    _, url = await api.create_batch(http, rx.url, "any-key-works", archive.stem)
    await upload_archive(http, archive, url, size=size, chunk_size=K, retry=FAST, limiter=limiter,
                         on_offset=lambda n: events.append(("confirmed", n)),
                         on_progress=lambda n: events.append(("reached", n)))
    assert events[:5] == [("reached", n * 64 * 1024) for n in (1, 2, 3, 4)] + [("confirmed", K)]
    reached = [n for kind, n in events if kind == "reached"]
    assert reached == sorted(reached) and reached[-1] == size and len(reached) == 9


async def test_progress_goes_back_when_bytes_are_sent_again(tmp_path: Path, rx_factory: Any,
                                                            http: aiohttp.ClientSession) -> None:
    """A chunk the server read but did not keep is sent again from the server's offset: the offsets
    reported say so (the stall check and the rate count only what goes further)."""
    rx = rx_factory(faults="partial:0.5", seed=7)
    archive = make_file(tmp_path / "a.zip", 9 * K + 777)
    reached: list[int] = []
    pieces = Bandwidth(64 * 1024 * 1024)  # a fast limit, only to send 64 KiB pieces
    await upload(http, rx, archive, limiter=pieces, on_progress=reached.append)
    assert rx.stats["faults_injected"], "the fault never fired: the test proves nothing"
    assert reached != sorted(reached) and max(reached) == reached[-1] == archive.stat().st_size


async def test_a_slow_server_times_out_and_is_retried(tmp_path: Path, rx_factory: Any) -> None:
    rx = rx_factory(faults="slow=0.5s:0.3", seed=3)
    archive = make_file(tmp_path / "a.zip", 6 * K)
    rec = Recorder()
    async with make_session(UploadConfig(read_timeout=0.2)) as http:
        batch_id = await upload(http, rx, archive, rec=rec)
    assert "timeout" in rec.causes
    assert sha256_file(rx.store / f"{batch_id}.zip") == sha256_file(archive)


async def test_mixed_faults_with_a_fixed_seed(
    tmp_path: Path, rx_factory: Any, http: aiohttp.ClientSession
) -> None:
    rx = rx_factory(faults="status=503:0.1,reset:0.1,partial:0.15,status=502:0.05,slow=0.02s:0.05", seed=42)
    archive = make_file(tmp_path / "a.zip", 40 * K + 12345)
    rec = Recorder()
    batch_id = await upload(http, rx, archive, rec=rec, chunk_size=2 * K)
    assert sha256_file(rx.store / f"{batch_id}.zip") == sha256_file(archive)
    assert {"server_error", "connection"} <= rec.causes
    assert len(rx.stats["faults_injected"]) >= 3


async def test_expired_session(tmp_path: Path, rx_factory: Any, http: aiohttp.ClientSession) -> None:
    rx = rx_factory(faults="expire:0.2", seed=5)
    archive = make_file(tmp_path / "a.zip", 20 * K)
    with pytest.raises(SessionExpired) as e:
        await upload(http, rx, archive)
    assert "upload_id" not in str(e.value)


async def test_rejection_carries_the_servers_detail(
    tmp_path: Path, rx_factory: Any, http: aiohttp.ClientSession
) -> None:
    rx = rx_factory(faults="status=413:1")
    archive = make_file(tmp_path / "a.zip", K)
    with pytest.raises(UploadRejected, match=r"HTTP 413: injected fault"):
        await upload(http, rx, archive)


async def test_gives_up_after_max_retries_without_progress(
    tmp_path: Path, rx_factory: Any, http: aiohttp.ClientSession
) -> None:
    rx = rx_factory(faults="status=503:1")
    archive = make_file(tmp_path / "a.zip", K)
    rec = Recorder()
    with pytest.raises(UploadGaveUp, match=r"HTTP 503.*gave up after 4 attempts"):
        await upload(http, rx, archive, rec=rec, retry=RetryPolicy(0.01, 0.02, max_retries=3))
    assert [c for c, _, _ in rec.retries] == ["server_error"] * 3
    assert all(0 <= d <= 0.02 for _, d, _ in rec.retries)


async def test_resume_follows_the_server_not_the_hint(
    tmp_path: Path, rx_factory: Any, http: aiohttp.ClientSession
) -> None:
    rx = rx_factory()
    size = 12 * K + 99
    archive = make_file(tmp_path / "a.zip", size)
    batch_id, url = await api.create_batch(http, rx.url, "k" * 10, "a")

    class Crash(Exception):
        pass

    def crash_after_4(n: int) -> None:
        if n >= 4 * K:
            raise Crash

    with pytest.raises(Crash):
        await upload_archive(http, archive, url, size=size, chunk_size=K, retry=FAST, on_offset=crash_after_4)
    for hint in (2 * K, 9 * K):  # behind and ahead of what the server holds: its Range wins
        rec = Recorder()
        await upload_archive(http, archive, url, size=size, chunk_size=K, retry=FAST, known_offset=hint,
                             on_offset=rec.on_offset)
        assert rec.offsets[0] in (4 * K, size)
    assert sha256_file(rx.store / f"{batch_id}.zip") == sha256_file(archive)
    assert rx.stats["bytes_received"] == size  # resumed, nothing resent
    assert rx.stats["status_queries"] == 2


async def test_bandwidth_limit_is_shared_and_respected(
    tmp_path: Path, rx_factory: Any, http: aiohttp.ClientSession
) -> None:
    rx = rx_factory()
    rate = 4 * 1024 * 1024
    limiter = Bandwidth(rate, burst=64 * 1024)
    files = [make_file(tmp_path / f"{i}.zip", 4 * K) for i in range(2)]
    t0 = time.monotonic()
    ids = await asyncio.gather(*(upload(http, rx, f, limiter=limiter) for f in files))
    elapsed = time.monotonic() - t0
    assert elapsed >= (8 * K - 64 * 1024) / rate * 0.95  # 2 MiB at 4 MiB/s: not faster than the cap
    for f, batch_id in zip(files, ids, strict=True):
        assert sha256_file(rx.store / f"{batch_id}.zip") == sha256_file(f)


def test_bandwidth_bucket_arithmetic() -> None:
    now = [0.0]
    bucket = Bandwidth(1000, burst=100, clock=lambda: now[0])
    assert bucket._debit(100) == 0  # the burst is there at once
    assert bucket._debit(50) == pytest.approx(0.05)  # then 1000 B/s
    now[0] = 1.0
    assert bucket._debit(100) == 0  # refilled, but never above the burst
    assert bucket._debit(100) == pytest.approx(0.1)


# ---- the batch API -------------------------------------------------------------------------------


async def test_api_create_and_get(rx_factory: Any, http: aiohttp.ClientSession) -> None:
    rx = rx_factory(api_key="right-key-123")
    batch_id, url = await api.create_batch(http, rx.url, "right-key-123", "batch-1")
    data = await api.get_batch(http, rx.url, "right-key-123", batch_id)
    assert data["upload_url"] == url and data["batch_id"] == batch_id and "status" in data


@pytest.mark.parametrize("key", ["wrong-key-456", ""])
async def test_api_bad_key(rx_factory: Any, http: aiohttp.ClientSession, key: str) -> None:
    rx = rx_factory(api_key="right-key-123")
    with pytest.raises(AuthRefused, match=r"refused the API key \(HTTP 40[13]\)") as e:
        await api.create_batch(http, rx.url, key, "batch-1")
    assert key == "" or key not in str(e.value)


async def test_api_transient_errors_are_retried(rx_factory: Any, http: aiohttp.ClientSession) -> None:
    rx = rx_factory(faults="api_status=503:0.5", seed=1)
    rec = Recorder()
    for _ in range(4):
        await api.create_batch(http, rx.url, "k" * 8, "b", retry=FAST, on_retry=rec.on_retry)
    assert rec.causes == {"server_error"}
