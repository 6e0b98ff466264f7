"""The server's own view of the measured window (``server.metrics``): whether its ``/metrics`` can be read,
asked once at the job's check; the scraper running around the window; and the row's summary of what
explains the energy, each column null with its reason where the server did not say.

Gauges (running and waiting requests, KV-cache usage) are averaged over the scrapes that fell inside the
window; counters (preemptions, prefix-cache queries and hits, prompt and generated tokens) are read as their
rise from the last scrape answered before the window opened to the first one sent after it closed.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from llem.backends._metric_names import COUNTERS, GAUGES, KNOWN, MetricTable, choose
from llem.backends.base import installed
from llem.energy.flags import Flag
from llem.results.load import ServerMetrics
from llem.serving.scrape import Scrape, ScrapeError, Scraper, fetch, samples
from llem.serving.server import auth_headers
from llem.support.errors import ServerError
from llem.support.install import install_hint
from llem.workload.records import RequestResult

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0  # the check's one scrape, which also reads the whole page to choose the names
TOKENS_DIFFER_PCT = 2.0  # server-counted generated tokens this far from the client's are flagged
PART_COLUMNS = {"running": "num_server_running_mean", "waiting": "num_server_waiting_mean",
                "kv_cache_usage": "server_kv_cache_usage_pct_mean", "preemptions": "num_server_preemptions",
                "prompt_tokens": "server_prompt_tokens", "generation_tokens": "server_generated_tokens"}


class ServerScrape:
    """The job's scraping: a :class:`Scraper` where the server's metrics can be read, else why not."""

    def __init__(self, scraper: Optional[Scraper] = None, why_not: Optional[str] = None) -> None:
        self.scraper, self.why_not = scraper, why_not

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        """Scraping from just before to just after what runs inside (the measured window)."""
        if self.scraper is None:
            yield
            return
        self.scraper.start()
        try:
            yield
        finally:
            self.scraper.stop()

    def rows(self) -> List[dict]:
        return self.scraper.timeseries_rows() if self.scraper is not None else []

    def part(self, t0: float, t1: float, outputs: Sequence[RequestResult]) -> Tuple[ServerMetrics, List[Flag]]:
        if self.scraper is None:
            return ServerMetrics(server_metrics_null_reason=self.why_not), []
        latest = [s for s in self.scraper.taken() if s.sent_s >= self.scraper.started_s]  # not a discarded window's
        return summary(self.scraper.table, latest, t0, t1, outputs)


def at_check(config: Any, endpoint: Any, own: Optional[MetricTable], phase=lambda: "") -> ServerScrape:
    """Whether the server's ``/metrics`` can be read, asked once: ServerError naming ``server.metrics`` where it
    is ``on`` and cannot; under ``auto`` the reason is kept for the row. ``own``: the engine's names."""
    if endpoint is None:
        return ServerScrape(why_not="server=none: the engine runs in llem's process, no server to scrape")
    mode = config.server.metrics
    if mode == "off":
        return ServerScrape(why_not="server.metrics=off")
    url = f"{endpoint.url.rstrip('/')}/metrics"
    headers = auth_headers(config.server)
    try:
        if not installed("prometheus_client"):
            raise ScrapeError(f"prometheus_client, which parses them, is not installed: {install_hint('serving')}")
        table = choose(samples(fetch(url, headers, PROBE_TIMEOUT_S)), own)
        if table is None:
            known = ", ".join(dict.fromkeys(t.names()[0] for t in ((own,) if own else ()) + KNOWN))
            raise ScrapeError(f"it exposes none of the metrics llem reads (e.g. {known})")
    except ScrapeError as exc:
        why = f"the server has no Prometheus metrics llem reads at {url} ({exc})"
        if mode == "on":
            raise ServerError(f"server.metrics=on: {why}; set server.metrics=auto (its columns null, "
                              "with this reason) or off") from None
        log.info("server.metrics=auto: %s", why)
        return ServerScrape(why_not=why)
    interval_s = config.energy.sample_interval_ms / 1000.0
    log.info("scraping %s every %g s through the window (%s names)", url, interval_s, table.kind)
    return ServerScrape(Scraper(url, headers, table, interval_s, phase))


