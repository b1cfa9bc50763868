"""``wodrop run``: the daemon."""

from __future__ import annotations

import argparse
import asyncio
import sys

from wodrop.cli import EXIT_OK, EXIT_USAGE, load_cli_config
from wodrop.logs import get_logger, setup_logging
from wodrop.pipeline.service import Daemon, StartupError


def run(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    setup_logging(cfg.log.level, cfg.log.format)
    log = get_logger("wodrop.run")
    if cfg.source is None:
        log.info("no_config_file", note="using built-in defaults: folders under ./wodrop-data "
                 "(pass -c FILE or set WODROP_CONFIG; see config/example.yaml)")
    try:
        asyncio.run(Daemon(cfg).run())
    except StartupError as e:
        log.error("cannot_start", error=str(e))
        print(f"wodrop run: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
