"""The follow-up's pure parts, without a network: reading the platform's batch answer (status +
work-order errors, whatever it holds), the poll schedule, and the reference receiver's emulation."""

from __future__ import annotations

from typing import Any

import pytest
from wodrop.receiver.processing import stage, verdict
from wodrop.redact import register_secret
from wodrop.upload.processing import (
    MAX_PER_WORK_ORDER,
    MAX_POLL_DELAY,
    MESSAGE_MAX,
    MORE_ERRORS,
    UNKNOWN_SHOWN,
    next_poll_at,
    poll_delay,
    read_progress,
)
from wodrop.upload.protocol import UnusableAnswer

DONE = ["done", "finished"]
FAILED = ["failed", "error"]


def read(data: dict[str, Any], sent: frozenset[str] = frozenset({"WO_1", "WO_2", "WO_3"})) -> Any:
    return read_progress(data, DONE, FAILED, sent)


@pytest.mark.parametrize(("status", "outcome"), [
    ("pending", None), ("processing", None), ("Done", "done"), (" FINISHED ", "done"), ("failed", "failed"),
    ("Error", "failed"), ("uploaded", None), ("some-new-status", None),
])
def test_status_is_opaque_and_compared_without_case(status: str, outcome: str | None) -> None:
    p = read({"status": status})
    assert p.status == status.strip() and p.outcome == outcome
    assert p.work_orders == {} and p.batch_errors == [] and p.total == 0


@pytest.mark.parametrize(("status", "said"), [
    (None, "no status"), (3, "a status that is not a text (int)"),
    (1.5, "a status that is not a text (float)"),
    (True, "a status that is not a text (bool)"), (["done"], "a status that is not a text (list)"),
    ({"state": "done"}, "a status that is not a text (dict)"), ("", "an empty status"),
    ("   ", "an empty status"),
])
def test_a_status_that_is_not_a_text_is_no_reading(status: object, said: str) -> None:
    data = {} if status is None else {"status": status}
    with pytest.raises(UnusableAnswer) as e:
        read(data)
    assert str(e.value) == f"the platform API answered with {said}"


def test_errors_are_grouped_by_work_order_and_batch_level_ones_kept_apart() -> None:
    p = read({"status": "done", "errors": [
        {"work_order": "WO_1", "code": "missing_metadata_key", "file": "metadata.json",
         "message": "no 'site'"},
        {"work_order": "WO_1", "code": "blurry", "message": "A-1.jpg is blurry"},
        {"work_order_id": "WO_2", "code": 42, "detail": "numeric code"},
        {"work_order": None, "code": "late", "message": "the batch came late"},
        "a bare string",
        ["a", "list"],
        {"work_order": "WO_3"},
    ]})
    assert p.outcome == "done" and p.total == 7
    assert p.work_orders == {
        "WO_1": [{"code": "missing_metadata_key", "file": "metadata.json", "message": "no 'site'"},
                 {"code": "blurry", "file": None, "message": "A-1.jpg is blurry"}],
        "WO_2": [{"code": "42", "file": None, "message": "numeric code"}],
        "WO_3": [{"code": "platform_error", "file": None, "message": "no message given"}],
    }
    assert p.batch_errors == ["late: the batch came late", "platform_error: a bare string",
                              'platform_error: ["a", "list"]']


def test_values_that_are_not_texts_are_shown_as_json_never_as_python() -> None:
    p = read({"status": "done", "errors": [
        {"work_order": "WO_1", "code": True, "file": ["A-1.jpg", None], "message": ["list", {"k": None}]},
        {"work_order": "WO_1", "code": 7, "file": "", "message": {"why": "blurry", "ok": False}},
        {"work_order": "WO_1", "code": "", "message": 1.5},
    ]})
    assert p.work_orders["WO_1"] == [
        {"code": "true", "file": '["A-1.jpg", null]', "message": '["list", {"k": null}]'},
        {"code": "7", "file": None, "message": '{"why": "blurry", "ok": false}'},
        {"code": "platform_error", "file": None, "message": "1.5"},
    ]


@pytest.mark.parametrize("errors", [None, "oops", {"WO_1": ["x"]}, 7])
def test_an_errors_field_that_is_not_a_list_is_ignored(errors: object) -> None:
    p = read({"status": "processing", "errors": errors})
    assert p.work_orders == {} and p.batch_errors == [] and p.total == 0


