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


def resolve_api_key(cfg: Config, environ: dict[str, str] | None = None) -> str | None:
    """First of: $CUSTOMER_API_KEY, $DEEPOMATIC_API_KEY, api.api_key_file, $CREDENTIALS_DIRECTORY/api_key."""
    environ = dict(os.environ) if environ is None else environ
    key: str | None = None
    for name in ENV_NAMES:
        if environ.get(name, "").strip():
            key = environ[name].strip()
            break
    if key is None and cfg.api.api_key_file is not None:
        key = _read_key_file(cfg.api.api_key_file)
    if key is None and environ.get("CREDENTIALS_DIRECTORY"):
        cred = Path(environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        if cred.exists():
            # systemd owns that directory's permissions (newer versions make credentials
            # group-readable on purpose): no warning there.
            key = _read_key_file(cred, check_mode=False)
    redact.register_secret(key)
    return key
