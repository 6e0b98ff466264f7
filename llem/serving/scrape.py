"""The server's own view of its load: its Prometheus ``/metrics`` scraped on a thread of its own, at the
sampler's pace, through the measured window.

Each scrape is one bounded GET (``SCRAPE_TIMEOUT_S`` to its last byte, at most ``MAX_METRICS_BYTES``) parsed by
the Prometheus client library; the quantities llem reads (:mod:`llem.backends._metric_names`) are kept with the
times the scrape was sent and answered. A scrape that fails is a gap, recorded with its error and counted;
nothing waits on the thread inside the window, so a slow or broken ``/metrics`` delays neither the window
nor the requests. The scraper shares the client's process, so it hands the parser only the lines of the
metrics it reads: a page shaped as vLLM's (16 histograms of 22 buckets, 38 kB) takes 12-16 ms to parse whole
and 0.7-0.9 ms so on a 2-core VM (benchmarks/scrape_cost.py): at 10 scrapes a second, 12-16 % of a core taken
from the client's event loop against under 1 %.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from llem.backends._metric_names import MetricTable

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 1.0  # one scrape, connection to last byte (twice this at worst: the bound is checked per read)
MAX_METRICS_BYTES = 16 << 20  # a /metrics page past this is not read further
READ_BYTES = 1 << 16
# quantity -> its timeseries.parquet column (llem.results.tables.TimeseriesRow)
COLUMNS = {"running": "num_server_running", "waiting": "num_server_waiting",
           "kv_cache_usage": "server_kv_cache_usage_pct", "preemptions": "server_preemptions_total",
           "prefix_cache_queries": "server_prefix_cache_queries_total",
           "prefix_cache_hits": "server_prefix_cache_hits_total", "prompt_tokens": "server_prompt_tokens_total",
           "generation_tokens": "server_generation_tokens_total"}


class ScrapeError(Exception):
    """One scrape failed: why, in words that never carry the request's headers."""


def fetch(url: str, headers: Dict[str, str], timeout_s: float = SCRAPE_TIMEOUT_S) -> str:
    """The text of ``url``, read within about ``timeout_s``; ScrapeError saying why not."""
    deadline = time.monotonic() + timeout_s
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310 - the job's own server
            body = bytearray()
            while chunk := resp.read(READ_BYTES):
                body += chunk
                if len(body) > MAX_METRICS_BYTES:
                    raise ScrapeError(f"its answer is over {MAX_METRICS_BYTES >> 20} MiB")
                if time.monotonic() > deadline:
                    raise ScrapeError(f"its answer was not complete after {timeout_s:g} s")
    except urllib.error.HTTPError as exc:
        raise ScrapeError(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ScrapeError(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None
    return body.decode("utf-8", "replace")


def samples(text: str, only: Optional[set] = None) -> Dict[str, List[float]]:
    """Every sample's values by sample name (one per label set), parsed by prometheus_client; ``only``: the
    families of these sample names alone are handed to the parser. ScrapeError where it is not Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    if only is not None:
        text = "\n".join(line for line in text.splitlines() if _family_of(line) in only) + "\n"
    out: Dict[str, List[float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append(float(sample.value))
    except (ValueError, TypeError, IndexError) as exc:
        raise ScrapeError(f"not Prometheus text ({exc})") from None
    return out


def _family_of(line: str) -> str:
    """The sample name a line of the text format is about (a sample, or its ``# HELP``/``# TYPE`` line)."""
    if line.startswith("#"):
        parts = line.split(None, 3)
        return parts[2] if len(parts) > 2 else ""
    return line.split("{", 1)[0].split(None, 1)[0] if line.strip() else ""


def read(values: Dict[str, List[float]], table: MetricTable) -> Dict[str, Optional[float]]:
    """Each quantity of ``table`` from one scrape: its first name exposed, summed over label sets (the KV-cache
    usage averaged, as a percentage); None where the server exposes none of its names."""
    out: Dict[str, Optional[float]] = {}
    for quantity in table.quantities():
        found = next((values[n] for n in getattr(table, quantity) if values.get(n)), None)
        if found is None:
            out[quantity] = None
        elif quantity == "kv_cache_usage":
            out[quantity] = 100.0 * sum(found) / len(found)
        else:
            out[quantity] = sum(found)
    return out


@dataclass
class Scrape:
    """One scrape: when it was sent and answered (the sampler's clock), what it read, or why it failed."""

    sent_s: float
    done_s: float
    phase: str
    values: Dict[str, Optional[float]] = field(default_factory=dict)
    error: Optional[str] = None

    @property
    def mid_s(self) -> float:
        return (self.sent_s + self.done_s) / 2


class Scraper:
    """Scrapes ``url`` every ``interval_s`` on a daemon thread between :meth:`start` and :meth:`stop`: once as it
    starts (before the window opens) and once as it stops (after the window closed), so a counter's rise over
    the window lies between two scrapes outside it."""

    def __init__(self, url: str, headers: Dict[str, str], table: MetricTable, interval_s: float,
                 phase: Callable[[], str] = lambda: "", clock: Callable[[], float] = time.perf_counter,
                 timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        self.url, self.headers, self.table = url, headers, table
        self.interval_s, self.phase, self.clock, self.timeout_s = interval_s, phase, clock, timeout_s
        self.scrapes: List[Scrape] = []
        self.started_s = float("-inf")  # when the latest start() began: the scrapes of the latest window follow it
        self._only = set(table.names())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def scrape_now(self) -> Scrape:
        sent = self.clock()
        try:
            values, error = read(samples(fetch(self.url, self.headers, self.timeout_s), self._only), self.table), None
        except ScrapeError as exc:
            values, error = {}, str(exc)
        except Exception as exc:  # a scrape must never take the job down
            values, error = {}, f"{type(exc).__name__}: {exc}"
        scrape = Scrape(sent, self.clock(), self.phase(), values, error)
        with self._lock:
            self.scrapes.append(scrape)
        return scrape

    def _loop(self) -> None:
        self.scrape_now()
        self._first.set()
        while not self._stop.wait(self.interval_s):
            self.scrape_now()
        self.scrape_now()

    def start(self) -> Scraper:
        """Start scraping; returns once the first scrape is answered or has failed (within its bound)."""
        self._stop.clear()
        self._first.clear()
        self.started_s = self.clock()
        self._thread = threading.Thread(target=self._loop, name="llem-scraper", daemon=True)
        self._thread.start()
        self._first.wait(2 * self.timeout_s + 1.0)
        return self

    def stop(self) -> None:
        """Stop after one last scrape (within its bound; a hung one is left behind, its daemon thread with it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * self.timeout_s + 1.0)
            if self._thread.is_alive():
                log.warning("the last scrape of %s did not end within its bound: left behind", self.url)

    def taken(self) -> List[Scrape]:
        with self._lock:
            return list(self.scrapes)

    def timeseries_rows(self) -> List[Dict[str, Any]]:
        """One timeseries.parquet row per answered scrape, at its midpoint (a failed one is a gap)."""
        return [{"t_s": s.mid_s, "phase": s.phase, **{COLUMNS[q]: v for q, v in s.values.items()}}
                for s in self.taken() if s.error is None]
