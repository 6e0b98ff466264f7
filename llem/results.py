"""Result files of one job, written atomically, and the columns' types.

``results.parquet`` (one row) is written last: it is the job's commit marker. Each file is
written to a temporary name in the same directory, fsynced and renamed, so a job killed
mid-write never leaves a file that reads as a success.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

RESULTS = "results.parquet"
REQUESTS = "requests.parquet"
TIMESERIES = "timeseries.parquet"

# Measured columns whose type must not depend on whether a value was measured (null-safe).
_FLOAT = [
    "load_s", "load_energy_j", "warmup_s", "warmup_energy_j", "window_s", "output_tok_per_s", "total_tok_per_s",
    "requests_per_s", "ttft_ms_mean", "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99", "e2e_ms_mean", "e2e_ms_p50",
    "e2e_ms_p99", "itl_ms_mean", "itl_ms_p50", "itl_ms_p99", "tpot_ms_mean", "gpu_energy_j",
    "gpu_energy_integrated_j", "energy_integral_vs_counter_pct", "device_idle_power_w", "loaded_idle_power_w",
    "baseline_power_w", "baseline_energy_j", "gpu_energy_adjusted_j", "j_per_output_token",
    "j_per_output_token_raw", "j_per_request", "output_tokens_per_j", "avg_power_w", "peak_power_w",
    "gpu_memory_allocated_peak_mb", "gpu_memory_used_peak_mb", "cpu_rss_peak_mb", "flops_estimate",
    "env.gpu_power_limit_w", "env.gpu_memory_total_mb", "warmup_latency_cv", "padding_overhead_pct",
    "prefill_s", "prefill_energy_j", "prefill_energy_adjusted_j", "prefill_j_per_input_token", "decode_s",
    "decode_energy_j", "decode_energy_adjusted_j", "decode_j_per_output_token", "steady_state_s",
    "steady_state_output_tok_per_s", "steady_state_energy_j", "steady_state_energy_adjusted_j",
    "steady_state_j_per_output_token", "cpu_energy_j", "ram_energy_j", "load_cpu_energy_j", "load_ram_energy_j",
    "prefill_cpu_energy_j", "prefill_ram_energy_j", "energy_total_j", "carbon_intensity_g_per_kwh", "co2_g",
]
_INT = ["num_requests", "input_tokens_total", "output_tokens_total", "output_tokens_expected",
        "model_parameters", "model_weight_bytes", "timeseries_rows", "warmup_batches_run", "tokens_computed",
        "tokens_requested", "steady_state_output_tokens"]
_LIST_FLOAT = ["gpu_energy_j_per_gpu", "device_idle_power_w_per_gpu", "loaded_idle_power_w_per_gpu"]
_STR = ["status", "error", "error_type", "error_stage", "energy_method", "energy_null_reason", "baseline_kind",
        "config_hash", "started_at", "steady_state_null_reason", "weight_precision", "compute_precision",
        "cpu_energy_method", "ram_energy_method", "host_energy_null_reason"]


def _schema_for(row: Dict[str, Any]):
    import pyarrow as pa

    fields = []
    for name, value in row.items():
        if name in _FLOAT:
            t = pa.float64()
        elif name in _INT:
            t = pa.int64()
        elif name in _LIST_FLOAT:
            t = pa.list_(pa.float64())
        elif name in ("warnings", "flags"):
            t = pa.list_(pa.string())
        elif name in _STR or value is None:
            t = pa.string()
        else:
            t = None
        fields.append((name, t))
    return fields


def results_table(row: Dict[str, Any]):
    """A one-row Arrow table with stable types for measured columns (null stays typed)."""
    import pyarrow as pa

    arrays, names = [], []
    for name, t in _schema_for(row):
        arrays.append(pa.array([row[name]], type=t))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def write_atomic(table, path: Path, **options) -> None:
    """Write ``table`` to ``path`` via a temporary file, fsync and rename (``options``: write_table's)."""
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, **options)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _schema(columns: List[tuple]):
    import pyarrow as pa

    types = {"f": pa.float64(), "i": pa.int64(), "s": pa.string(), "lf": pa.list_(pa.float64())}
    return pa.schema([(name, types[t]) for name, t in columns])


# (column, type): f float64, i int64, s string, lf list<float64>
REQUEST_COLUMNS = [("request_id", "i"), ("batch_index", "i"), ("process_index", "i"), ("input_tokens", "i"),
                   ("output_tokens", "i"), ("start_offset_s", "f"), ("ttft_ms", "f"), ("e2e_ms", "f"),
                   ("tpot_ms", "f"), ("itl_ms", "lf"), ("timing_note", "s")]
TIMESERIES_COLUMNS = [("t_s", "f"), ("phase", "s"), ("gpu_index", "i"), ("energy_counter_mj", "i"),
                      ("power_instant_w", "f"), ("power_average_w", "f"), ("temperature_c", "f"),
                      ("sm_clock_mhz", "f"), ("gpu_util_pct", "f"), ("mem_util_pct", "f"), ("memory_used_mb", "f"),
                      ("clock_event_reasons", "i"), ("cpu_util_pct", "f"), ("rss_mb", "f")]


def write_rows(rows: List[Dict[str, Any]], path: Path, columns: List[tuple]) -> None:
    """Many rows (requests, time series) → Parquet with a fixed schema (empty is fine)."""
    import pyarrow as pa

    schema = _schema(columns)
    table = pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)
    write_atomic(table, path)


# A one-row file gains nothing from column statistics or the embedded Arrow schema (the Parquet
# types carry ours), and both cost read time: aggregating thousands of jobs reads thousands of these.
ONE_ROW_OPTIONS = {"write_statistics": False, "store_schema": False}


def write_result(row: Dict[str, Any], job_dir: Path) -> Path:
    path = job_dir / RESULTS
    write_atomic(results_table(row), path, **ONE_ROW_OPTIONS)
    return path


def read_result(job_dir: Path) -> Optional[Dict[str, Any]]:
    """The job's result row, or None when there is none (or it cannot be read)."""
    path = job_dir / RESULTS
    if not path.is_file():
        return None
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    except Exception:
        return None
    return rows[0] if rows else None
