"""Where the API key comes from, the warning about a loose key file, and redaction."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import structlog
from wodrop import redact
from wodrop.config import load_config
from wodrop.logs import get_logger, setup_logging
from wodrop.secrets import SecretError, resolve_api_key


def _cfg(tmp_path: Path, key_file: Path | None = None):  # type: ignore[no-untyped-def]
    env = {"WODROP__API__API_KEY_FILE": str(key_file)} if key_file else {}
    return load_config(None, env)


def test_precedence_env_then_file_then_credential(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file-123456\n")
    key_file.chmod(0o600)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api_key").write_text("from-credential-123456")
    cfg = _cfg(tmp_path, key_file)
    env = {"CUSTOMER_API_KEY": "customer-123456", "DEEPOMATIC_API_KEY": "deepo-123456",
           "CREDENTIALS_DIRECTORY": str(creds)}
    assert resolve_api_key(cfg, env) == "customer-123456"
    del env["CUSTOMER_API_KEY"]
    assert resolve_api_key(cfg, env) == "deepo-123456"
    del env["DEEPOMATIC_API_KEY"]
    assert resolve_api_key(cfg, env) == "from-file-123456"
    assert resolve_api_key(_cfg(tmp_path), env) == "from-credential-123456"
    assert resolve_api_key(_cfg(tmp_path), {}) is None


def test_key_file_readable_by_others_warns_and_empty_file_is_an_error(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("loose-key-123456")
    key_file.chmod(0o644)
    with structlog.testing.capture_logs() as logs:
        assert resolve_api_key(_cfg(tmp_path, key_file), {}) == "loose-key-123456"
    assert [e["event"] for e in logs] == ["api_key_file_readable_by_others"]
    key_file.write_text("")
    with pytest.raises(SecretError, match="empty"):
        resolve_api_key(_cfg(tmp_path, key_file), {})


def test_systemd_credentials_are_not_warned_about(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api_key").write_text("cred-key-123456")
    (creds / "api_key").chmod(0o640)  # what newer systemd does on purpose
    with structlog.testing.capture_logs() as logs:
        assert resolve_api_key(_cfg(tmp_path), {"CREDENTIALS_DIRECTORY": str(creds)}) == "cred-key-123456"
    assert logs == []


def finally_reset() -> None:
    """Give the other tests of this process their default logging back."""
    import logging

    structlog.reset_defaults()
    logging.basicConfig(force=True)


def test_logs_never_show_the_key_or_an_upload_url() -> None:
    key = "sekrit-key-987654321"
    url = "https://storage.example.com/upload/b1?upload_id=TOKEN-abcdef-123"
    redact.register_secret(key)
    redact.register_secret(url)
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    try:
        raise RuntimeError(f"PUT {url} failed with key {key}")
    except RuntimeError:
        get_logger("t").exception("boom", url=url, nested={"k": [key]})
    finally_reset()
    text = out.getvalue()
    assert key not in text and "TOKEN-abcdef-123" not in text
    record = json.loads(text.splitlines()[-1])
    assert record["url"] == "https://storage.example.com/«redacted»"
    assert redact.redact(f"see https://h.example/x?sig={key[:3]}abc") == "see https://h.example/x?«redacted»"
