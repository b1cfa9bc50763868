"""The lifecycle table (wodrop.lifecycle) as the state DB enforces it: real SQLite files in tmp dirs.

The expected transitions are written out here from the diagrams in lifecycle.py, independently of the
product's table, so a change to either is caught. Every check of "nothing changed" reads the DB through a
second sqlite3 connection: what is committed, not what the writer's connection believes.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from wodrop.lifecycle import (
    BATCH_TRANSITIONS,
    WORK_ORDER_TRANSITIONS,
    BatchState,
    IllegalTransition,
    Origin,
    WorkOrderState,
)
from wodrop.state import StateDB

B, W = BatchState, WorkOrderState

#: (from, to) pairs the diagrams allow; everything else must raise
BATCH_ALLOWED: frozenset[tuple[BatchState, BatchState]] = frozenset({
    (B.OPEN, B.SEALED), (B.OPEN, B.DISCARDED),
    (B.SEALED, B.UPLOADING), (B.SEALED, B.DISCARDED), (B.SEALED, B.FAILED),
    (B.UPLOADING, B.UPLOADED), (B.UPLOADING, B.SEALED), (B.UPLOADING, B.UPLOADING),
    (B.UPLOADING, B.DISCARDED), (B.UPLOADING, B.FAILED),
    (B.UPLOADED, B.DONE),
})
WORK_ORDER_ALLOWED: frozenset[tuple[WorkOrderState, WorkOrderState]] = frozenset({
    (W.CLAIMED, W.BATCHED), (W.BATCHED, W.CLAIMED),
    (W.BATCHED, W.DONE), (W.CLAIMED, W.DONE),
    (W.CLAIMED, W.FAILED), (W.BATCHED, W.FAILED),
    (W.FAILED, W.RETRIED),
})

SIZE = 4096
URL = "http://127.0.0.1:9/upload?upload_id=lifecycle-test"


def _pairs(table: dict[Any, frozenset[Any]]) -> set[tuple[Any, Any]]:
    return {(src, to) for to, sources in table.items() for src in sources}


def test_product_table_is_the_documented_one() -> None:
    assert _pairs(BATCH_TRANSITIONS) == set(BATCH_ALLOWED)
    assert _pairs(WORK_ORDER_TRANSITIONS) == set(WORK_ORDER_ALLOWED)


# ---- reading the DB from outside -----------------------------------------------------------------


def snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of both tables, through a second (read-only) connection."""
    con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return {t: list(con.execute(f"SELECT * FROM {t} ORDER BY id")) for t in ("batches", "work_orders")}
    finally:
        con.close()


def states(path: Path, table: str) -> dict[int, str]:
    con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return {int(i): str(s) for i, s in con.execute(f"SELECT id, state FROM {table}")}
    finally:
        con.close()


# ---- the actions: one public StateDB method per target state (the private choke point where none) --

BatchAction = Callable[[StateDB, int], object]


def _seal(db: StateDB, bid: int) -> None:
    db.seal_batch(bid, size=SIZE, sha256="0" * 64, md5="bWQ1", crc32c="Y3Jj", work_order_count=1,
                  seal_reason="size")


BATCH_ACTIONS: dict[str, tuple[BatchState, BatchAction]] = {
    "seal_batch": (B.SEALED, _seal),
    "clear_session": (B.SEALED, lambda db, bid: db.clear_session(bid, "session gone (test)")),
    "set_session": (B.UPLOADING, lambda db, bid: db.set_session(bid, "remote-1", URL)),
    "mark_uploaded": (B.UPLOADED, lambda db, bid: db.mark_uploaded(bid, SIZE)),
    "finish_batch(done)": (B.DONE, lambda db, bid: db.finish_batch(bid, B.DONE)),
    "finish_batch(failed)": (B.FAILED, lambda db, bid: db.finish_batch(bid, B.FAILED, "refused (test)")),
    "discard_batch": (B.DISCARDED, lambda db, bid: db.discard_batch(bid, "damaged (test)")),
    # No public method moves a batch back to open; the one place states change must refuse it too.
    "_batch_to(open)": (B.OPEN, lambda db, bid: db._batch_to(bid, B.OPEN)),
}

