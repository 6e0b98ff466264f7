"""Result parts of a job measured at a load: where output lengths came from, the arrival process as it
happened, goodput, and the server that answered (``server=launch`` / ``external``). Columns as in
:mod:`llem.results.row`: the field is the column."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from llem.results.schema import col


@dataclass
class OutputLengths:
    """The output lengths the requests asked for (fixed output_len, or natural lengths)."""

    output_len_source: Optional[str] = col("fixed (output_len), reference (the dataset's completions), trace "
                                           "(load.trace's output_tokens), distribution (dataset.output_lengths), "
                                           "or reference+distribution / trace+distribution")
    output_len_distribution: Optional[str] = col("the distribution drawn from, when one was")
    output_tokens_requested_total: Optional[int] = col("output tokens the requests asked for")
    output_tokens_requested_mean: Optional[float] = col("mean output length asked for (tokens)")
    output_tokens_requested_p50: Optional[float] = col("median output length asked for (tokens)")
    output_tokens_requested_p90: Optional[float] = col("90th-percentile output length asked for (tokens)")
    output_tokens_requested_max: Optional[int] = col("longest output asked for (tokens)")


@dataclass
class LoadMetrics:
    """The arrival process as it happened, and goodput under objective.bounds."""

    target_requests_per_s: Optional[float] = col("load.request_rate asked for (requests/s; inf: all at once); with "
                                                 "load.trace, the replayed trace's mean rate, first to last arrival")
    load_mode: Optional[str] = col("burst (rate inf: every request due at once), closed (rate inf with "
                                   "load.max_concurrency=N: each next request due as one finishes) or open (a "
                                   "finite rate or a trace: each due at its arrival); TTFT and e2e count from the "
                                   "due time")
    load_trace: Optional[str] = col("the file name of load.trace, when a trace was replayed (docs/traces.md)")
    load_trace_sha256: Optional[str] = col("the sha256 of that trace file's content: equal ⇔ the same trace")
    arrivals_per_s: Optional[float] = col("requests that arrived per second, first to last arrival")
    inter_arrival_s_mean: Optional[float] = col("mean gap between consecutive arrivals (s)")
    inter_arrival_cv: Optional[float] = col("coefficient of variation of the gaps (1: Poisson)")
    num_requests_failed: Optional[int] = col("requests that ended in an error (HTTP status, dropped stream, timeout)")
    client_lateness_ms_p50: Optional[float] = col("median of how late the client (or engine) sent a request after "
                                                  "it could have: its due time, or when its slot freed (ms)")
    client_lateness_ms_p99: Optional[float] = col("99th percentile of that lateness (ms); past a bound "
                                                  "it is flagged client_late (docs/method.md)")
    client_lateness_ms_max: Optional[float] = col("the largest lateness (ms)")
    client_lateness_null_reason: Optional[str] = col("why the lateness columns are null, when they are")
    queue_ms_p50: Optional[float] = col("median wait from arrival to the start of service (ms)")
    queue_ms_p99: Optional[float] = col("99th-percentile wait from arrival to the start of service (ms)")
    goodput_requests_per_s: Optional[float] = col("requests per second of the window meeting every latency bound "
                                                  "of objective.bounds", summary=True)
    goodput_pct: Optional[float] = col("share of the requests meeting every latency bound (%)")
    goodput_bounds: Optional[str] = col("the per-request bounds goodput counts (from objective.bounds)")
    goodput_null_reason: Optional[str] = col("why goodput is null, when it is")


@dataclass
class ServerFacts:
    """The OpenAI-compatible server measured over HTTP (server=launch or external)."""

    server_mode: Optional[str] = col("none (in-process), launch or external")
    server_url: Optional[str] = col("the server's base URL")
    server_command: Optional[str] = col("the command llem started it with (launch)")
    server_start_s: Optional[float] = col("how long the server took to answer /health, paid by the job that "
                                          "started it; never in a window (s)")
    server_reused: Optional[bool] = col("the server was started by an earlier job of the sweep and kept running")
    num_server_starts: Optional[int] = col("servers started in this sweep so far, this job's included")
    server_api: Optional[str] = col("the API the requests were sent to: completions (/v1/completions) or chat "
                                    "(/v1/chat/completions, server.api)")
    server_prompt: Optional[str] = col("how prompts were sent: token_ids or text")
    server_log: Optional[str] = col("the server's log file (its lines from this job are in the job dir)")


@dataclass
class ServerMetrics:
    """The server's own view of the window, from its Prometheus /metrics scraped through it (server.metrics):
    what explains the energy (how many requests it ran at once, how full its KV cache was, what it evicted and
    recomputed, what its prefix cache saved) and what it counted, beside the client's own counts."""

    server_metrics_source: Optional[str] = col("whose metric names were read (vllm, sglang), when the server's "
                                               "/metrics was scraped")
    num_server_running_mean: Optional[float] = col("mean of the requests the server ran at once (its batch) "
                                                        "over the window's scrapes")
    num_server_waiting_mean: Optional[float] = col("mean of the requests queued in the server for a slot over "
                                                        "the window's scrapes")
    server_kv_cache_usage_pct_mean: Optional[float] = col("mean KV-cache usage over the window's scrapes (%)")
    server_kv_cache_usage_pct_peak: Optional[float] = col("highest KV-cache usage a scrape in the window saw (%)")
    num_server_preemptions: Optional[int] = col("requests the server preempted in the window (evicted from the KV "
                                            "cache, to be recomputed): its counter's rise")
    server_prefix_cache_hit_pct: Optional[float] = col("prompt tokens found in the server's prefix cache, as % of "
                                                       "those looked up, in the window")
    server_prompt_tokens: Optional[int] = col("prompt tokens the server counted in the window (beside "
                                              "input_tokens_total: the client's own count)")
    server_generated_tokens: Optional[int] = col("tokens the server counted as generated in the window (beside "
                                                 "output_tokens_total; a difference is flagged server_tokens_differ)")
    num_server_scrapes: Optional[int] = col("scrapes of /metrics answered during the window")
    num_server_scrapes_failed: Optional[int] = col("scrapes of /metrics sent during the window that failed or "
                                                       "timed out: gaps in the time series")
    server_metrics_null_reason: Optional[str] = col("why columns of this part are null, each named, when "
                                                    "any is")


@dataclass
class EnginePrefixCache:
    """The engine's own prefix cache over the window, as it counts it in llem's process (a server's is
    server_prefix_cache_hit_pct): what a shared prefix (dataset=shared_prefix) actually saved."""

    engine_prefix_cache_hit_pct: Optional[float] = col("prompt tokens the engine found in its prefix cache, as % of "
                                                       "those it looked up, in the window (in llem's process)")
    engine_prefix_cache_null_reason: Optional[str] = col("why engine_prefix_cache_hit_pct is null")
