"""Keep secrets (the API key, upload URLs) out of everything a person or a log collector sees.

Upload URLs are bearer capabilities: whoever holds one can write to the batch. Every string that leaves
the process through logs, reports, the status page or exceptions passes through :func:`redact`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

_lock = threading.Lock()
_secrets: set[str] = set()
# Query strings of URLs often carry signatures (upload_id=..., X-Goog-Signature=...).
_QUERY = re.compile(r"(https?://[^\s\"'?#]+)\?[^\s\"'#]+")
MASK = "«redacted»"


def register_secret(value: str | None) -> None:
    """Remember a secret so that :func:`redact` masks it wherever it appears."""
    if value and len(value) >= 6:
        with _lock:
            _secrets.add(value)


def redact_url(url: str | None) -> str:
    """``https://host/path?upload_id=X`` -> ``https://host/«redacted»``: host kept for debugging."""
    if not url:
        return ""
    m = re.match(r"^(https?://[^/?#\s]+)", url)
    return f"{m.group(1)}/{MASK}" if m else MASK


def redact(text: str) -> str:
    """Mask every registered secret (longest first) and any URL query string."""
    if not text:
        return text
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, redact_url(s) if s.startswith(("http://", "https://")) else MASK)
    return _QUERY.sub(lambda m: f"{m.group(1)}?{MASK}", text)


def redact_value(value: Any) -> Any:
    """Recursively redact strings inside dicts/lists/tuples; other values pass unchanged."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def structlog_processor(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: redact every field, including rendered exceptions."""
    return {k: redact_value(v) for k, v in event_dict.items()}
