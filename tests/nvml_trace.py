"""The recorded NVML trace the fake GPUs replay, read from its CSV.

``tests/data/nvml_trace_h100.csv``: 887 rows sampled every ~20 ms on an H100 80GB (4 s idle, 6 s heavy bf16
matmul, 6 s light kernels, 6 s idle), with phase labels, the energy counter, both power readings, temperature,
clocks, utilisation, memory and clock-event reasons.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List

TRACE_PATH = Path(__file__).resolve().parent / "data" / "nvml_trace_h100.csv"
TRACE_INT_COLUMNS = (
    "energy_counter_mj",
    "power_usage_mw",
    "power_average_field_mw",
    "power_instant_field_mw",
    "temperature_c",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "gpu_util_pct",
    "mem_util_pct",
    "memory_used_mb",
    "throttle_reasons",
)


class TraceMissing(RuntimeError):
    pass


def load_trace(path: Path = TRACE_PATH) -> List[Dict[str, object]]:
    """The trace's rows, with ``t_s`` a float and the readings ints."""
    if not path.is_file():
        raise TraceMissing(f"NVML trace not found at {path}: it ships with the tests (tests/data/)")
    rows: List[Dict[str, object]] = []
    with path.open(newline="") as fh:
        for raw in csv.DictReader(fh):
            row: Dict[str, object] = {"t_s": float(raw["t_s"]), "phase": raw["phase"]}
            for col in TRACE_INT_COLUMNS:
                row[col] = int(raw[col])
            rows.append(row)
    if not rows:
        raise TraceMissing(f"NVML trace at {path} has no rows")
    return rows
