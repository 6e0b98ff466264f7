"""The rows of ``requests.parquet`` (one per request) and ``timeseries.parquet`` (one per sample
of each GPU, of the host, or of the server's /metrics), declared once as dataclasses: the field is the column."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from llem.results.schema import col


@dataclass
class RequestRow:
    request_id: int = col("the request's index in the workload", default=0)
    batch_index: Optional[int] = col("the static batch that served it (PyTorch)")
    process_index: Optional[int] = col("the data-parallel replica that served it")
    input_tokens: int = col("prompt tokens", default=0)
    server_input_tokens: Optional[int] = col("the prompt tokens the server reported processing (usage.prompt_tokens; "
                                             "with server.api=chat its chat template's tokens included); null "
                                             "in-process or where the server sent none")
    output_tokens: int = col("output tokens returned", default=0)
    arrival_offset_s: Optional[float] = col("when it was due (its arrival; a burst: the call's start; a closed "
                                            "loop: when a slot freed), from the window's start (s)")
    start_offset_s: Optional[float] = col("wait from the window's start to the start of its service (s)")
    queue_ms: Optional[float] = col("wait from its due time to the start of its service (ms): a full batch, or "
                                    "load.max_concurrency", pooled=(50, 99))
    lateness_ms: Optional[float] = col("how late the client (or engine) sent it after it could have: its due time, "
                                       "or when its slot freed (ms)")
    output_tokens_requested: Optional[int] = col("the output length it asked for")
    request_class: Optional[str] = col("its class in load.trace (the trace's class field), if it had one")
    prefix_group_index: Optional[int] = col("the group whose shared prefix its prompt starts with "
                                            "(dataset=shared_prefix)")
    conversation_index: Optional[int] = col("the conversation it is a turn of (dataset=conversations)")
    turn_index: Optional[int] = col("its turn in the conversation, from 0 (dataset=conversations)")
    prefix_reusable_tokens: Optional[int] = col("prompt tokens a prefix cache could serve: its group's prefix, 0 "
                                                "for the group's first request (dataset=shared_prefix); the "
                                                "conversation's history, 0 for a first turn "
                                                "(dataset=conversations); what the "
                                                "engine reused is its own count: prompt_tokens_cached")
    ttft_ms: Optional[float] = col("time to first token (ms): from its due time (see load_mode), the queue "
                                   "included, as a client sees it", pooled=(50, 99), label="TTFT", fmt=".1f")
    e2e_ms: Optional[float] = col("end-to-end latency (ms), from its due time (see load_mode), the queue included",
                                  pooled=(50,))
    tpot_ms: Optional[float] = col("time per output token after the first (ms)")
    itl_ms: Optional[List[float]] = col("every inter-token gap (ms)", pooled=(50, 99), label="ITL", fmt=".2f")
    prompt_tokens_cached: Optional[int] = col("prompt tokens the engine or server said it served from its prefix "
                                              "cache (null: it did not say)")
    prompt_tokens_charged: Optional[int] = col("prompt tokens its prefill is charged for: the engine's or server's "
                                               "own count (else input_tokens) less prompt_tokens_cached; null when "
                                               "it got no token (its prefill may never have run: none is charged)")
    energy_j: Optional[float] = col("its share of the window's raw GPU energy (J): each sampling interval split "
                                    "over the requests by the rule energy_attribution names (docs/method.md)")
    energy_adjusted_j: Optional[float] = col("its share of the window's adjusted energy (J), by the same rule")
    energy_prompt_adjusted_j: Optional[float] = col("the prompt term of energy_adjusted_j under the work rule: its "
                                                    "prefill's share (J); null under output_tokens")
    energy_output_adjusted_j: Optional[float] = col("the output term of energy_adjusted_j under the work rule: its "
                                                    "output tokens' share (J); null under output_tokens")
    energy_output_tokens_rule_j: Optional[float] = col("its share of the raw energy by the output_tokens rule, "
                                                       "whichever rule energy_j follows (J)")
    energy_output_tokens_rule_adjusted_j: Optional[float] = col("its share of the adjusted energy by the "
                                                                "output_tokens rule (J)")
    error: Optional[str] = col("why it failed (HTTP status and body, dropped stream, timeout), if it did")
    timing_note: Optional[str] = col("why a timing is missing or came from the host, if so")
    token_count_note: Optional[str] = col("how the server's token count disagreed with the length asked or the "
                                          "tokens streamed, and what was counted (docs/serving.md), if it did")


@dataclass
class TimeseriesRow:
    t_s: float = col("seconds from the measured window's start (negative before it)", default=0.0)
    phase: str = col("device_idle, settle, setup, load, warmup, loaded_idle, measure, prefill", default="")
    gpu_index: Optional[int] = col("NVML index of the GPU (null: a host-only sample)")
    energy_counter_mj: Optional[int] = col("the GPU's hardware energy counter (mJ since the driver loaded)")
    power_instant_w: Optional[float] = col("instant power, NVML field 186 (W)")
    power_average_w: Optional[float] = col("NVML's averaged power, 1 s on Hopper (W)")
    temperature_c: Optional[float] = col("GPU temperature (°C)")
    sm_clock_mhz: Optional[float] = col("SM clock (MHz)")
    gpu_util_pct: Optional[float] = col("GPU utilisation (%)")
    mem_util_pct: Optional[float] = col("memory-controller utilisation (%)")
    memory_used_mib: Optional[float] = col("device memory in use (MiB)")
    clock_event_reasons: Optional[int] = col("NVML clock-event reason bits")
    cpu_util_pct: Optional[float] = col("host CPU utilisation since the previous sample (%)")
    rss_mib: Optional[float] = col("resident memory of the measuring process, plus a launched server's process "
                                   "tree (MiB)")
    # A scrape of the server's Prometheus /metrics (server.metrics) is a row of its own, at its midpoint:
    num_server_running: Optional[float] = col("requests the server was running (its batch), as it said")
    num_server_waiting: Optional[float] = col("requests queued in the server for a slot, as it said")
    server_kv_cache_usage_pct: Optional[float] = col("the server's KV-cache usage (%)")
    server_preemptions_total: Optional[float] = col("the server's preemption counter (since it started)")
    server_prefix_cache_queries_total: Optional[float] = col("prompt tokens the server has looked up in its prefix "
                                                             "cache (counter)")
    server_prefix_cache_hits_total: Optional[float] = col("prompt tokens it found there (counter)")
    server_prompt_tokens_total: Optional[float] = col("prompt tokens the server has counted (counter)")
    server_generation_tokens_total: Optional[float] = col("tokens the server has generated (counter)")
