"""Operator-facing status: the HTTP status server (``server``), its HTML page (``page``) and the
snapshot they and ``wodrop status`` share (``collect``). The server module is imported only by the
daemon, so ``wodrop status`` stays quick to start."""

from wodrop.status.collect import collect_status, empty_status, summary_line

__all__ = ["collect_status", "empty_status", "summary_line"]
