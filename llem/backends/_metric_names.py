"""Which Prometheus metrics of a server say what llem reads of its load: the requests it runs and holds
waiting, its KV-cache usage, its preemptions, its prefix-cache queries and hits, and the prompt and generated
tokens it counted. One :class:`MetricTable` per kind of server; an engine's serving part names its own
(:meth:`llem.backends.base.Serving.metric_table`), and a server of unknown kind is read with the first table
of :data:`KNOWN` whose names it exposes. Names are the samples' as scraped (a counter's ``_total`` included).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable, Optional, Tuple

# What each quantity is: a gauge read at each scrape (summed over the label sets, e.g. one per engine of a
# data-parallel server; a usage fraction is averaged), or a counter whose rise over the window is read.
GAUGES = ("running", "waiting", "kv_cache_usage")
COUNTERS = ("preemptions", "prefix_cache_queries", "prefix_cache_hits", "prompt_tokens", "generation_tokens")


@dataclass(frozen=True)
class MetricTable:
    """A server kind's sample names for each quantity, in order of preference (the first one exposed is read;
    later ones are older names of the same metric). An empty tuple: that kind does not expose it."""

    kind: str
    running: Tuple[str, ...] = ()  # requests being run now (the batch)
    waiting: Tuple[str, ...] = ()  # requests queued for a slot
    kv_cache_usage: Tuple[str, ...] = ()  # fraction of the KV cache in use, 0 to 1
    preemptions: Tuple[str, ...] = ()  # counter: requests preempted (their cache evicted, to be recomputed)
    prefix_cache_queries: Tuple[str, ...] = ()  # counter: prompt tokens looked up in the prefix cache
    prefix_cache_hits: Tuple[str, ...] = ()  # counter: prompt tokens found there
    prompt_tokens: Tuple[str, ...] = ()  # counter: prompt tokens the server processed
    generation_tokens: Tuple[str, ...] = ()  # counter: tokens the server generated

    def quantities(self) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(self) if f.name != "kind")

    def names(self) -> Tuple[str, ...]:
        """Every sample name the table reads."""
        return tuple(n for q in self.quantities() for n in getattr(self, q))


# vLLM's V1 engine (0.11 to 0.24 and on); gpu_cache_usage_perc is the V0 name of kv_cache_usage_perc.
VLLM = MetricTable(
    kind="vllm",
    running=("vllm:num_requests_running",),
    waiting=("vllm:num_requests_waiting",),
    kv_cache_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    preemptions=("vllm:num_preemptions_total",),
    prefix_cache_queries=("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    prefix_cache_hits=("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    prompt_tokens=("vllm:prompt_tokens_total",),
    generation_tokens=("vllm:generation_tokens_total",),
)

# SGLang (with --enable-metrics): token_usage is its KV-pool usage; every prompt token is a prefix-cache query,
# cached_tokens_total the hits. It has no preemption counter (retractions are a gauge).
SGLANG = MetricTable(
    kind="sglang",
    running=("sglang:num_running_reqs",),
    waiting=("sglang:num_queue_reqs",),
    kv_cache_usage=("sglang:token_usage",),
    prefix_cache_queries=("sglang:prompt_tokens_total",),
    prefix_cache_hits=("sglang:cached_tokens_total",),
    prompt_tokens=("sglang:prompt_tokens_total",),
    generation_tokens=("sglang:generation_tokens_total",),
)

KNOWN: Tuple[MetricTable, ...] = (VLLM, SGLANG)


def choose(exposed: Iterable[str], own: Optional[MetricTable] = None) -> Optional[MetricTable]:
    """The table to read a server with: the engine's own where the server exposes any of its names, else the
    first known table whose names it exposes (an external server of unknown kind); None where none fits."""
    seen = set(exposed)
    for table in ((own,) if own is not None else ()) + KNOWN:
        if seen & set(table.names()):
            return table
    return None
