"""Why is a folder still in the inbox? One entry per unclaimed folder, with a reason in words.

The intake fills :attr:`wodrop.runtime.Runtime.waiting`; ``/api/status`` (``inbox.waiting``), the
status page and ``wodrop status`` show it, so an operator can tell "still copying" from "stuck".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WaitingFolder:
    """A folder in the inbox that is not claimed yet."""

    name: str  # as shown to people: a name that is not valid UTF-8 is shown with \\x escapes
    since: float  # unix time the daemon first saw it
    reason: str  # why it is held, in words (what to fix, when a person must act)