#: how each batch state is reached from a new open batch (one work order batched in it)
BATCH_PATHS: dict[BatchState, list[str]] = {
    B.OPEN: [],
    B.SEALED: ["seal_batch"],
    B.UPLOADING: ["seal_batch", "set_session"],
    B.UPLOADED: ["seal_batch", "set_session", "mark_uploaded"],
    B.DONE: ["seal_batch", "set_session", "mark_uploaded", "finish_batch(done)"],
    B.FAILED: ["seal_batch", "set_session", "finish_batch(failed)"],
    B.DISCARDED: ["seal_batch", "discard_batch"],
}


def new_batch(db: StateDB, tmp: Path, state: BatchState, tag: str = "b") -> tuple[int, int]:
    """A batch in ``state``, reached by legal steps only, holding one work order; (batch id, wo id)."""
    bid = db.create_batch(f"batch-{tag}", tmp / "spool" / f"batch-{tag}.zip")
    wo = db.add_work_order(f"WO_{tag}", tmp / "processing" / f"WO_{tag}")
    db.assign_to_batch(wo, bid, 100, 1)
    for step in BATCH_PATHS[state]:
        BATCH_ACTIONS[step][1](db, bid)
    assert db.batch(bid).state == state
    return bid, wo


@pytest.fixture
def db(tmp_path: Path) -> Any:
    with StateDB(tmp_path / "wodrop.sqlite3") as d:
        yield d


@pytest.mark.parametrize("action", sorted(BATCH_ACTIONS))
@pytest.mark.parametrize("start", list(BatchState))
def test_every_batch_transition(db: StateDB, tmp_path: Path, start: BatchState, action: str) -> None:
    to, act = BATCH_ACTIONS[action]
    bid, wo = new_batch(db, tmp_path, start)
    other_bid, other_wo = new_batch(db, tmp_path, B.OPEN, tag="other")  # must never be touched
    before = snapshot(db.path)
    if (start, to) in BATCH_ALLOWED:
        act(db, bid)
        after = snapshot(db.path)
        assert states(db.path, "batches")[bid] == to
        row = db.batch(bid)
        if action == "set_session":
            assert (row.remote_batch_id, row.upload_url, row.committed_offset) == ("remote-1", URL, 0)
            assert row.sessions >= 1
        if action == "clear_session":
            assert (row.remote_batch_id, row.upload_url, row.committed_offset) == (None, None, 0)
        if action == "mark_uploaded":
            assert row.committed_offset == SIZE and row.uploaded_at is not None
        if to in (B.DONE, B.FAILED, B.DISCARDED):
            assert row.finished_at is not None
        wo_state = states(db.path, "work_orders")[wo]
        assert wo_state == (W.CLAIMED if to == B.DISCARDED else W.BATCHED)
        if to == B.DISCARDED:
            assert db.work_order(wo).batch_id is None
        # the other batch and its work order are exactly as they were
        assert [r for r in after["batches"] if r[0] == other_bid] == \
            [r for r in before["batches"] if r[0] == other_bid]
        assert [r for r in after["work_orders"] if r[0] == other_wo] == \
            [r for r in before["work_orders"] if r[0] == other_wo]
    else:
        with pytest.raises(IllegalTransition):
            act(db, bid)
        assert snapshot(db.path) == before, f"{start} -> {to} ({action}) was refused but changed the DB"
    # the writer's own connection is usable afterwards (no transaction left open)
    assert db.ok() and db.batch(other_bid).state == B.OPEN


WorkOrderAction = Callable[[StateDB, int, int], object]

WORK_ORDER_ACTIONS: dict[str, tuple[WorkOrderState, WorkOrderAction]] = {
    "assign_to_batch": (W.BATCHED, lambda db, wo, open_bid: db.assign_to_batch(wo, open_bid, 10, 1)),
    # claimed is reached from batched only through discard_batch (tested below); the choke point:
    "_work_order_to(claimed)": (W.CLAIMED, lambda db, wo, _b: db._work_order_to(wo, W.CLAIMED,
                                                                                batch_id=None)),
    "finish_work_order(done)": (W.DONE, lambda db, wo, _b: db.finish_work_order(wo, W.DONE, Path("/d/x"))),
    "finish_work_order(failed)": (W.FAILED, lambda db, wo, _b: db.finish_work_order(
        wo, W.FAILED, Path("/f/x"), stage="validation", errors=[{"code": "c", "file": None, "message": "m"}],
    )),
    "finish_work_order(retried)": (W.RETRIED, lambda db, wo, _b: db.finish_work_order(
        wo, W.RETRIED, Path("/inbox/x"))),
}

