"""``wodrop`` command line: argument parsing and exit codes (0 ok, 1 work failed, 2 usage/config error).

The arguments of every command are declared here (a contract users and scripts rely on: see the
README's Commands section), with each command's exit codes in its ``--help``; each command's work
lives in ``wodrop.commands.<name>.run(args)``, imported only when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Sequence

from wodrop import __version__
from wodrop.config import Config, ConfigError, config_path_from, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Ctrl-C, and a reader that went away (``| head``): what a shell reports for SIGINT/SIGPIPE (128 + n)
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141
_HELP_WIDTH = 79

_CONFIG_NOTE = ("config: -c PATH, else $WODROP_CONFIG, else built-in defaults (folders under ./wodrop-data); "
                "WODROP__SECTION__KEY environment variables override any key")
_KEY_NOTE = ("API key: $CUSTOMER_API_KEY, else $DEEPOMATIC_API_KEY, else the file named by api.api_key_file "
             "(never in the YAML file)")


def _epilog(codes: dict[int, str | None], *notes: str) -> str:
    """``--help``'s footer: the command's exit codes (None: a common one it never returns), then what
    it reads from the environment."""
    codes = {EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
             EXIT_BROKEN_PIPE: "the output was cut short: its reader stopped early (| head)", **codes}

    def wrap(text: str, first: str, rest: str) -> str:
        return textwrap.fill(text, _HELP_WIDTH, initial_indent=first, subsequent_indent=rest,
                             break_on_hyphens=False, break_long_words=False)

    lines = [wrap(meaning, f"  {code:<4} ", " " * 7) for code, meaning in sorted(codes.items())
             if meaning is not None]
    paragraphs = [wrap(note, "", "  ") for note in notes]
    return "\n\n".join(["exit codes:\n" + "\n".join(lines), *paragraphs])


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

    def command(name: str, help_text: str, codes: dict[int, str | None], *notes: str,
                config: bool = True) -> argparse.ArgumentParser:
        if config:
            notes = (_CONFIG_NOTE, *notes)
        sp = sub.add_parser(name, help=help_text, description=help_text, epilog=_epilog(codes, *notes),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        if config:
            sp.add_argument("-c", "--config", metavar="PATH", help="config file (default: $WODROP_CONFIG)")
        return sp

    command("run", "run the daemon: watch the inbox, pack, upload, move to done/ or failed/",
            {EXIT_OK: "stopped by SIGTERM or SIGINT (Ctrl-C), after saving its progress",
             EXIT_FAILED: "stopped by an unexpected error (the log has it); a service manager restarts it",
             EXIT_INTERRUPTED: None,
             EXIT_USAGE: "configuration error, or cannot start (state DB damaged, folders unusable, "
                         "another instance running, status.listen taken): the message says what to do"},
            _KEY_NOTE + "; with no api.url, batches go to a local receiver and no key is needed")

    sp = command("validate", "check work-order folders against the platform's format",
                 {EXIT_OK: "every work order is valid",
                  EXIT_FAILED: "at least one is invalid, or no work-order folder was found",
                  EXIT_USAGE: "usage or configuration error (a PATH that is not a folder, a bad config "
                              "file)"})
    sp.add_argument("paths", nargs="+", metavar="PATH", help="a work-order folder or a folder of them")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = command("pack", "validate and pack valid work orders into one batch archive",
                 {EXIT_OK: "every work order was packed",
                  EXIT_FAILED: "some were invalid or skipped (the archive holds the valid ones), or none "
                               "was valid (no archive written)",
                  EXIT_USAGE: "usage or configuration error, or OUT.zip already exists (never overwritten)"})
    sp.add_argument("paths", nargs="+", metavar="PATH", help="a work-order folder or a folder of them")
    sp.add_argument("-o", "--output", required=True, metavar="OUT.zip", help="archive to write")

    sp = command("upload", "upload one archive with a resumable upload (re-run to resume)",
                 {EXIT_OK: "uploaded, and the server's copy matches the file",
                  EXIT_FAILED: "the upload failed (the reason is on stderr; running it again resumes), or "
                               "this file was uploaded before and --again was not given",
                  EXIT_USAGE: "usage or configuration error (no such file, no api.url and no --upload-url, "
                              "no API key)"},
                 _KEY_NOTE + "; not needed with --upload-url")
    sp.add_argument("archive", metavar="ARCHIVE",
                    help="the batch archive to send, e.g. one made by `wodrop pack` (sent as is)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--batch-id", metavar="ID", help="an existing platform batch (upload URL looked up)")
    g.add_argument("--upload-url", metavar="URL", help="a resumable upload URL (no API call is made)")
    sp.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    sp.add_argument("--again", action="store_true",
                    help="upload it even though this very file was uploaded before (refused otherwise)")

    sp = command("status", "batches, progress and recent failures, from the state DB",
                 {EXIT_OK: "shown (also when the daemon has not run yet: there is nothing to show)",
                  EXIT_FAILED: "the state DB cannot be read",
                  EXIT_USAGE: "configuration error"})
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = command("retry", "move failed work orders back into the inbox",
                 {EXIT_OK: "every one was moved (or, with --all, there was none)",
                  EXIT_FAILED: "some could not be moved (the lines say why), or the inbox does not exist",
                  EXIT_USAGE: "usage or configuration error (no WO and no --all, or both)"})
    sp.add_argument("work_orders", nargs="*", metavar="WO", help="work-order ids (folder names in failed/)")
    sp.add_argument("--all", action="store_true", help="every failed work order")

    sp = command("healthcheck", "ask the running daemon's /healthz on status.listen (for a container's "
                 "HEALTHCHECK or a monitoring probe)",
                 {EXIT_OK: "healthy: wodrop's /healthz answered 200 ok",
                  EXIT_FAILED: "anything else, with the reason in one line: no answer, not healthy, "
                               "something that is not wodrop on the port, the status server turned off "
                               "(status.listen: off), a bad config (never 2: "
                               "Docker reserves it)"},
                 "0.0.0.0 and :: in status.listen are asked on 127.0.0.1 and ::1")
    sp.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                    help="give up after this long, for the whole check (default: %(default)s)")

    sp = command("receiver", "run the reference batch API + resumable upload server",
                 {EXIT_OK: "stopped by SIGTERM or SIGINT (Ctrl-C)", EXIT_INTERRUPTED: None,
                  EXIT_USAGE: "usage error (a bad --listen, --faults or --processing-time)"},
                 "--api-key KEY is the key clients must send; wodrop run and wodrop upload send "
                 "$CUSTOMER_API_KEY (or $DEEPOMATIC_API_KEY, or api.api_key_file)", config=False)
    sp.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                    help="address to serve on; 0.0.0.0 for every interface (default: %(default)s)")
    sp.add_argument("--store", default="./wodrop-data/received", metavar="DIR",
                    help="folder for the received archives and their reports, created if missing "
                         "(default: %(default)s)")
    sp.add_argument("--api-key", metavar="KEY", help="require this key (default: accept any)")
    sp.add_argument("--faults", metavar="SPEC", help="fault injection, e.g. 'status=503:0.1,reset:0.05'")
    sp.add_argument("--seed", type=int, help="random seed for fault injection")
    sp.add_argument("--strict-paths", action="store_true",
                    help="only the vendor client's API paths (no trailing slash, no batch list)")
    sp.add_argument("--processing-time", default="0s", metavar="DURATION",
                    help="after an upload, a batch is pending then processing this long before done")
    sp.add_argument("--require-metadata-key", action="append", default=[], metavar="KEY",
                    help="report a platform error for each work order whose metadata.json lacks KEY")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. A reader that goes away (``wodrop status | head``) ends it with
    141 and no traceback (Python's recipe: stdout pointed at /dev/null so the exit flush is quiet)."""
    try:
        try:
            return _main(argv)
        finally:  # inside the try: a reader gone by the last write is caught here too
            sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
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
        return EXIT_INTERRUPTED
