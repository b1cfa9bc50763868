"""Configuration: YAML file + ``WODROP__SECTION__KEY`` environment overrides -> a validated model.

Errors name the field and what was expected (``batch.max_bytes: expected a size like 512MiB``) so an
operator can fix the file without reading code. Secrets never live in the YAML: the API key comes from
the environment, a key file or a systemd credential (see ``wodrop.secrets``).

Sizes and durations must be finite (``.nan``/``.inf`` are refused), and durations where 0 would be
harmful have a floor: ``watch.settle`` at least 1s (a shorter one can take a half-copied folder),
polling and rescans, ``batch.max_age``, timeouts (0 turns an aiohttp timeout off) and retry delays (0
hammers a failing server). Tests only: ``WODROP_UNSAFE_SHORT_SETTLE=1`` lowers the settle floor to
100ms so end-to-end runs stay fast; never set it in production.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from wodrop.units import format_duration, parse_duration, parse_size
from wodrop.upload.schedule import BandwidthSchedule, bandwidth_setting, parse_bandwidth

CONFIG_ENV = "WODROP_CONFIG"
ENV_PREFIX = "WODROP__"
DEFAULT_DATA_DIR = Path("wodrop-data")

Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]

#: tests only: lowers the ``watch.settle`` floor to MIN_SETTLE_UNSAFE (end-to-end runs use 0.3-0.8s)
UNSAFE_SHORT_SETTLE_ENV = "WODROP_UNSAFE_SHORT_SETTLE"
MIN_SETTLE = 1.0
MIN_SETTLE_UNSAFE = 0.1
MIN_POLL_INTERVAL = 0.1
MIN_RESCAN_INTERVAL = 1.0
MIN_MAX_AGE = 0.1
MIN_TIMEOUT = 0.1
MIN_RETRY_DELAY = 0.01


def _human(seconds: float) -> str:
    """``1s``, ``100ms``: a floor as an operator would write it."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s" if seconds < 60 else format_duration(seconds)


def _at_least(value: float, floor: float, why: str) -> float:
    if value < floor:
        raise ValueError(f"at least {_human(floor)}{why}")
    return value


def short_settle_allowed(info: ValidationInfo | None = None) -> bool:
    """Whether ``WODROP_UNSAFE_SHORT_SETTLE`` is on, in the environment ``load_config`` was given
    (passed as validation context) or else the process's."""
    context = info.context if info is not None and isinstance(info.context, dict) else {}
    environ = context.get("environ", os.environ)
    return str(environ.get(UNSAFE_SHORT_SETTLE_ENV, "")).strip().lower() in ("1", "true", "yes", "on")


def _http_url(v: str | None, example: str, secret_hint: str) -> str | None:
    """An http(s) URL that can be used as it is, without a ``user:password@``, or None. Never echoed:
    it may hold a password or a token."""
    if v is None or v == "":
        return None
    if not re.match(r"^https?://[^/\s]+", v) or not v.isprintable() or any(c.isspace() for c in v):
        raise ValueError(f"expected a URL like {example}")
    if "@" in v.split("://", 1)[1].split("/", 1)[0]:
        raise ValueError(f"must not contain a user or password (user:password@); {secret_hint}")
    try:
        u = urlsplit(v)
        port = u.port
    except ValueError as e:  # "Port out of range 0-65535", "Invalid IPv6 URL"
        raise ValueError(f"expected a URL like {example} ({str(e)[:1].lower()}{str(e)[1:]})") from None
    if not u.hostname:
        raise ValueError(f"expected a URL like {example} (no host name)")
    if port == 0:
        raise ValueError(f"expected a URL like {example} (port 0 cannot be connected to)")
    return v


