"""Per-item isolation: a failing item is parked with its own backoff, logged once with its traceback,
listed as stuck, and forgotten once it succeeds."""

from __future__ import annotations

import pytest
import structlog
from wodrop.pipeline.guard import Isolation, Parked


def test_parked_items_come_back_with_a_growing_delay() -> None:
    p: Parked[str] = Parked(first=2.0, cap=5.0)
    assert p.park("a", 0.0) == 2.0 and p.park("a", 0.0) == 4.0 and p.park("a", 0.0) == 5.0
    assert p.pop_due(1.9) is None and p.pop_due(2.0) == "a"
    p.succeeded("a")
    assert p.park("a", 10.0) == 2.0


async def test_an_item_that_keeps_failing_is_logged_once_with_its_traceback() -> None:
    stuck: dict[str, str] = {}
    guard: Isolation[int] = Isolation("validate", stuck, lambda i: f"work order {i}")

    async def fail() -> None:
        raise PermissionError(13, "Permission denied", "/share/failed/WO_1")

    async def ok() -> None:
        return None

    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            assert not await guard.run(1, fail())
    assert [e["event"] for e in logs] == ["item_failed", "item_failed_again", "item_failed_again"]
    assert stuck["work order 1"].startswith("validate: permission denied: /share/failed/WO_1 (trying again")
    assert await guard.run(1, ok())
    assert stuck == {}


@pytest.mark.parametrize("n", [1])
def test_keys_need_not_be_hashable(n: int) -> None:
    p: Parked[tuple[int, list[int]]] = Parked(key=lambda item: item[0])
    p.park((n, [1]), 0.0)
    assert p.pop_due(10.0) == (n, [1])
