"""The lifecycle of batches and work orders: their states and the one table of allowed transitions.

In the spirit of h11's ``_state.py``: every state change in the state DB goes through
:meth:`wodrop.state.StateDB` methods that update ``WHERE id = ? AND state IN (<allowed from-states>)``
and raise :class:`IllegalTransition` when no row matched. So a step taken twice (a retry after a
crash, two tasks racing for one batch) fails loudly instead of silently moving a finished item back.

Batch::

    open ──seal──▶ sealed ──session──▶ uploading ──confirmed──▶ uploaded ──moves done──▶ done
      │              │  ▲                 │  │ (new session)
      │              │  └──session gone───┘  └──▶ uploading
      └──────────────┴──────────────┴──▶ discarded (archive dropped; its work orders go back to claimed)
                     └──────────────┴──▶ failed (the platform refused the batch for good)

Work order::

    claimed ──packed──▶ batched ──uploaded──▶ done
       │  ▲               │
       │  └──discarded────┘──refused──▶ failed ──wodrop retry──▶ retried
       ├──invalid──────────────────────▶ failed
       └──already delivered (ledger)───▶ done

``origin`` separates the daemon's batches from ``wodrop upload``'s one-shot uploads: the daemon only
ever resumes, finishes or discards batches whose origin is ``daemon``.

Follow-up (the platform's processing after the upload; its own column, beside the batch state)::

    (none) ──uploaded, followup on──▶ following ──▶ done | failed | timeout | lost

A batch starts ``following`` in the same transaction that marks it uploaded (so a crash cannot lose
the follow-up), and never goes back to it.
"""

from __future__ import annotations

from enum import StrEnum


class BatchState(StrEnum):
    OPEN = "open"  # archive being written in the spool
    SEALED = "sealed"  # complete and checksummed, no upload session yet
    UPLOADING = "uploading"  # a remote session is persisted; offsets are hints
    UPLOADED = "uploaded"  # the server confirmed every byte; moves to done/ pending
    DONE = "done"
    FAILED = "failed"  # the platform refused it for good
    DISCARDED = "discarded"  # archive dropped (partial, damaged, lost); work orders packed again


class WorkOrderState(StrEnum):
    CLAIMED = "claimed"  # in processing/, not in an archive
    BATCHED = "batched"  # in an archive (open, sealed or uploading)
    DONE = "done"
    FAILED = "failed"
    RETRIED = "retried"  # sent back to the inbox by ``wodrop retry``


class Origin(StrEnum):
    DAEMON = "daemon"  # packed by ``wodrop run``: its archive lives in the spool
    CLI = "cli"  # ``wodrop upload ARCHIVE``: a user's file, never touched by the daemon


class FollowupState(StrEnum):
    FOLLOWING = "following"  # uploaded: the platform's verdict is polled
    DONE = "done"  # the platform reported one of followup.done_statuses
    FAILED = "failed"  # ... one of followup.failed_statuses: it failed the batch as a whole
    TIMEOUT = "timeout"  # no final status within followup.timeout
    LOST = "lost"  # the platform answered 404 again and again: it no longer knows the batch


B, W, F = BatchState, WorkOrderState, FollowupState

#: to-state -> the states it may be reached from
BATCH_TRANSITIONS: dict[BatchState, frozenset[BatchState]] = {
    B.SEALED: frozenset({B.OPEN, B.UPLOADING}),  # from uploading: the session expired (404/410)
    B.UPLOADING: frozenset({B.SEALED, B.UPLOADING}),  # uploading -> uploading: a new session
    B.UPLOADED: frozenset({B.UPLOADING}),
    B.DONE: frozenset({B.UPLOADED}),
    B.FAILED: frozenset({B.SEALED, B.UPLOADING}),
    B.DISCARDED: frozenset({B.OPEN, B.SEALED, B.UPLOADING}),
}
WORK_ORDER_TRANSITIONS: dict[WorkOrderState, frozenset[WorkOrderState]] = {
    W.BATCHED: frozenset({W.CLAIMED}),
    W.CLAIMED: frozenset({W.BATCHED}),  # its batch was discarded: pack it again
    W.DONE: frozenset({W.BATCHED, W.CLAIMED}),  # from claimed: the ledger says it was delivered
    W.FAILED: frozenset({W.CLAIMED, W.BATCHED}),
    W.RETRIED: frozenset({W.FAILED}),
}

#: a batch is ``following`` from the moment it is marked uploaded (see ``StateDB.mark_uploaded``)
FOLLOWUP_TRANSITIONS: dict[FollowupState, frozenset[FollowupState]] = {
    F.DONE: frozenset({F.FOLLOWING}),
    F.FAILED: frozenset({F.FOLLOWING}),
    F.TIMEOUT: frozenset({F.FOLLOWING}),
    F.LOST: frozenset({F.FOLLOWING}),
}

#: batches whose archive is still in the spool (what recovery and the spool clean-up look at)
ACTIVE_BATCH_STATES = (B.OPEN, B.SEALED, B.UPLOADING, B.UPLOADED)
FINISHED_BATCH_STATES = (B.DONE, B.FAILED, B.DISCARDED)
#: a work order of these states counts as sent (or about to be) for ``format.on_duplicate: reject``
SENT_WORK_ORDER_STATES = (W.BATCHED, W.DONE)


class IllegalTransition(Exception):
    """A state change the lifecycle does not allow, or one whose row is no longer in a from-state."""


def batch_sources(to: BatchState) -> frozenset[BatchState]:
    try:
        return BATCH_TRANSITIONS[to]
    except KeyError:
        raise IllegalTransition(f"no batch ever moves to {to}") from None


def work_order_sources(to: WorkOrderState) -> frozenset[WorkOrderState]:
    try:
        return WORK_ORDER_TRANSITIONS[to]
    except KeyError:
        raise IllegalTransition(f"no work order ever moves to {to}") from None


def followup_sources(to: FollowupState) -> frozenset[FollowupState]:
    try:
        return FOLLOWUP_TRANSITIONS[to]
    except KeyError:
        raise IllegalTransition(f"no follow-up ever moves to {to}") from None