WORK_ORDER_PATHS: dict[WorkOrderState, list[str]] = {
    W.CLAIMED: [],
    W.BATCHED: ["assign_to_batch"],
    W.DONE: ["assign_to_batch", "finish_work_order(done)"],
    W.FAILED: ["finish_work_order(failed)"],
    W.RETRIED: ["finish_work_order(failed)", "finish_work_order(retried)"],
}


@pytest.mark.parametrize("action", sorted(WORK_ORDER_ACTIONS))
@pytest.mark.parametrize("start", list(WorkOrderState))
def test_every_work_order_transition(db: StateDB, tmp_path: Path, start: WorkOrderState, action: str) -> None:
    to, act = WORK_ORDER_ACTIONS[action]
    home = db.create_batch("batch-home", tmp_path / "spool" / "batch-home.zip")
    target = db.create_batch("batch-target", tmp_path / "spool" / "batch-target.zip")  # open: may take it
    wo = db.add_work_order("WO_1", tmp_path / "processing" / "WO_1")
    for step in WORK_ORDER_PATHS[start]:
        WORK_ORDER_ACTIONS[step][1](db, wo, home)
    assert db.work_order(wo).state == start
    before = snapshot(db.path)
    if (start, to) in WORK_ORDER_ALLOWED:
        act(db, wo, target)
        assert states(db.path, "work_orders")[wo] == to
        if to == W.BATCHED:
            assert db.work_order(wo).batch_id == target and db.batch(target).work_order_count == 1
    else:
        with pytest.raises(IllegalTransition):
            act(db, wo, target)
        assert snapshot(db.path) == before, f"{start} -> {to} ({action}) was refused but changed the DB"
    assert db.ok()


def test_assign_to_a_batch_that_is_not_open_changes_nothing(db: StateDB, tmp_path: Path) -> None:
    bid, _ = new_batch(db, tmp_path, B.SEALED)
    wo = db.add_work_order("WO_late", tmp_path / "processing" / "WO_late")
    before = snapshot(db.path)
    with pytest.raises(IllegalTransition):
        db.assign_to_batch(wo, bid, 10, 1)
    assert snapshot(db.path) == before  # the work order is still claimed, the count unchanged


def test_a_step_taken_twice_by_two_connections_fails_loudly(tmp_path: Path) -> None:
    """Two processes sharing one DB (the daemon and a stale task, or two racing workers)."""
    path = tmp_path / "wodrop.sqlite3"
    with StateDB(path) as one, StateDB(path) as two:
        bid, _ = new_batch(one, tmp_path, B.UPLOADED)
        one.finish_batch(bid, B.DONE)
        before = snapshot(path)
        with pytest.raises(IllegalTransition, match="it is done"):
            two.finish_batch(bid, B.FAILED, "late verdict")
        with pytest.raises(IllegalTransition):
            two.discard_batch(bid, "late discard")
        assert snapshot(path) == before


def test_create_batch_starts_open_or_sealed_only(db: StateDB, tmp_path: Path) -> None:
    for state in (B.OPEN, B.SEALED):
        db.create_batch(f"batch-{state}", tmp_path / f"{state}.zip", state=state)
    before = snapshot(db.path)
    for state in (B.UPLOADING, B.UPLOADED, B.DONE, B.FAILED, B.DISCARDED):
        with pytest.raises(IllegalTransition):
            db.create_batch(f"batch-{state}", tmp_path / f"{state}.zip", state=state)
    assert snapshot(db.path) == before


# ---- discard_batch: one transaction ---------------------------------------------------------------