class ConfigError(Exception):
    """A config problem to show an operator as is (exit code 2)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Section):
    """Where folders live. inbox/processing/done/failed must share one filesystem (renames)."""

    inbox: Path = DEFAULT_DATA_DIR / "inbox"
    processing: Path = DEFAULT_DATA_DIR / "processing"
    done: Path = DEFAULT_DATA_DIR / "done"
    failed: Path = DEFAULT_DATA_DIR / "failed"
    state: Path = DEFAULT_DATA_DIR / "state"

    @property
    def db(self) -> Path:
        return self.state / "wodrop.sqlite3"

    @property
    def spool(self) -> Path:
        return self.state / "spool"


class WatchConfig(_Section):
    mode: Literal["auto", "events", "polling"] = "auto"
    settle: Duration = 5.0
    ready_marker: str | None = None
    poll_interval: Duration = 1.0
    rescan_interval: Duration = 30.0
    extra_temp_patterns: list[str] = Field(default_factory=list)

    @field_validator("settle")
    @classmethod
    def _settle_floor(cls, v: float, info: ValidationInfo) -> float:
        if short_settle_allowed(info):
            return _at_least(v, MIN_SETTLE_UNSAFE, f", even with {UNSAFE_SHORT_SETTLE_ENV} set")
        return _at_least(v, MIN_SETTLE, ", or a half-copied folder could be taken")

    @field_validator("poll_interval")
    @classmethod
    def _poll_floor(cls, v: float) -> float:
        return _at_least(v, MIN_POLL_INTERVAL, ", or polling would keep the share and a CPU busy")

    @field_validator("rescan_interval")
    @classmethod
    def _rescan_floor(cls, v: float) -> float:
        return _at_least(v, MIN_RESCAN_INTERVAL, ", or rescans would keep the share and a CPU busy")

    @field_validator("ready_marker")
    @classmethod
    def _marker_is_a_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or v in (".", "..")):
            raise ValueError("expected a plain file name like .ready")
        return v or None


class FormatConfig(_Section):
    work_order_id_pattern: str = r"^[A-Za-z0-9_-]{1,128}$"
    task_groups: list[str] = Field(default_factory=list)
    image_check: Literal["markers", "decode"] = "markers"
    require_metadata: bool = False
    require_parameters: bool = False
    required_metadata_keys: list[str] = Field(default_factory=list)
    required_parameter_keys: list[str] = Field(default_factory=list)
    on_duplicate: Literal["reject", "allow"] = "reject"

    @field_validator("work_order_id_pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"expected a regular expression ({e})") from None
        return v


class BatchConfig(_Section):
    max_bytes: Size = 128 * 1024**2
    max_work_orders: int = Field(default=1000, ge=1)
    max_age: Duration = 10.0
    #: seal sooner when no work order came for this long, none is on its way and an uploader is idle;
    #: 0 turns it off
    linger: Duration = 0.5
    max_sealed: int = Field(default=4, ge=1, description="sealed batches waiting in the spool")
    min_free_space: Size = 1024**3

    @field_validator("max_age")
    @classmethod
    def _age_floor(cls, v: float) -> float:
        return _at_least(v, MIN_MAX_AGE, ", or every work order would be sent in an archive of its own")


class UploadConfig(_Section):
    concurrency: int = Field(default=2, ge=1, le=64)
    #: bytes one PUT carries, streamed from disk: large spans cost one round trip each (bench/RESULTS.md)
    chunk_size: Size = 128 * 1024**2
    #: bytes/s for all uploads together: a size, off, or a timetable ``"08:00,2MiB 19:00,off"`` (kept as
    #: its text; :attr:`bandwidth` reads it), see :mod:`wodrop.upload.schedule`
    max_bandwidth: Annotated[Size | str | None, BeforeValidator(bandwidth_setting)] = None
    connect_timeout: Duration = 30.0
    read_timeout: Duration = 300.0
    retry_initial_delay: Duration = 1.0
    retry_max_delay: Duration = 60.0
    max_retries: int = Field(default=10, ge=0, description="consecutive failures before `upload` gives up")
    ca_bundle: Path | None = None

    @field_validator("ca_bundle")
    @classmethod
    def _readable_bundle(cls, v: Path | None) -> Path | None:
        if v is not None and not (v.is_file() and os.access(v, os.R_OK)):
            raise ValueError(f"{v} is not a readable file of PEM certificates")
        return v

    @field_validator("connect_timeout", "read_timeout")
    @classmethod
    def _timeout_floor(cls, v: float) -> float:
        return _at_least(v, MIN_TIMEOUT, ": 0 would turn the timeout off and let a silent server stall "
                                         "uploads forever")

    @field_validator("retry_initial_delay", "retry_max_delay")
    @classmethod
    def _retry_floor(cls, v: float) -> float:
        return _at_least(v, MIN_RETRY_DELAY, ", or a failing server would be hammered with retries")

    @field_validator("chunk_size")
    @classmethod
    def _chunk_multiple(cls, v: int) -> int:
        if v <= 0 or v % 262144:
            raise ValueError("expected a multiple of 256KiB (262144 bytes), like 128MiB")
        return v

    @property
    def bandwidth(self) -> BandwidthSchedule:
        """``max_bandwidth`` as a schedule (a constant rate or a timetable)."""
        return parse_bandwidth(self.max_bandwidth)


class ApiConfig(_Section):
    url: str | None = None
    api_key_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        url = _http_url(v, "https://api.<site-id>.customers.deepomatic.com",
                        "the API key goes in CUSTOMER_API_KEY or api.api_key_file")
        return url.rstrip("/") if url else None


def _statuses(v: list[str]) -> list[str]:
    """Platform statuses compare without case or surrounding spaces."""
    out = [str(s).strip().lower() for s in v]
    if not out or any(not s for s in out):
        raise ValueError("expected a list of non-empty status names")
    return out


class FollowupConfig(_Section):
    """After an upload, poll the platform's batch until its processing ends (``pipeline/followup.py``)."""

    #: None: on when ``api.url`` is set (the embedded receiver is not followed unless asked)
    enabled: bool | None = None
    poll_interval: Duration = 30.0
    timeout: Duration = 86400.0
    done_statuses: list[str] = Field(default_factory=lambda: ["done", "finished", "success", "succeeded",
                                                              "completed"])
    failed_statuses: list[str] = Field(default_factory=lambda: ["failed", "error", "errored", "rejected"])

    @field_validator("poll_interval", "timeout")
    @classmethod
    def _followup_floor(cls, v: float) -> float:
        return _at_least(v, 1.0, ", or the platform's API would be polled in a loop")

    @field_validator("done_statuses", "failed_statuses")
    @classmethod
    def _status_names(cls, v: list[str]) -> list[str]:
        return _statuses(v)

    @model_validator(mode="after")
    def _disjoint(self) -> FollowupConfig:
        both = sorted(set(self.done_statuses) & set(self.failed_statuses))
        if both:
            raise ValueError(f"{', '.join(both)} cannot be both a done and a failed status")
        return self

    def active(self, api_url: str | None) -> bool:
        """Whether batches are followed: ``enabled``, or by default when the platform is configured."""
        return self.enabled if self.enabled is not None else api_url is not None


