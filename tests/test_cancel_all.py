"""SIGTERM must end every stage even when one swallows its first cancellation (Python 3.11's
asyncio.wait_for can lose a cancel that lands as its inner future completes: gh-86296)."""

from __future__ import annotations

import asyncio

from wodrop.pipeline.service import cancel_all


async def test_a_task_that_swallows_its_first_cancel_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed == 0:  # what a lost cancellation looks like from outside: it goes on
                    swallowed += 1
                    continue
                raise

    async def plain() -> None:
        await asyncio.sleep(3600)

    tasks = [asyncio.create_task(stubborn(), name="stubborn"), asyncio.create_task(plain(), name="plain")]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all(tasks, every=0.05), timeout=10)
    assert all(t.done() for t in tasks) and swallowed == 1