def summary(table: MetricTable, scrapes: List[Scrape], t0: float, t1: float, outputs: Sequence[RequestResult]
            ) -> Tuple[ServerMetrics, List[Flag]]:
    """The row's part from the scrapes around and inside the window [t0, t1], and the flag where the server
    counted other generated tokens than the client received."""
    ok = [s for s in scrapes if s.error is None and t0 <= s.mid_s <= t1]  # where the time series places them
    inside = ok + [s for s in scrapes if s.error is not None and t0 <= s.sent_s <= t1]  # a failure: when tried
    out = ServerMetrics(server_metrics_source=table.kind, num_server_scrapes=len(ok),
                        num_server_scrapes_failed=len(inside) - len(ok))
    why: List[str] = []
    for quantity in GAUGES:
        seen = [s.values[quantity] for s in ok if s.values.get(quantity) is not None]
        if seen:
            setattr(out, PART_COLUMNS[quantity], sum(seen) / len(seen))
            if quantity == "kv_cache_usage":
                out.server_kv_cache_usage_pct_peak = max(seen)
        else:
            why.append(f"{PART_COLUMNS[quantity]}: {_no_gauge(table, quantity, ok, inside)}")
    before = next((s for s in reversed(scrapes) if s.done_s <= t0 and s.error is None), None)
    after = next((s for s in scrapes if s.sent_s >= t1 and s.error is None), None)
    rise, reasons = {}, {}
    for quantity in COUNTERS:
        rise[quantity], reasons[quantity] = _rise(table, quantity, before, after, scrapes, t0, t1)
        if quantity in PART_COLUMNS:
            setattr(out, PART_COLUMNS[quantity], None if rise[quantity] is None else int(round(rise[quantity])))
            if reasons[quantity]:
                why.append(f"{PART_COLUMNS[quantity]}: {reasons[quantity]}")
    queries, hits = rise["prefix_cache_queries"], rise["prefix_cache_hits"]
    if queries and hits is not None:
        out.server_prefix_cache_hit_pct = 100.0 * hits / queries
    else:
        why.append("server_prefix_cache_hit_pct: " + (
            reasons["prefix_cache_queries"] or reasons["prefix_cache_hits"]
            or "the server looked no prompt token up in its prefix cache in the window (prefix caching off?)"))
    out.server_metrics_null_reason = "; ".join(why) or None
    return out, _differ(out.server_generated_tokens, sum(o.output_tokens for o in outputs))


def _no_gauge(table: MetricTable, quantity: str, ok: List[Scrape], inside: List[Scrape]) -> str:
    if not getattr(table, quantity):
        return f"{table.kind}'s server has no such metric"
    if ok:
        return f"the server exposes none of {', '.join(getattr(table, quantity))}"
    if inside:
        return f"every scrape in the window failed (the last: {inside[-1].error})"
    return "no scrape fell inside the window (shorter than energy.sample_interval_ms?)"


def _rise(table: MetricTable, quantity: str, before: Optional[Scrape], after: Optional[Scrape],
          scrapes: List[Scrape], t0: float, t1: float) -> Tuple[Optional[float], Optional[str]]:
    """A counter's rise over the window, or None and why."""
    if not getattr(table, quantity):
        return None, f"{table.kind}'s server has no such counter"
    for edge, scrape, side in (("before", before, lambda s: s.done_s <= t0), ("after", after,
                                                                              lambda s: s.sent_s >= t1)):
        if scrape is None:
            failed = next((s.error for s in scrapes if side(s) and s.error), None)
            return None, f"no scrape was answered just {edge} the window" + (f" ({failed})" if failed else "")
    a, b = before.values.get(quantity), after.values.get(quantity)
    if a is None or b is None:
        return None, f"the server exposes none of {', '.join(getattr(table, quantity))}"
    if b < a:
        return None, f"the counter went backwards over the window ({a:g} → {b:g}): the server restarted?"
    return b - a, None


def _differ(server: Optional[int], client: int) -> List[Flag]:
    if server is None or abs(server - client) <= TOKENS_DIFFER_PCT / 100.0 * max(client, 1):
        return []
    return [Flag("server_tokens_differ", (
        f"the server counted {server} generated tokens in the window, the client received {client}: over "
        f"{TOKENS_DIFFER_PCT:g}% apart, so the server did other work in the window (another client, or requests "
        "the client gave up on), and its energy is in the window's"))]