class StatusConfig(_Section):
    listen: str | None = "127.0.0.1:9410"

    @field_validator("listen", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        """YAML reads a bare ``off`` as false; a bare port is a common slip: say what to write."""
        if v is False:
            return None
        if isinstance(v, int) and not isinstance(v, bool):
            raise ValueError(_bare_port(v))
        if v is not None and not isinstance(v, str):
            raise ValueError(_LISTEN_EXPECTED)
        return v

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is None or v == "" or v.lower() in ("off", "none", "false"):
            return None
        if v.strip().isdigit():
            raise ValueError(_bare_port(v.strip()))
        _host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(_LISTEN_EXPECTED)
        return v


_LISTEN_EXPECTED = "must be HOST:PORT, e.g. 127.0.0.1:9410, or off"


def _bare_port(port: object) -> str:
    return (f"must be HOST:PORT, not a bare port: write 127.0.0.1:{port} (this machine only) or "
            f"0.0.0.0:{port} (every interface, as in a container)")


def parse_listen(listen: str) -> tuple[str, int]:
    """A valid ``status.listen``: ``127.0.0.1:9410`` / ``[::1]:9410`` / ``:9410`` (every interface) ->
    (host, port). Here, not in the server, so that ``wodrop healthcheck`` starts without loading it."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


#: shortest webhook secret accepted: an HMAC key a guess cannot find, and long enough to be redacted
MIN_WEBHOOK_SECRET = 16


class NotifyConfig(_Section):
    """Events for people, POSTed to a webhook (:mod:`wodrop.notify`). The secret signs each body; it
    is a ``SecretStr`` so that no repr, dump or error message shows it."""

    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_secret_file: Path | None = None
    #: the events to send; None: every one
    events: list[str] | None = None
    stall_after: Duration = 900.0
    timeout: Duration = 10.0
    max_retries: int = Field(default=5, ge=0, le=20, description="retries of one event before it is dropped")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: str | None) -> str | None:
        return _http_url(v, "https://hooks.example.com/wodrop",
                         "sign the requests with notify.webhook_secret_file instead")

    @field_validator("webhook_secret")
    @classmethod
    def _secret_length(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().strip()) < MIN_WEBHOOK_SECRET:
            raise ValueError(f"expected at least {MIN_WEBHOOK_SECRET} characters")
        return v

    @field_validator("events")
    @classmethod
    def _known_events(cls, v: list[str] | None) -> list[str] | None:
        from wodrop.notify import EVENTS  # wodrop.notify imports this module

        unknown = [e for e in v or [] if e not in EVENTS]
        if unknown:
            raise ValueError(f"unknown event {', '.join(map(repr, unknown))} (known: {', '.join(EVENTS)})")
        return v

    @field_validator("stall_after")
    @classmethod
    def _stall_floor(cls, v: float) -> float:
        return _at_least(v, 1.0, ", or every pause between two chunks would be reported")

    @field_validator("timeout")
    @classmethod
    def _notify_timeout_floor(cls, v: float) -> float:
        return _at_least(v, MIN_TIMEOUT, ": 0 would turn the timeout off and let a silent webhook hold "
                                         "every notification back")

    @model_validator(mode="after")
    def _one_secret(self) -> NotifyConfig:
        if self.webhook_secret is not None and self.webhook_secret_file is not None:
            raise ValueError("set notify.webhook_secret or notify.webhook_secret_file, not both")
        return self


class Config(_Section):
    paths: PathsConfig = Field(default_factory=PathsConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)
    format: FormatConfig = Field(default_factory=FormatConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    upload: UploadConfig = Field(default_factory=UploadConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    followup: FollowupConfig = Field(default_factory=FollowupConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)

    #: the file this came from, for messages and SIGHUP reloads (not a config key)
    source: Path | None = Field(default=None, exclude=True)

    @property
    def local_receiver_store(self) -> Path:
        """Where the embedded receiver keeps batches when ``api.url`` is not set: ``./wodrop-data/received``
        for a newcomer with no config, else inside the state folder (the one place a configured install,
        e.g. a read-only container, is sure to write)."""
        return self.paths.state.parent / "received" if self.source is None else self.paths.state / "received"


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key (check the spelling against config/example.yaml)"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    if kind == "literal_error" or kind.endswith("_type") or kind.endswith("_parsing"):
        msg = msg.replace("Input should be", "expected")
    return f"{loc}: {msg}"


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """``WODROP__UPLOAD__CONCURRENCY=4`` -> ``{"upload": {"concurrency": 4}}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if len(parts) < 2:
            raise ConfigError(f"{name}: expected WODROP__SECTION__KEY, like WODROP__UPLOAD__CONCURRENCY")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def config_path_from(cli_value: str | None, environ: dict[str, str] | None = None) -> Path | None:
    environ = dict(os.environ) if environ is None else environ
    raw = cli_value or environ.get(CONFIG_ENV)
    return Path(raw) if raw else None


def load_config(path: Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read, merge env overrides, validate. Raises ConfigError with one line per problem."""
    environ = dict(os.environ) if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: config file is not UTF-8 text") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or "invalid YAML"
            raise ConfigError(f"{path}:{where}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (paths:, watch:, ...) at the top")
        data = loaded
    data = _merge(data, _env_overrides(environ))
    try:
        cfg = Config.model_validate(data, context={"environ": environ})
    except ValidationError as e:
        where = f"{path}: " if path else ""
        lines = [_describe(dict(err)) for err in e.errors()]
        raise ConfigError(where + "invalid configuration\n  " + "\n  ".join(lines)) from None
    if path is not None:
        base = path.parent
        paths = cfg.paths.model_copy(
            update={k: base / v for k, v in cfg.paths.model_dump().items() if not Path(v).is_absolute()}
        )
        cfg = cfg.model_copy(update={"paths": paths, "source": path})
    return cfg
