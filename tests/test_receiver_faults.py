"""Fault injection: each fault is observed with a fixed seed, and the stored state stays consistent."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests
from helpers.receiver import ReceiverThread
from wodrop.receiver import FaultPlan, FaultSpecError, parse_faults

ALIGN = 262144
AUTH = {"Authorization": "Token k"}


def batch(rx: ReceiverThread) -> dict:
    r = requests.post(f"{rx.url}/v0.2/batches/", json={"filename": "b"}, headers=AUTH, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def put(url: str, start: int, data: bytes, total: int | str) -> requests.Response:
    rng = f"bytes {start}-{start + len(data) - 1}/{total}"
    return requests.put(url, data=data, headers={"Content-Range": rng}, timeout=30)


def offset(url: str) -> int:
    r = requests.put(url, headers={"Content-Range": "bytes */*"}, timeout=10)
    assert r.status_code == 308, r.status_code
    rng = r.headers.get("Range")
    return int(rng.removeprefix("bytes=0-")) + 1 if rng else 0


def part_size(rx: ReceiverThread, b: dict) -> int:
    p = rx.store / f"{b['batch_id']}.zip.part"
    return p.stat().st_size if p.exists() else 0


def test_grammar() -> None:
    spec = "status=503:0.1, api_status=500:5%,reset:0.05,partial:1,throttle=3s:0.2,expire:0,slow:0.5"
    faults = parse_faults(spec)
    assert [str(f) for f in faults] == [
        "status=503:0.1",
        "api_status=500:0.05",
        "reset:0.05",
        "partial:1",
        "throttle=3s:0.2",
        "expire:0",
        "slow=1s:0.5",
    ]
    assert parse_faults("") == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("foo:0.1", "unknown fault 'foo'"),
        ("reset", "missing rate"),
        ("reset:2", "rate out of range"),
        ("reset:x", "bad rate"),
        ("status:0.1", "needs an HTTP error code"),
        ("status=200:0.1", "needs an HTTP error code"),
        ("slow=soon:0.1", "bad duration"),
        ("partial=3:0.1", "takes no argument"),
    ],
)
def test_grammar_errors(spec: str, message: str) -> None:
    with pytest.raises(FaultSpecError, match=message):
        parse_faults(spec)


def test_same_seed_same_draws() -> None:
    spec = "status=503:0.3,reset:0.3"
    a, b = FaultPlan.parse(spec, 42), FaultPlan.parse(spec, 42)
    allowed = frozenset({"status", "reset"})
    assert [str(a.draw(allowed)) for _ in range(50)] == [str(b.draw(allowed)) for _ in range(50)]


def test_status_fault_saves_nothing(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path, faults="status=503:1", seed=1) as rx:
        b = batch(rx)
        r = put(b["upload_url"], 0, os.urandom(ALIGN), "*")
        assert r.status_code == 503
        assert part_size(rx, b) == 0 and rx.stats["bytes_saved"] == 0
        status_query = {"Content-Range": "bytes */*"}
        assert requests.put(b["upload_url"], headers=status_query, timeout=10).status_code == 503
        assert rx.stats["faults_injected"] == {"status": 2}


def test_api_status_fault(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path, faults="api_status=502:1", seed=1) as rx:
        r = requests.post(f"{rx.url}/v0.2/batches/", json={"filename": "b"}, headers=AUTH, timeout=10)
        assert r.status_code == 502
        assert rx.stats["faults_injected"] == {"api_status": 1} and rx.stats["sessions_created"] == 0


def test_reset_keeps_an_aligned_prefix(tmp_path: Path) -> None:
    data = os.urandom(16 * ALIGN)
    with ReceiverThread(tmp_path, faults="reset:1", seed=5) as rx:
        b = batch(rx)
        with pytest.raises(requests.ConnectionError):
            put(b["upload_url"], 0, data, len(data))
        got = offset(b["upload_url"])  # status queries are never reset
        assert got % ALIGN == 0 and got <= len(data) and got == part_size(rx, b)
        assert (rx.store / f"{b['batch_id']}.zip.part").read_bytes() == data[:got]
        assert got > 0, "seed 5 should cut the body after its first block"
        assert rx.stats["faults_injected"] == {"reset": 1}


def test_partial_save_answers_308_with_what_was_kept(tmp_path: Path) -> None:
    data = os.urandom(16 * ALIGN)
    with ReceiverThread(tmp_path, faults="partial:1", seed=3) as rx:
        b = batch(rx)
        r = put(b["upload_url"], 0, data, len(data))
        assert r.status_code == 308
        kept = int(r.headers["Range"].removeprefix("bytes=0-")) + 1 if "Range" in r.headers else 0
        assert kept % ALIGN == 0 and kept < len(data) and kept == part_size(rx, b) == offset(b["upload_url"])
        assert rx.stats["bytes_received"] == len(data)  # the whole body was read
        assert (rx.store / f"{b['batch_id']}.zip.part").read_bytes() == data[:kept]


def test_throttle_is_429_with_retry_after(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path, faults="throttle=3s:1", seed=1) as rx:
        b = batch(rx)
        r = put(b["upload_url"], 0, os.urandom(ALIGN), "*")
        assert r.status_code == 429 and r.headers["Retry-After"] == "3"
        assert part_size(rx, b) == 0


def test_expire_is_404_from_then_on(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path, faults="expire:1", seed=1) as rx:
        b = batch(rx)
        assert put(b["upload_url"], 0, os.urandom(ALIGN), "*").status_code == 404
    with ReceiverThread(tmp_path) as rx:  # no faults any more, and after a restart: still gone
        url = rx.url + "/upload/" + b["upload_url"].split("/upload/")[1]
        assert requests.put(url, headers={"Content-Range": "bytes */*"}, timeout=10).status_code == 404
        got = requests.get(f"{rx.url}/v0.2/batches/{b['batch_id']}/", headers=AUTH, timeout=10).json()
        assert got["status"] == "expired"


def test_slow_delays_the_answer(tmp_path: Path) -> None:
    with ReceiverThread(tmp_path, faults="slow=300ms:1", seed=1) as rx:
        b = batch(rx)
        t0 = time.monotonic()
        assert put(b["upload_url"], 0, os.urandom(ALIGN), "*").status_code == 308
        assert time.monotonic() - t0 >= 0.3
        assert rx.stats["faults_injected"] == {"slow": 1}


def test_a_careful_client_completes_through_every_fault(tmp_path: Path) -> None:
    """Mixed faults, fixed seed: a client that trusts only the server's Range still ends with
    byte-identical data, and every fault kind fired."""
    data = os.urandom(20 * ALIGN + 999)
    spec = "status=503:0.15,reset:0.15,partial:0.2,throttle=1s:0.1,slow=10ms:0.1"
    chunk = 4 * ALIGN
    with ReceiverThread(tmp_path, faults=spec, seed=11) as rx:
        b = batch(rx)
        url, pos, done = b["upload_url"], 0, False
        for _ in range(500):
            piece = data[pos : pos + chunk]
            try:
                r = put(url, pos, piece, len(data))
            except requests.ConnectionError:
                r = None
            if r is not None and r.status_code == 200:
                done = True
                break
            if r is None or r.status_code != 308:
                r = requests.put(url, headers={"Content-Range": f"bytes */{len(data)}"}, timeout=10)
                if r.status_code == 200:
                    done = True
                    break
                if r.status_code != 308:
                    continue  # the status query itself got a fault: ask again
            new = int(r.headers["Range"].removeprefix("bytes=0-")) + 1 if "Range" in r.headers else 0
            assert new % ALIGN == 0 and new >= pos  # the server never loses saved bytes
            pos = new
        assert done
        assert (rx.store / f"{b['batch_id']}.zip").read_bytes() == data
        assert set(rx.stats["faults_injected"]) == {"status", "reset", "partial", "throttle", "slow"}
