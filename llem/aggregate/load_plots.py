"""The figure of a request-rate sweep: J/token and latency against the achieved request rate, one line
per series (engine, model, other settings), doubt-flagged configurations hollow."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from llem.aggregate import plot_parts as parts
from llem.aggregate.capacity import RATE
from llem.aggregate.stats import varying_columns


def _series(summary) -> List[tuple]:
    keys = [c for c in ["cfg.backend.name", "cfg.model.name", *varying_columns(summary)]
            if c in summary.columns and c != RATE]
    out = []
    for values, rows in summary.groupby(list(dict.fromkeys(keys)), dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        out.append((" ".join(str(v) for v in values), rows.sort_values("requests_per_s_mean")))
    return out


def has_rates(summary) -> bool:
    return RATE in summary.columns and summary[RATE].astype(float).nunique() > 1 and \
        "requests_per_s_mean" in summary.columns


def load_curves(summary, path: Path) -> Path:
    plt = parts.plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    any_flagged = False
    for label, rows in _series(summary):
        x = rows["requests_per_s_mean"].to_numpy(float)
        flagged = parts.flagged(rows)
        any_flagged |= bool(flagged.any())
        y, yerr = parts.errorbars(rows, "j_per_output_token")
        if np.isfinite(y).any():
            parts.points(axes[0], x, y, None, yerr, flagged, label)
        for metric, style in (("ttft_ms_p99", "-"), ("itl_ms_p50", ":")):
            if metric in rows.columns:
                axes[1].plot(x, rows[metric].to_numpy(float), style, marker="o", label=f"{label} {metric}")
    axes[0].set(xlabel="achieved request rate (requests/s)", ylabel="J per output token (adjusted)",
                title="energy per output token against load")
    axes[1].set(xlabel="achieved request rate (requests/s)", ylabel="ms", title="TTFT p99 and ITL p50 against load")
    if not axes[0].lines:
        parts.no_data(axes[0], "no J/token (energy was not measured)")
    else:
        parts.legend(axes[0], any_flagged)
    if axes[1].lines:
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    return parts.save(fig, path)
