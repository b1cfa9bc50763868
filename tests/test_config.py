"""Config loading: units, env overrides, field-precise errors, and config/example.yaml kept in sync."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from wodrop.config import UNSAFE_SHORT_SETTLE_ENV, Config, ConfigError, WatchConfig, load_config
from wodrop.units import parse_duration, parse_size

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "example.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wodrop.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    cfg = load_config(None, environ={})
    assert cfg == Config()
    assert cfg.batch.max_bytes == 128 * 1024**2 and cfg.upload.read_timeout == 300.0


def test_sizes_and_durations(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
batch: {max_bytes: 2GB, min_free_space: 1.5GiB, max_age: 5m}
upload: {chunk_size: 256KiB, max_bandwidth: 2MB, read_timeout: 1h, connect_timeout: 500ms}
watch: {settle: 30s, poll_interval: 2}
"""), environ={})
    assert cfg.batch.max_bytes == 2_000_000_000
    assert cfg.batch.min_free_space == int(1.5 * 1024**3)
    assert cfg.batch.max_age == 300.0
    assert (cfg.upload.chunk_size, cfg.upload.max_bandwidth) == (262144, 2_000_000)
    assert (cfg.upload.read_timeout, cfg.upload.connect_timeout) == (3600.0, 0.5)
    assert (cfg.watch.settle, cfg.watch.poll_interval) == (30.0, 2.0)


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "upload: {concurrency: 3}\nformat: {task_groups: [A]}\n")
    cfg = load_config(path, environ={
        "WODROP__UPLOAD__CONCURRENCY": "5",
        "WODROP__BATCH__MAX_BYTES": "1GiB",
        "WODROP__FORMAT__TASK_GROUPS": "[A, B]",
        "WODROP__WATCH__READY_MARKER": ".ready",
        "WODROP__API__URL": "",
        "UNRELATED": "x",
    })
    assert cfg.upload.concurrency == 5
    assert cfg.batch.max_bytes == 1024**3
    assert cfg.format.task_groups == ["A", "B"]
    assert cfg.watch.ready_marker == ".ready"
    assert cfg.api.url is None


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "paths: {inbox: drop, done: /srv/done}\n"), environ={})
    assert cfg.paths.inbox == tmp_path / "drop"
    assert cfg.paths.done == Path("/srv/done")
    assert cfg.paths.db == tmp_path / "wodrop-data" / "state" / "wodrop.sqlite3"


@pytest.mark.parametrize(("text", "environ", "message"), [
    ("batch: {max_bytes: lots}", {}, "batch.max_bytes: expected a size like 512MiB"),
    ("watch: {settle: soon}", {}, "watch.settle: expected a duration like 30s or 5m"),
    ("upload: {chunk_size: 100000}", {}, "upload.chunk_size: expected a multiple of 256KiB"),
    ("upload: {concurrency: 0}", {}, "upload.concurrency:"),
    ("format: {image_check: pixels}", {}, "format.image_check: expected 'markers' or 'decode'"),
    ("format: {work_order_id_pattern: '[a-'}", {}, "format.work_order_id_pattern: expected a regular exp"),
    ("batch: {max_byte: 1GiB}", {}, "batch.max_byte: unknown key"),
    ("uploads: {concurrency: 2}", {}, "uploads: unknown key"),
    ("", {"WODROP__BATCH__MAX_BYTES": "huge"}, "batch.max_bytes: expected a size like 512MiB"),
    ("", {"WODROP__CONCURRENCY": "2"}, "WODROP__CONCURRENCY: expected WODROP__SECTION__KEY"),
    ("batch: [1, 2]", {}, "batch:"),
    ("- just\n- a list", {}, "expected a mapping of sections"),
    ("batch:\n  max_bytes: [\n", {}, "line"),
])
def test_field_precise_errors(tmp_path: Path, text: str, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), environ=environ)
    assert message in str(exc.value)


def _unit_fields(parser: object) -> list[str]:
    """``section.key`` of every config field parsed with ``parser`` (so a new one is covered too)."""
    out = []
    for section, info in Config.model_fields.items():
        ann = info.annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            continue
        for key, field in ann.model_fields.items():
            # Size/Duration, or Size | None (whose Annotated metadata stays inside the union)
            metadata = [*field.metadata, *(m for arg in typing.get_args(field.annotation)
                                           for m in getattr(arg, "__metadata__", ()))]
            if any(getattr(m, "func", None) is parser for m in metadata):
                out.append(f"{section}.{key}")
    return out


DURATIONS = _unit_fields(parse_duration)
SIZES = _unit_fields(parse_size)


def test_the_unit_fields_are_found() -> None:
    assert {"watch.settle", "batch.max_age", "upload.read_timeout", "upload.retry_max_delay"} <= {*DURATIONS}
    assert {"batch.max_bytes", "batch.min_free_space", "upload.max_bandwidth"} <= set(SIZES)