def test_discard_batch_moves_the_batch_and_all_its_work_orders(db: StateDB, tmp_path: Path) -> None:
    bid = db.create_batch("batch-d", tmp_path / "spool" / "batch-d.zip")
    mine = [db.add_work_order(f"WO_{i}", tmp_path / "processing" / f"WO_{i}") for i in range(4)]
    for wo in mine:
        db.assign_to_batch(wo, bid, 10, 1)
    other_bid, other_wo = new_batch(db, tmp_path, B.OPEN, tag="other")
    _seal(db, bid)
    db.set_session(bid, "remote-d", URL)
    returned = db.discard_batch(bid, "archive damaged")
    assert sorted(returned) == sorted(mine)
    assert states(db.path, "batches") == {bid: B.DISCARDED, other_bid: B.OPEN}
    wo_states = states(db.path, "work_orders")
    assert {wo: wo_states[wo] for wo in mine} == dict.fromkeys(mine, W.CLAIMED)
    assert wo_states[other_wo] == W.BATCHED
    assert all(db.work_order(wo).batch_id is None for wo in mine)
    assert db.batch(bid).last_error == "archive damaged"


def test_discard_batch_raising_midway_leaves_nothing_half_done(db: StateDB, tmp_path: Path) -> None:
    """The batch is moved first, then each work order; when the third work order's move is refused
    (something made its row illegal within the transaction), the batch and the first two must be
    rolled back with it: no work order stranded ``batched`` in a discarded batch, none half-moved."""
    bid = db.create_batch("batch-half", tmp_path / "spool" / "batch-half.zip")
    wos = [db.add_work_order(f"WO_{i}", tmp_path / "processing" / f"WO_{i}") for i in range(4)]
    for wo in wos:
        db.assign_to_batch(wo, bid, 10, 1)
    _seal(db, bid)
    first, victim = wos[1], wos[2]
    # A real SQLite trigger (installed through another connection): the moment the second work order
    # goes back to claimed, the third is marked done, as if finished elsewhere; its _move must then
    # raise IllegalTransition inside discard_batch's transaction.
    con = sqlite3.connect(db.path)
    con.execute(
        f"CREATE TRIGGER make_illegal AFTER UPDATE OF state ON work_orders "
        f"WHEN NEW.id = {first} AND NEW.state = 'claimed' "
        f"BEGIN UPDATE work_orders SET state = 'done' WHERE id = {victim}; END"
    )
    con.commit()
    con.close()
    before = snapshot(db.path)
    with pytest.raises(IllegalTransition, match=f"work_orders {victim}"):
        db.discard_batch(bid, "damaged")
    assert snapshot(db.path) == before
    assert states(db.path, "batches")[bid] == B.SEALED
    assert set(states(db.path, "work_orders").values()) == {W.BATCHED}
    # and the writer's connection is not stuck in the failed transaction
    con = sqlite3.connect(db.path)
    con.execute("DROP TRIGGER make_illegal")
    con.commit()
    con.close()
    assert sorted(db.discard_batch(bid, "damaged")) == sorted(wos)
    assert states(db.path, "batches")[bid] == B.DISCARDED


# ---- other guarded updates ---------------------------------------------------------------------


@pytest.mark.parametrize("state", [B.OPEN, B.SEALED, B.UPLOADING, B.UPLOADED, B.DISCARDED])
@pytest.mark.parametrize("start", [B.SEALED, B.UPLOADING, B.UPLOADED])
def test_finish_batch_refuses_a_state_that_is_not_a_final_outcome(
    db: StateDB, tmp_path: Path, start: BatchState, state: BatchState
) -> None:
    # e.g. finish_batch(discarded) on a sealed batch: the table allows sealed -> discarded, but only
    # discard_batch may do it (it hands the work orders back)
    bid, _ = new_batch(db, tmp_path, start)
    before = snapshot(db.path)
    with pytest.raises(IllegalTransition, match="not a final outcome"):
        db.finish_batch(bid, state)
    assert snapshot(db.path) == before


