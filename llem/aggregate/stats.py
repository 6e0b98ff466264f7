"""Statistics per configuration: across-repeat means with bootstrap CIs, and percentiles pooled
from the raw request rows.

A configuration is every ``cfg.*`` column except the ones that do not change what is measured
(repeat, seed, and debugging/sweeper switches). For each configuration:

- per-job metrics (J/token, tok/s, power, and each job's own latency percentiles) get n, mean,
  std and a seeded percentile-bootstrap 95% CI of the mean across its successful jobs;
- latency percentiles (TTFT p50/p99, ITL p50, e2e p50) are computed once over *all* request
  rows (ITL: all inter-token gaps) of its successful jobs — never by averaging job percentiles;
- the doubt flags its successful jobs raised (:mod:`llem.aggregate.doubt`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Dict, List, Sequence

import numpy as np

from llem.aggregate.doubt import summarise_flags
from llem.results.row import part_columns
from llem.results.schema import columns_of
from llem.results.tables import RequestRow

NOT_CONFIG = ("cfg.repeat", "cfg.seed", "cfg.isolate", "cfg.progress")
NOT_CONFIG_PREFIXES = ("cfg.objective.", "cfg.sweep.")  # the run order measures nothing: repeats pool across it
# Derived from the column declarations (llem.results): per-job metrics summarised across repeats, and
# latency percentiles pooled over every request row.
REPEAT_METRICS = [c.name for c in part_columns() if c.summary]
POOLED = {f"{c.name}_p{q}": (c.name, q) for c in columns_of(RequestRow) for q in c.pooled}
BOOTSTRAP_RESAMPLES = 2000


def group_columns(columns: Sequence[str]) -> List[str]:
    return [c for c in columns if c.startswith("cfg.") and c not in NOT_CONFIG
            and not c.startswith(NOT_CONFIG_PREFIXES)]


def config_keys(runs, columns: List[str]) -> object:
    """A short hash per job of its configuration values (jobs of one configuration share it)."""
    values = runs[columns].astype(object).where(runs[columns].notna(), None).to_dict("records")
    return [hashlib.sha1(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()[:12] for v in values]


def bootstrap_ci(groups: List[np.ndarray], seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> np.ndarray:
    """(low, high) 95% percentile-bootstrap CI of the mean for each array; NaN where n < 2.

    Arrays of equal length are resampled together with one index draw, so thousands of
    configurations cost a few vectorised operations.
    """
    rng = np.random.default_rng(seed)
    out = np.full((len(groups), 2), np.nan)
    by_n: Dict[int, List[int]] = {}
    for i, g in enumerate(groups):
        by_n.setdefault(len(g), []).append(i)
    for n, members in sorted(by_n.items()):
        if n < 2:
            continue
        idx = rng.integers(0, n, size=(resamples, n))
        for chunk in range(0, len(members), 256):
            part = members[chunk:chunk + 256]
            values = np.stack([groups[i] for i in part])  # (g, n)
            means = values[:, idx].mean(axis=2)  # (g, resamples)
            out[part] = np.percentile(means, [2.5, 97.5], axis=1).T
    return out


def _pooled(requests, key_of_job: Dict[str, str]) -> Dict[str, Dict[str, float]]:
    """Percentiles over every raw request row (ITL: every gap) of each configuration."""
    import pyarrow.compute as pc

    out: Dict[str, Dict[str, float]] = {}
    if requests.num_rows == 0:
        return out
    keys = np.array([key_of_job.get(k, "") for k in requests.column("job_key").to_pylist()], dtype=object)
    rows_of: Dict[str, np.ndarray] = {}
    order = np.argsort(keys.astype(str), kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], len(order)]):
        if sorted_keys[s]:
            rows_of[sorted_keys[s]] = order[s:e]
    scalars = {c: requests.column(c).to_numpy().astype(float)
               for c in sorted({column for column, _ in POOLED.values()} - {"itl_ms"}) if c in requests.column_names}
    itl_values = itl_offsets = None
    if "itl_ms" in requests.column_names:  # every gap, addressed by each row's offsets (no copies)
        itl = requests.column("itl_ms").combine_chunks()
        itl_offsets = itl.offsets.to_numpy()
        itl_values = pc.fill_null(itl.values, np.nan).to_numpy()
        valid = pc.is_valid(itl).to_numpy(zero_copy_only=False)
    for key, rows in rows_of.items():
        stats: Dict[str, float] = {}
        for name, (column, q) in POOLED.items():
            if column == "itl_ms":
                if itl_values is None:
                    continue
                rows_v = rows[valid[rows]]
                values = np.concatenate([itl_values[itl_offsets[r]:itl_offsets[r + 1]] for r in rows_v]) \
                    if len(rows_v) else np.array([])
            elif column in scalars:
                values = scalars[column][rows]
            else:
                continue
            values = values[~np.isnan(values)]
            stats[name] = float(np.percentile(values, q)) if values.size else np.nan
        out[key] = stats
    return out


def summarise(runs, requests, seed: int = 0):
    """One row per configuration (pandas DataFrame), sorted by its varying settings."""
    import pandas as pd

    cols = group_columns(runs.columns)
    ok = runs[runs["status"] == "ok"]
    first = runs.groupby("config_key", sort=False)[cols].first()
    counts = pd.crosstab(runs["config_key"], runs["status"]).reindex(first.index, fill_value=0)
    summary = first.copy()
    summary["n_jobs"] = counts.sum(axis=1)
    for status in ("ok", "failed", "incomplete"):
        summary[f"n_{status}"] = counts[status] if status in counts else 0
    positions = ok.groupby("config_key", sort=False).indices
    keys = list(summary.index)
    for name, values in summarise_flags(ok, keys).items():
        summary[name] = values
    for metric in REPEAT_METRICS:
        if metric not in ok.columns:
            continue
        column = ok[metric].to_numpy(dtype=float, na_value=np.nan)
        arrays = []
        for key in keys:
            v = column[positions[key]] if key in positions else np.array([])
            arrays.append(v[~np.isnan(v)])
        ci = bootstrap_ci(arrays, seed)
        summary[f"{metric}_n"] = [len(a) for a in arrays]
        summary[f"{metric}_mean"] = [a.mean() if len(a) else np.nan for a in arrays]
        summary[f"{metric}_std"] = [a.std(ddof=1) if len(a) > 1 else np.nan for a in arrays]
        summary[f"{metric}_ci95_low"] = ci[:, 0]
        summary[f"{metric}_ci95_high"] = ci[:, 1]
    pooled = _pooled(requests, dict(zip(ok["job_key"], ok["config_key"])))
    for name in POOLED:
        summary[name] = [pooled.get(k, {}).get(name, np.nan) for k in keys]
    summary = summary.reset_index()
    varying = varying_columns(summary)
    return summary.sort_values(varying or ["config_key"], kind="stable").reset_index(drop=True)


def varying_columns(summary) -> List[str]:
    """The configuration columns whose value differs between configurations."""
    cols = group_columns(summary.columns)
    return [c for c in cols if summary[c].dropna().astype(str).nunique() > 1]