def _one(field: str, value: str) -> str:
    section, key = field.split(".")
    return f"{section}: {{{key}: {value}}}\n"


@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", "+.inf", "1" + "0" * 400,
                                   "9" * 400 + "s"])
@pytest.mark.parametrize("field", DURATIONS)
def test_durations_must_be_finite(tmp_path: Path, field: str, value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, _one(field, value)), environ={})
    assert f"{field}: expected a finite duration like 30s" in str(exc.value)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1" + "0" * 400, "9" * 400 + "GiB",
                                   str(2**63), "8388608TiB"])
@pytest.mark.parametrize("field", SIZES)
def test_sizes_must_be_finite(tmp_path: Path, field: str, value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, _one(field, value)), environ={})
    assert f"{field}: expected a finite size like 512MiB" in str(exc.value)


def test_non_finite_env_overrides_are_refused_too() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, environ={"WODROP__WATCH__SETTLE": ".nan", "WODROP__BATCH__MAX_BYTES": ".inf"})
    assert "watch.settle: expected a finite duration like 30s" in str(exc.value)
    assert "batch.max_bytes: expected a finite size like 512MiB" in str(exc.value)


@pytest.mark.parametrize("settle", ["0", "0s", "0.5", "999ms", "0.99s"])
def test_settle_below_one_second_is_refused(tmp_path: Path, settle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, f"watch: {{settle: {settle}}}\n"), environ={})
    assert "watch.settle: at least 1s, or a half-copied folder could be taken" in str(exc.value)
    with pytest.raises(ConfigError, match=r"watch\.settle: at least 1s"):
        load_config(None, environ={"WODROP__WATCH__SETTLE": settle})


def test_settle_of_one_second_is_fine(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "watch: {settle: 1s}\n"), environ={}).watch.settle == 1.0


def test_unsafe_short_settle_is_for_tests_and_still_has_a_floor(tmp_path: Path) -> None:
    path = write(tmp_path, "watch: {settle: 0.3s}\n")
    assert load_config(path, environ={UNSAFE_SHORT_SETTLE_ENV: "1"}).watch.settle == 0.3
    for off in ({}, {UNSAFE_SHORT_SETTLE_ENV: ""}, {UNSAFE_SHORT_SETTLE_ENV: "0"}):
        with pytest.raises(ConfigError, match=r"watch\.settle: at least 1s"):
            load_config(path, environ=off)  # conftest sets it in os.environ: the given environ wins
    unsafe = {UNSAFE_SHORT_SETTLE_ENV: "1"}
    for value, message in (("0", "at least 100ms, even with"), ("50ms", "at least 100ms"),
                           (".nan", "expected a finite duration")):
        with pytest.raises(ConfigError, match=rf"watch\.settle: {message}"):
            load_config(write(tmp_path, f"watch: {{settle: {value}}}\n"), environ=unsafe)


def test_a_model_built_in_code_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSAFE_SHORT_SETTLE_ENV, raising=False)
    with pytest.raises(ValidationError, match="at least 1s"):
        WatchConfig(settle=0)
    with pytest.raises(ValidationError, match="finite"):
        WatchConfig(settle=float("nan"))
    monkeypatch.setenv(UNSAFE_SHORT_SETTLE_ENV, "1")
    assert WatchConfig(settle=0.2).settle == 0.2


@pytest.mark.parametrize(("text", "message"), [
    ("watch: {poll_interval: 0}", "watch.poll_interval: at least 100ms"),
    ("watch: {poll_interval: 50ms}", "watch.poll_interval: at least 100ms"),
    ("watch: {rescan_interval: 0}", "watch.rescan_interval: at least 1s"),
    ("watch: {rescan_interval: 500ms}", "watch.rescan_interval: at least 1s"),
    ("batch: {max_age: 0}", "batch.max_age: at least 100ms"),
    ("upload: {connect_timeout: 0}", "upload.connect_timeout: at least 100ms: 0 would turn the timeout off"),
    ("upload: {read_timeout: 0s}", "upload.read_timeout: at least 100ms: 0 would turn the timeout off"),
    ("upload: {retry_initial_delay: 0}", "upload.retry_initial_delay: at least 10ms"),
    ("upload: {retry_max_delay: 0ms}", "upload.retry_max_delay: at least 10ms"),
    ("upload: {retry_max_delay: -1}", "upload.retry_max_delay: expected a duration like 30s or 5m, not a"),
])
def test_durations_where_zero_is_harmful_have_a_floor(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), environ={UNSAFE_SHORT_SETTLE_ENV: "1"})
    assert message in str(exc.value)