@pytest.mark.parametrize("state", [W.CLAIMED, W.BATCHED])
def test_finish_work_order_refuses_a_state_that_is_not_final(
    db: StateDB, tmp_path: Path, state: WorkOrderState
) -> None:
    _, wo = new_batch(db, tmp_path, B.OPEN)
    before = snapshot(db.path)
    with pytest.raises(IllegalTransition, match="not a final outcome"):
        db.finish_work_order(wo, state, tmp_path / "x")
    assert snapshot(db.path) == before


@pytest.mark.parametrize("start", [s for s in BatchState if s != B.UPLOADING])
def test_set_offset_on_a_batch_that_is_not_uploading_raises(
    db: StateDB, tmp_path: Path, start: BatchState
) -> None:
    bid, _ = new_batch(db, tmp_path, start)
    before = snapshot(db.path)
    with pytest.raises(IllegalTransition):
        db.set_offset(bid, 1234)
    assert snapshot(db.path) == before


def test_set_offset_on_an_uploading_batch(db: StateDB, tmp_path: Path) -> None:
    bid, _ = new_batch(db, tmp_path, B.UPLOADING)
    db.set_offset(bid, 1234)
    assert db.batch(bid).committed_offset == 1234 and db.batch(bid).state == B.UPLOADING


def test_batches_filter_by_origin(db: StateDB, tmp_path: Path) -> None:
    d_open, _ = new_batch(db, tmp_path, B.OPEN, tag="d1")
    d_up, _ = new_batch(db, tmp_path, B.UPLOADING, tag="d2")
    d_done, _ = new_batch(db, tmp_path, B.DONE, tag="d3")
    def cli_batch(n: int) -> int:
        return db.create_batch(f"user-cli-{n}", tmp_path / f"user{n}.zip", origin=Origin.CLI, state=B.SEALED,
                               size=SIZE)

    c_sealed, c_up, c_done = cli_batch(1), cli_batch(2), cli_batch(3)
    db.set_session(c_up, "remote-c", URL)
    db.set_session(c_done, "remote-c3", URL)
    db.mark_uploaded(c_done, SIZE)
    db.finish_batch(c_done, B.DONE)

    def ids(rows: list[Any]) -> list[int]:
        return [r.id for r in rows]

    assert ids(db.batches(origin=Origin.DAEMON)) == [d_open, d_up, d_done]
    assert ids(db.batches(origin=Origin.CLI)) == [c_sealed, c_up, c_done]
    assert ids(db.batches()) == [d_open, d_up, d_done, c_sealed, c_up, c_done]
    active = (B.OPEN, B.SEALED, B.UPLOADING, B.UPLOADED)
    assert ids(db.batches(active, origin=Origin.DAEMON)) == [d_open, d_up]
    assert ids(db.batches(active, origin=Origin.CLI)) == [c_sealed, c_up]
    assert ids(db.batches([B.SEALED, B.UPLOADING])) == [d_up, c_sealed, c_up]
    assert ids(db.batches([B.DONE], origin=Origin.CLI)) == [c_done]
    assert all(r.origin == "cli" for r in db.batches(origin=Origin.CLI))


# ---- random walks: a model of the table against the DB -----------------------------------------


