"""``wodrop`` command line: argument parsing and exit codes (0 ok, 1 work failed, 2 usage/config error).

The arguments of every command are declared here (a contract users and scripts rely on: see the
README's Commands section); each command's work lives in ``wodrop.commands.<name>.run(args)``,
imported only when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from wodrop import __version__
from wodrop.config import Config, ConfigError, config_path_from, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or config discovered after parsing; printed as is, exit 2."""


def load_cli_config(args: argparse.Namespace) -> Config:
    """The config a command reads: ``-c`` or ``$WODROP_CONFIG`` or built-in defaults."""
    return load_config(config_path_from(getattr(args, "config", None)))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wodrop",
        description="Validate work-order folders, pack them into batches and upload them to Deepomatic.",
    )
    p.add_argument("--version", action="version", version=f"wodrop {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, *, config: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            sp.add_argument("-c", "--config", metavar="PATH", help="config file (default: $WODROP_CONFIG)")
        return sp

    command("run", "run the daemon: watch the inbox, pack, upload, move to done/ or failed/")

    sp = command("validate", "check work-order folders against the platform's format")
    sp.add_argument("paths", nargs="+", metavar="PATH", help="a work-order folder or a folder of them")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = command("pack", "validate and pack valid work orders into one batch archive")
    sp.add_argument("paths", nargs="+", metavar="PATH", help="a work-order folder or a folder of them")
    sp.add_argument("-o", "--output", required=True, metavar="OUT.zip", help="archive to write")

    sp = command("upload", "upload one archive with a resumable upload (re-run to resume)")
    sp.add_argument("archive", metavar="ARCHIVE")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--batch-id", metavar="ID", help="an existing platform batch (upload URL looked up)")
    g.add_argument("--upload-url", metavar="URL", help="a resumable upload URL (no API call is made)")
    sp.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    sp.add_argument("--again", action="store_true",
                    help="upload it even though this very file was uploaded before (refused otherwise)")

    sp = command("status", "batches, progress and recent failures, from the state DB")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = command("retry", "move failed work orders back into the inbox")
    sp.add_argument("work_orders", nargs="*", metavar="WO", help="work-order ids (folder names in failed/)")
    sp.add_argument("--all", action="store_true", help="every failed work order")

    sp = command("receiver", "run the reference batch API + resumable upload server", config=False)
    sp.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    sp.add_argument("--store", default="./wodrop-data/received", metavar="DIR")
    sp.add_argument("--api-key", metavar="KEY", help="require this key (default: accept any)")
    sp.add_argument("--faults", metavar="SPEC", help="fault injection, e.g. 'status=503:0.1,reset:0.05'")
    sp.add_argument("--seed", type=int, help="random seed for fault injection")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "retry" and bool(args.work_orders) == bool(args.all):
        parser.error("retry: name work orders or use --all (not both)")
    module = importlib.import_module(f"wodrop.commands.{args.command}")
    try:
        return int(module.run(args))
    except (ConfigError, UsageError) as e:
        print(f"wodrop {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"wodrop {args.command}: interrupted", file=sys.stderr)
        return 130