def test_the_floors_themselves_are_accepted(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
watch: {settle: 1s, poll_interval: 100ms, rescan_interval: 1s}
batch: {max_age: 100ms}
upload: {connect_timeout: 100ms, read_timeout: 0.1, retry_initial_delay: 10ms, retry_max_delay: 10ms}
"""), environ={})
    assert (cfg.watch.poll_interval, cfg.batch.max_age, cfg.upload.retry_max_delay) == (0.1, 0.1, 0.01)


def test_every_problem_is_listed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "batch: {max_bytes: x, max_age: y}\nlog: {level: loud}\n"), environ={})
    lines = str(exc.value).splitlines()
    assert len(lines) == 4 and lines[0].endswith("invalid configuration")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Path("/nonexistent/wodrop.yaml"), environ={})


def test_example_yaml_equals_the_defaults() -> None:
    cfg = load_config(EXAMPLE, environ={})
    base = EXAMPLE.parent
    defaults = Config()
    assert cfg.paths.model_dump() == {k: base / v for k, v in defaults.paths.model_dump().items()}
    for section in _fields(Config):
        if section != "paths":
            assert getattr(cfg, section) == getattr(defaults, section), section


def _fields(model: type[BaseModel]) -> dict[str, list[str]]:
    out = {}
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        ann = info.annotation
        assert isinstance(ann, type) and issubclass(ann, BaseModel), name
        out[name] = list(ann.model_fields)
    return out


def test_example_yaml_documents_every_key_with_a_comment() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    expected = _fields(Config)
    assert {s: list(keys) for s, keys in doc.items()} == expected  # every key, in the model's order
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^  (\w+):", line)
        if m:
            assert lines[i - 1].strip().startswith("#"), f"{m.group(1)} needs a one-line comment above it"


def test_cli_config_error_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = write(tmp_path, "batch:\n  max_bytes: lots\n")
    (tmp_path / "WO_1").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WODROP")}
    env["PYTHONPATH"] = str(REPO)

    def wodrop(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "wodrop", *args], cwd=tmp_path, env={**env, **extra},
                              capture_output=True, text=True, timeout=60, check=False)

    for run in (
        wodrop("validate", "-c", str(bad), "WO_1"),
        wodrop("validate", "WO_1", WODROP_CONFIG=str(bad)),
        wodrop("pack", "WO_1", "-o", "x.zip", WODROP__BATCH__MAX_BYTES="lots"),
    ):
        assert run.returncode == 2, run.stderr
        assert "batch.max_bytes: expected a size like 512MiB" in run.stderr
        assert "Traceback" not in run.stderr and run.stdout == ""
    assert not (tmp_path / "x.zip").exists()


def test_api_url_with_a_password_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "api: {url: 'https://user:S3CRETPW@api.example.test/'}\n"), environ={})
    assert "api.url" in str(e.value) and "user or password" in str(e.value)
    assert "S3CRETPW" not in str(e.value)


@pytest.mark.parametrize(("url", "why"), [
    ("https://api.example.test:99999/", "port out of range"),
    ("https://[::1/", "invalid IPv6 URL"),
    ("https://:443/", "no host name"),
])
def test_an_api_url_that_cannot_be_used_is_refused(tmp_path: Path, url: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, f"api: {{url: '{url}'}}\n"), environ={})
    assert "api.url: expected a URL like https://api.<site-id>" in str(e.value) and why in str(e.value)


def test_status_listen_accepts_yaml_off_and_explains_a_bare_port(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "status: {listen: off}\n"), environ={}).status.listen is None
    bare = r"status\.listen: must be HOST:PORT, not a bare port: write 127\.0\.0\.1:9410 .* 0\.0\.0\.0:9410 "
    for text in ("status: {listen: 9410}\n", "status: {listen: '9410'}\n"):
        with pytest.raises(ConfigError, match=bare):
            load_config(write(tmp_path, text), environ={})
    with pytest.raises(ConfigError, match=bare):  # an environment value is read as YAML: a number too
        load_config(None, environ={"WODROP__STATUS__LISTEN": "9410"})
    for text in ("status: {listen: 9410.5}\n", "status: {listen: [a]}\n", "status: {listen: host}\n"):
        with pytest.raises(ConfigError) as e:
            load_config(write(tmp_path, text), environ={})
        assert "status.listen: must be HOST:PORT, e.g. 127.0.0.1:9410, or off" in str(e.value)
        assert "valid string" not in str(e.value)


def test_ca_bundle_must_be_a_readable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"upload\.ca_bundle: .* is not a readable file"):
        load_config(write(tmp_path, f"upload: {{ca_bundle: {tmp_path}}}\n"), environ={})
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_config(write(tmp_path, f"upload: {{ca_bundle: {pem}}}\n"), environ={}).upload.ca_bundle == pem
