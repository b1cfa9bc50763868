"""``wodrop receiver``: run the reference receiver until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from wodrop import redact
from wodrop.cli import EXIT_OK, UsageError
from wodrop.logs import get_logger, setup_logging
from wodrop.receiver import FaultPlan, FaultSpecError, start_receiver
from wodrop.units import parse_duration


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen: expected HOST:PORT, as in 127.0.0.1:8080, not {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _processing_time(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise UsageError(f"--processing-time: expected a duration like 30s or 2m, not {value!r}") from None


async def _serve(args: argparse.Namespace, host: str, port: int, plan: FaultPlan, processing: float) -> None:
    log = get_logger("wodrop.receiver")
    store = Path(args.store).resolve()
    rx = await start_receiver(store, host, port, api_key=args.api_key, faults=plan,
                              strict_paths=args.strict_paths, processing_time=processing,
                              require_metadata_keys=args.require_metadata_key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "receiver listening",
        url=rx.url,
        store=str(store),
        api_key="required" if args.api_key else "any",
        faults=str(plan) or None,
        seed=args.seed,
        strict_paths=args.strict_paths,
        processing_time=processing,
        require_metadata_keys=args.require_metadata_key or None,
    )
    try:
        await stop.wait()
    finally:
        await rx.stop()
        log.info("receiver stopped", **rx.stats)


def run(args: argparse.Namespace) -> int:
    host, port = _listen(args.listen)
    processing = _processing_time(args.processing_time)
    try:
        plan = FaultPlan.parse(args.faults, args.seed)
    except FaultSpecError as e:
        raise UsageError(f"--faults: {e}") from None
    redact.register_secret(args.api_key)
    setup_logging()
    asyncio.run(_serve(args, host, port, plan, processing))
    return EXIT_OK
