"""Shared pytest set-up. Test helpers live in tests/helpers/ (importable as ``helpers.*``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# No test may reach the internet: make sure nothing picks up a proxy from the environment.
for _name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_name, None)
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
# Secrets and settings from the developer's shell must not leak into tests.
for _name in ("CUSTOMER_API_KEY", "DEEPOMATIC_API_KEY", "WODROP_CONFIG", "CREDENTIALS_DIRECTORY"):
    os.environ.pop(_name, None)
for _name in [n for n in os.environ if n.upper().startswith("WODROP__")]:  # config overrides
    os.environ.pop(_name, None)
# Test configs use sub-second watch.settle for speed (wodrop.config: tests only, floor 100ms); inherited by
# every wodrop subprocess. load_config(environ={...}) does not see it, so the 1s floor stays testable.
os.environ["WODROP_UNSAFE_SHORT_SETTLE"] = "1"


@pytest.fixture(autouse=True)
def _own_working_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own empty folder: the built-in config's folders are relative to the working
    directory (``./wodrop-data``), so a tree where someone tried ``wodrop run`` must not change results."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def rx_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start reference receivers (on their own threads) with any build_app options; stopped after."""
    from helpers.receiver import ReceiverThread

    started: list[ReceiverThread] = []

    def start(**kw: Any) -> ReceiverThread:
        rx = ReceiverThread(tmp_path / "received", **kw).__enter__()
        started.append(rx)
        return rx

    yield start
    for rx in started:
        rx.__exit__(None, None, None)
