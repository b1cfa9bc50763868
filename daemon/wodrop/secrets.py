"""Where the API key comes from: env, a key file, or a systemd credential - never the YAML."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from wodrop import redact
from wodrop.config import Config
from wodrop.logs import get_logger

ENV_NAMES = ("CUSTOMER_API_KEY", "DEEPOMATIC_API_KEY")
CREDENTIAL_NAME = "api_key"

log = get_logger("wodrop.secrets")
#: key -> where it came from, for messages about a refused key (the key itself is never shown)
_SOURCES: dict[str, str] = {}


class SecretError(Exception):
    """The key source exists but cannot be used (message is safe to show)."""


def _read_key_file(path: Path, *, check_mode: bool = True) -> str:
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise SecretError(f"api.api_key_file {path}: cannot read ({e.strerror})") from None
    if check_mode and st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("api_key_file_readable_by_others", path=str(path), hint=f"chmod 600 {path}")
    if not text:
        raise SecretError(f"api.api_key_file {path}: the file is empty")
    return text


def _from_env(environ: dict[str, str]) -> tuple[str, str] | None:
    """(name, key) of $CUSTOMER_API_KEY, else $DEEPOMATIC_API_KEY (the name the platform's own CLI
    reads). Both set to different keys is worth a warning: the one that is not used may be the one that
    works."""
    found = {name: environ[name].strip() for name in ENV_NAMES if environ.get(name, "").strip()}
    for value in found.values():
        redact.register_secret(value)
    if len(set(found.values())) > 1:
        log.warning("api_key_env_conflict", used=ENV_NAMES[0], ignored=ENV_NAMES[1],
                    note=f"{ENV_NAMES[0]} and {ENV_NAMES[1]} hold different keys; {ENV_NAMES[0]} wins")
    return next(iter(found.items()), None)


def key_source(key: str) -> str | None:
    """Where :func:`resolve_api_key` found ``key`` (``CUSTOMER_API_KEY``, ``api.api_key_file (PATH)``...),
    for a message telling what to fix; None for a key it did not resolve."""
    return _SOURCES.get(key)


def resolve_api_key(cfg: Config, environ: dict[str, str] | None = None) -> str | None:
    """First of: $CUSTOMER_API_KEY, $DEEPOMATIC_API_KEY, api.api_key_file, $CREDENTIALS_DIRECTORY/api_key."""
    environ = dict(os.environ) if environ is None else environ
    found = _from_env(environ)
    source, key = found if found is not None else (None, None)
    if key is None and cfg.api.api_key_file is not None:
        source, key = f"api.api_key_file ({cfg.api.api_key_file})", _read_key_file(cfg.api.api_key_file)
    if key is None and environ.get("CREDENTIALS_DIRECTORY"):
        cred = Path(environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        if cred.exists():
            # systemd owns that directory's permissions (newer versions make credentials
            # group-readable on purpose): no warning there.
            source = f"the systemd credential {CREDENTIAL_NAME} ({cred})"
            key = _read_key_file(cred, check_mode=False)
    redact.register_secret(key)
    if key is not None and source is not None:
        _SOURCES[key] = source
    return key
