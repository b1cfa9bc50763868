"""docs/alerts.yaml: the rules parse, name only metrics the daemon exports, and (with promtool) pass
their unit tests in docs/alerts.test.yaml."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from wodrop import metrics

DOCS = Path(__file__).resolve().parent.parent / "docs"
RULES = DOCS / "alerts.yaml"
#: the series names each metric type exports (prometheus_client family name + suffix)
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
             "summary": ("_sum", "_count", "")}


def exported_names() -> set[str]:
    return {f.name + suffix for f in metrics.REGISTRY.collect() for suffix in _SUFFIXES[f.type]}


def rules() -> list[dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_rule_is_complete_and_names_only_exported_metrics() -> None:
    exported = exported_names()
    assert "wodrop_notifications_total" in exported and "wodrop_upload_duration_seconds_bucket" in exported
    used: set[str] = set()
    for rule in rules():
        assert re.fullmatch(r"Wodrop[A-Za-z]+", str(rule["alert"]))
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]  # type: ignore[index]
        assert rule["annotations"]["summary"], rule["alert"]  # type: ignore[index]
        names = set(re.findall(r"\bwodrop_[a-z_]+", str(rule["expr"])))
        assert names <= exported, f"{rule['alert']}: unknown metrics {names - exported}"
        used |= names
    assert "wodrop_notifications_total" in used


def test_every_alert_is_documented() -> None:
    text = (DOCS / "alerts.md").read_text(encoding="utf-8")
    for rule in rules():
        assert f"`{rule['alert']}`" in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    for args in (["check", "rules", RULES.name], ["test", "rules", "alerts.test.yaml"]):
        run = subprocess.run(["promtool", *args], cwd=DOCS, capture_output=True, text=True, timeout=120,
                             check=False)
        assert run.returncode == 0, run.stdout + run.stderr
