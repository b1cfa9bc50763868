"""Shared pytest set-up. Test helpers live in tests/helpers/ (importable as ``helpers.*``)."""

from __future__ import annotations

import os

# No test may reach the internet: make sure nothing picks up a proxy from the environment.
for _name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_name, None)
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
# Secrets from the developer's shell must not leak into tests.
for _name in ("CUSTOMER_API_KEY", "DEEPOMATIC_API_KEY", "WODROP_CONFIG", "CREDENTIALS_DIRECTORY"):
    os.environ.pop(_name, None)
