"""Keep a stage alive through one item's unexpected error: log it with its traceback, wait, go on.

Known failures are handled where they happen; this is for the unknown ones (a filesystem error on a
share, a bug), so that one bad item pauses briefly instead of taking the whole daemon down. The item
stays where it is on disk and in the DB, so retrying it later is safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from wodrop.logs import get_logger

log = get_logger("wodrop.guard")
RETRY_DELAY = 10.0


async def survive(stage: str, item: str, step: Awaitable[None], delay: float = RETRY_DELAY) -> bool:
    """Await ``step``; False (after logging and waiting ``delay``) when it raised."""
    try:
        await step
        return True
    except Exception:
        log.exception("stage_error", stage=stage, item=item, retry_in=delay)
        await asyncio.sleep(delay)
        return False
