"""Small shared helpers for tests and benchmarks: free loopback ports, file digests."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers started as subprocesses)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed (files here can be GiBs)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()
