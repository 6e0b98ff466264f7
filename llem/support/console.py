"""What a person sees of a job on the console: the progress bar while it measures, the one line
that ends it (read from the row's values), and a failure said once per sweep."""

from __future__ import annotations

import logging
import sys
from typing import Any, Dict, List

log = logging.getLogger("llem.run.job")
_logged_failures: List[str] = []  # the errors this process has printed in full (one sweep's jobs share it)


class ProgressBar:
    """A tqdm bar over requests, shown only on a terminal. Its lock is a thread lock: tqdm's default
    also takes a multiprocessing semaphore, which a measurement process that ends with ``os._exit``
    never releases (the parent's resource tracker then warns of a leaked semaphore)."""

    def __init__(self, wanted: bool, total: int):
        self.bar = None
        if wanted and sys.stderr.isatty():
            try:
                import threading

                from tqdm import tqdm

                tqdm.set_lock(threading.RLock())
                self.bar = tqdm(total=total, unit="req", desc="measure", leave=False)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def summary_line(row: Dict[str, Any]) -> str:
    """The one line a person reads at the end of a run (from the row's values)."""
    if row.get("status") != "ok":
        return f"FAILED during {row.get('error_stage')}: {row.get('error')}"

    def fmt(v, spec, unit):
        return "n/a" if v is None else f"{v:{spec}}{unit}"

    jpt = fmt(row.get("j_per_output_token"), ".4g", " J/token")
    if row.get("j_per_output_token") is None:
        jpt = f"J/token n/a ({row.get('energy_null_reason') or 'see warnings'})"
    return (f"{fmt(row.get('output_tok_per_s'), ',.1f', ' tok/s')}, {jpt}, TTFT p50 "
            f"{fmt(row.get('ttft_ms_p50'), '.1f', ' ms')}, {row.get('output_tokens_total')} tokens in "
            f"{row.get('window_s', 0):.2f} s")


def log_failure(message: str) -> None:
    """Log a job's error in full the first time; a later job of the sweep failing the same way gets one
    short line, so that a missing package or model is said once, not once per job (every job still has
    its failed row, and the sweep's summary quotes it)."""
    if message in _logged_failures:
        log.error("failed with the same error as an earlier job of this sweep (above)")
        return
    _logged_failures.append(message)
    log.error("%s", message)
