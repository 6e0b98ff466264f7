"""The result parts computed from a measured window: throughput, padding, GPU energy and the idle
floors, energy per unit of work, memory, model facts, latency. Pure assembly from what the window
recorded (the engine is asked only for its counts, memory peak and facts)."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from llem.backends.base import EngineInfo
from llem.config import Config
from llem.energy.idle import DeviceIdle, taken_at_iso
from llem.energy.window import Sampler, WindowEnergy
from llem.measure import metrics
from llem.results.load import EnginePrefixCache
from llem.results.row import (
    Baselines,
    EnergySummary,
    GpuEnergy,
    Latency,
    Memory,
    ModelFacts,
    Padding,
    Throughput,
)
from llem.results.tables import RequestRow
from llem.workload.records import RequestResult


def window_parts(cfg: Config, engine, work, outputs: List[RequestResult], req_rows: List[RequestRow],
                 window: WindowEnergy, loaded_idle: Optional[WindowEnergy], sampler: Sampler, info: EngineInfo,
                 device_idle: DeviceIdle, warnings: List[str]) -> Dict[type, Any]:
    """The parts computed from the measured window; what a person should know goes into ``warnings``."""
    out_tokens = sum(o.output_tokens for o in outputs)
    in_tokens = sum(o.input_tokens for o in outputs)
    expected = sum(r.output_len or cfg.output_len for r in work.requests)
    if out_tokens != expected:
        warnings.append(f"engine returned {out_tokens} output tokens, expected {expected}")
    missing = {o.timing_note for o in outputs if o.timing_note}
    warnings.extend(f"request timing: {m}" for m in sorted(missing))
    warnings.extend(window.warnings)
    s = window.duration_s
    gpu = GpuEnergy(
        energy_method=window.method, energy_null_reason=window.null_reason, gpu_energy_j=window.energy_j,
        gpu_energy_j_per_gpu=window.energy_j_per_gpu or None, gpu_energy_integrated_j=window.integrated_j,
        avg_power_w=window.avg_power_w, peak_power_w=window.peak_power_w)
    if window.integrated_j is not None and window.energy_j and window.method == "nvml_counter":
        gpu.energy_integral_vs_counter_pct = 100.0 * (window.integrated_j - window.energy_j) / window.energy_j
    loaded_w = loaded_idle.avg_power_w if loaded_idle else None
    energy, warns = metrics.energy_summary(
        window.energy_j, s, out_tokens, len(outputs), cfg.baseline.kind.value,
        {"device_idle": device_idle.power_w, "loaded_idle": loaded_w})
    warnings.extend(warns)
    counts = engine.work_counts()
    rss = [r["rss_mib"] for r in sampler.rows if r.get("rss_mib") is not None]
    return {
        Throughput: Throughput(output_tokens_total=out_tokens, output_tokens_expected=expected, window_s=s,
                               output_tok_per_s=out_tokens / s, total_tok_per_s=(out_tokens + in_tokens) / s,
                               requests_per_s=sum(1 for o in outputs if not o.error) / s),
        Padding: Padding() if counts is None else Padding(
            tokens_computed=counts.tokens_computed, tokens_requested=counts.tokens_requested,
            padding_overhead_pct=100.0 * (counts.tokens_computed - counts.tokens_requested)
            / counts.tokens_requested if counts.tokens_requested else None),
        GpuEnergy: gpu,
        Baselines: Baselines(
            device_idle_power_w=device_idle.power_w,
            device_idle_power_w_per_gpu=device_idle.power_w_per_gpu or None,
            device_idle_source=device_idle.source, device_idle_taken_at=taken_at_iso(device_idle),
            device_idle_age_s=None if device_idle.taken_at is None else max(
                0.0, time.time() - s - device_idle.taken_at),
            device_idle_job=device_idle.job,
            loaded_idle_power_w=loaded_w,
            loaded_idle_power_w_per_gpu=loaded_idle.power_per_gpu_w if loaded_idle else None),
        EnergySummary: energy,
        Memory: Memory(gpu_memory_allocated_peak_mib=engine.memory_peak_mib(),
                       gpu_memory_used_peak_mib=window.peak_memory_used_mib,
                       **_rss_peak(rss, cfg.server.mode)),
        ModelFacts: ModelFacts(
            model_parameters=info.num_parameters, model_weight_bytes=info.weight_bytes,
            weight_precision=info.weight_precision or cfg.model.dtype.value,
            compute_precision=info.compute_precision or cfg.model.dtype.value,
            flops_estimate=2.0 * info.num_parameters * (in_tokens + out_tokens) if info.num_parameters else None),
        Latency: metrics.latency_summary(req_rows),
        EnginePrefixCache: prefix_cache_part(engine),
    }


def prefix_cache_part(engine) -> EnginePrefixCache:
    """The engine's own prefix-cache hit rate over the window (its last ``generate``), or why there is none."""
    counts, why = engine.prefix_cache()
    if counts is None:
        return EnginePrefixCache(engine_prefix_cache_null_reason=why)
    queried, hit = counts
    if not queried:
        return EnginePrefixCache(engine_prefix_cache_null_reason="the engine looked up no prompt tokens in its "
                                 "prefix cache in the window")
    return EnginePrefixCache(engine_prefix_cache_hit_pct=100.0 * hit / queried)


def _rss_peak(rss: List[float], server_mode: str) -> Dict[str, Any]:
    """The host memory peak of the processes doing the work; none for a server llem did not start."""
    if server_mode == "external":
        return {"cpu_rss_peak_mib": None, "cpu_rss_null_reason": "server=external: the server's processes are not "
                "llem's, so their memory is not measured (timeseries rss_mib is the client's alone)"}
    if not rss:
        return {"cpu_rss_peak_mib": None, "cpu_rss_null_reason": "psutil is not installed"}
    return {"cpu_rss_peak_mib": max(rss), "cpu_rss_null_reason": None}


def timeseries(device_idle_rows: List[Dict[str, Any]], sampler_rows: List[Dict[str, Any]],
               t0: Optional[float]) -> List[Dict[str, Any]]:
    """The job's ``timeseries.parquet`` rows (device-idle samples, then the measurement process's), timed from
    the measured window's start (or the first sample, when there was no window)."""
    rows = device_idle_rows + sampler_rows
    if not rows:
        return []
    origin = t0 if t0 is not None else min(r["t_s"] for r in rows)
    return [{**r, "t_s": r["t_s"] - origin} for r in rows]