class LifecycleMachine(RuleBasedStateMachine):
    """Random sequences of every state-changing call on a few batches and work orders; the model
    (this file's tables) says which must succeed; after each step the committed DB equals the model."""

    batches = Bundle("batches")
    work_orders = Bundle("work_orders")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="wodrop-lifecycle-"))
        self.db = StateDB(self.tmp / "wodrop.sqlite3")
        self.batch_state: dict[int, BatchState] = {}
        self.wo_state: dict[int, WorkOrderState] = {}
        self.wo_batch: dict[int, int | None] = {}
        self.n = 0

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _name(self) -> str:
        self.n += 1
        return str(self.n)

    @rule(target=batches, sealed=st.booleans())
    def create_batch(self, sealed: bool) -> int:
        n = self._name()
        state = B.SEALED if sealed else B.OPEN
        bid = self.db.create_batch(f"batch-{n}", self.tmp / f"batch-{n}.zip", state=state, size=SIZE)
        self.batch_state[bid] = state
        return bid

    @rule(target=batches, n=st.integers(min_value=1, max_value=3))
    def packed_batch(self, n: int) -> int:
        """The common shape: an open batch holding a few work orders (so discards have some to hand back)."""
        bid = self.create_batch(sealed=False)
        for _ in range(n):
            wo = self.add_work_order()
            self.db.assign_to_batch(wo, bid, 1, 1)
            self.wo_state[wo], self.wo_batch[wo] = W.BATCHED, bid
        return bid

    @rule(target=batches, state=st.sampled_from(list(BatchState)))
    def batch_in_state(self, state: BatchState) -> int:
        """A packed batch walked to any state by legal steps (every state one rule away)."""
        bid = self.packed_batch(1)
        for step in BATCH_PATHS[state]:
            self.move_batch(bid, step)
        assert self.batch_state[bid] == state
        return bid

    @rule(target=work_orders)
    def add_work_order(self) -> int:
        n = self._name()
        wo = self.db.add_work_order(f"WO_{n}", self.tmp / f"WO_{n}")
        self.wo_state[wo], self.wo_batch[wo] = W.CLAIMED, None
        return wo

    def _attempt(self, legal: bool, call: Callable[[], object], what: str) -> bool:
        before = snapshot(self.db.path)
        if legal:
            call()
            return True
        with pytest.raises(IllegalTransition):
            call()
        assert snapshot(self.db.path) == before, f"refused {what} changed the DB"
        return False

    @rule(bid=batches, action=st.sampled_from(sorted(BATCH_ACTIONS)))
    def move_batch(self, bid: int, action: str) -> None:
        to, act = BATCH_ACTIONS[action]
        start = self.batch_state[bid]
        if self._attempt((start, to) in BATCH_ALLOWED, lambda: act(self.db, bid), f"{start}->{to}"):
            self.batch_state[bid] = to
            if to == B.DISCARDED:
                for wo, b in self.wo_batch.items():
                    if b == bid and self.wo_state[wo] == W.BATCHED:
                        self.wo_state[wo], self.wo_batch[wo] = W.CLAIMED, None

    @rule(bid=batches, pick=st.integers(min_value=0, max_value=len(BATCH_ACTIONS)))
    def advance_batch(self, bid: int, pick: int) -> None:
        """A step the model allows (so walks reach the deep states: uploading, uploaded, done)."""
        start = self.batch_state[bid]
        legal = [a for a in sorted(BATCH_ACTIONS) if (start, BATCH_ACTIONS[a][0]) in BATCH_ALLOWED]
        if legal:
            self.move_batch(bid, legal[pick % len(legal)])

    @rule(wo=work_orders, bid=batches)
    def assign(self, wo: int, bid: int) -> None:
        legal = (self.wo_state[wo], W.BATCHED) in WORK_ORDER_ALLOWED and self.batch_state[bid] == B.OPEN
        if self._attempt(legal, lambda: self.db.assign_to_batch(wo, bid, 1, 1), "assign"):
            self.wo_state[wo], self.wo_batch[wo] = W.BATCHED, bid

    @rule(wo=work_orders, to=st.sampled_from([W.DONE, W.FAILED, W.RETRIED, W.CLAIMED, W.BATCHED]))
    def finish_work_order(self, wo: int, to: WorkOrderState) -> None:
        # claimed/batched are not final outcomes: always refused by finish_work_order
        legal = (self.wo_state[wo], to) in WORK_ORDER_ALLOWED and to in (W.DONE, W.FAILED, W.RETRIED)
        if self._attempt(legal, lambda: self.db.finish_work_order(wo, to, self.tmp / "out"), f"wo->{to}"):
            self.wo_state[wo] = to

    @invariant()
    def committed_state_is_the_model(self) -> None:
        assert states(self.db.path, "batches") == {k: str(v) for k, v in self.batch_state.items()}
        assert states(self.db.path, "work_orders") == {k: str(v) for k, v in self.wo_state.items()}
        for bid in self.batch_state:
            mine = sorted(wo for wo, b in self.wo_batch.items()
                          if b == bid and self.wo_state[wo] == W.BATCHED)
            assert [r.id for r in self.db.work_orders(batch_id=bid, states=[W.BATCHED])] == mine


LifecycleMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLifecycleRandomWalks = LifecycleMachine.TestCase