def test_a_flood_about_one_work_order_never_crowds_out_another() -> None:
    """20,000 errors for WO_C first, then WO_D's one: each gets its report, WO_C's bounded and saying
    how many were left out."""
    entries: list[Any] = [{"work_order": "WO_C", "code": "c", "message": f"m{i}"} for i in range(20_000)]
    entries += [{"work_order": None, "code": "b", "message": "about the batch"}] * (MAX_PER_WORK_ORDER + 1)
    entries.append({"work_order": "WO_D", "code": "dark", "message": "A-1.jpg is dark"})
    p = read({"status": "done", "errors": entries}, frozenset({"WO_C", "WO_D"}))
    assert p.total == len(entries)
    assert p.work_orders["WO_D"] == [{"code": "dark", "file": None, "message": "A-1.jpg is dark"}]
    wo_c = p.work_orders["WO_C"]
    assert len(wo_c) == MAX_PER_WORK_ORDER + 1 and wo_c[MAX_PER_WORK_ORDER - 1]["message"] == "m99"
    assert wo_c[-1] == {"code": MORE_ERRORS, "file": None,
                        "message": "19,900 more errors the platform listed for this work order (the first "
                                   "100 are kept)"}
    assert len(p.batch_errors) == MAX_PER_WORK_ORDER + 1
    assert p.batch_errors[-1] == ("more_errors: 1 more error the platform listed about the batch (the first "
                                  "100 are kept)")
    flood = read({"status": "done", "errors": [{"work_order": "WO_1", "message": "x" * 100_000}]})
    assert len(flood.work_orders["WO_1"][0]["message"]) == MESSAGE_MAX


def test_ids_the_batch_did_not_hold_are_counted_and_a_few_shown_never_kept() -> None:
    names = [f"NOT_SENT_{i}" for i in range(UNKNOWN_SHOWN + 3)]
    p = read({"status": "done", "errors": [{"work_order": n, "code": "c", "message": "m"} for n in names * 2]
              + [{"work_order": "WO_2", "code": "c", "message": "m"}]})
    assert list(p.work_orders) == ["WO_2"]
    assert p.unknown == len(names) and p.unknown_shown == tuple(names[:UNKNOWN_SHOWN])


def test_platform_texts_are_redacted_and_cannot_drive_a_terminal() -> None:
    secret = "https://storage.example.test/upload/b-1?upload_id=FOLLOWUP-SECRET-123456"
    register_secret(secret)
    p = read({"status": "done\x1b[31m", "errors": [
        {"work_order": "WO_1", "code": "x\x07", "message": f"see {secret}\nthen\x1b[2J"}]})
    assert p.status == "done\\x1b[31m" and p.outcome is None  # an odd status is never final by accident
    err = p.work_orders["WO_1"][0]
    assert "FOLLOWUP-SECRET" not in str(err) and "\x1b" not in str(err) and "\x07" not in err["code"]


def test_work_order_ids_are_kept_as_written_only_to_be_compared() -> None:
    """Ids with separators or dot-dot are only matched against the ids sent, verbatim (tests/test_followup.py
    checks nothing is written for them)."""
    ids = ["../../etc/passwd", "WO_1/../../x", "..", "/abs", "WO\x00"]
    p = read({"status": "done", "errors": [{"work_order": i, "code": "c", "message": "m"} for i in ids]})
    assert p.work_orders == {} and p.unknown == len(ids)
    assert "WO\\x00" in p.unknown_shown  # shown escaped
    p = read({"status": "done", "errors": [{"work_order": i, "code": "c", "message": "m"} for i in ids]},
             frozenset(ids))
    assert sorted(p.work_orders) == sorted(ids)


def test_poll_delay_doubles_from_the_interval_up_to_a_cap() -> None:
    assert [poll_delay(n, 30) for n in range(7)] == [30, 60, 120, 240, 480, 600, 600]
    assert poll_delay(10_000, 30) == MAX_POLL_DELAY  # no overflow
    assert poll_delay(3, 3600) == 3600  # an interval longer than the cap is the cap
    assert poll_delay(0, 1) == 1


def test_next_poll_never_passes_the_deadline() -> None:
    assert next_poll_at(1000, 0, 30, deadline=5000) == 1030
    assert next_poll_at(1000, 5, 30, deadline=1100) == 1100  # the last poll is made at the deadline
    assert next_poll_at(1200, 0, 30, deadline=1100) == 1200  # past it: now (the poll then times out)


# ---- the reference receiver's emulation ---------------------------------------------------------------


def test_receiver_stages_pending_then_processing_then_over() -> None:
    assert [stage(100.0, 100.0 + t, 10.0) for t in (0, 4.9, 5, 9.9, 10, 1e6)] == \
        ["pending", "pending", "processing", "processing", None, None]
    assert stage(100.0, 100.0, 0.0) is None  # no processing time: processed at once
    assert stage(None, 0.0, 10.0) is None  # an upload from before completion times were kept


def test_receiver_verdict_from_the_errors_file() -> None:
    report = {"errors": [], "work_orders": [
        {"id": "WO_1", "valid": True, "errors": []},
        {"id": "WO_2", "valid": False, "errors": [{"code": "missing_metadata_key", "file": "metadata.json",
                                                   "message": "metadata.json has no key 'site'"}]}]}
    assert verdict(report) == ("done", [{"work_order": "WO_2", "code": "missing_metadata_key",
                                         "file": "metadata.json",
                                         "message": "metadata.json has no key 'site'"}])
    whole = {"errors": [{"code": "not_a_zip", "file": None, "message": "bad"}], "work_orders": []}
    assert verdict(whole) == ("failed", [{"work_order": None, "code": "not_a_zip", "file": None,
                                          "message": "bad"}])
