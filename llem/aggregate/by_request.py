"""Energy per request grouped by a request column (``--by-request COLUMN[:BINS]``): for each configuration
and each group of its requests — a value of ``request_class``, or a bin of a numeric column such as
``input_tokens`` — the requests' mean adjusted energy with a bootstrap 95% CI, under the rule each job
applied (``energy_adjusted_j``) and under the output-token rule beside it.

BINS: ``N`` (an integer ≥ 2: N bins of about equal counts, cut at the column's quantiles over every
request) or ascending edges ``a,b,c`` (bins [a, b), [b, c); ``inf`` allowed). Without BINS each value is
its own group. Only requests without an ``error`` of successful jobs are counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from llem.aggregate.stats import bootstrap_ci, varying_columns

ENERGY = ("energy_adjusted_j", "energy_output_tokens_rule_adjusted_j")  # the chosen rule, the output-token rule


@dataclass
class ByRequest:
    """What --by-request asked for: the column, and its bins (a count or edges; neither: by value)."""

    column: str
    bins: Optional[int] = None
    edges: Optional[List[float]] = None


def parse(text: str) -> ByRequest:
    """``COLUMN``, ``COLUMN:N`` or ``COLUMN:a,b,c``; ValueError saying what is allowed."""
    column, _, spec = text.partition(":")
    allowed = ("allowed COLUMN, COLUMN:N (N >= 2 bins of equal counts) or COLUMN:a,b,c (ascending bin edges), "
               "e.g. input_tokens:0,512,2048,inf or request_class")
    if not column:
        raise ValueError(f"--by-request {text!r}: no column; {allowed}")
    if not spec:
        return ByRequest(column)
    try:
        if "," not in spec:
            count = int(spec)
            if count < 2:
                raise ValueError
            return ByRequest(column, bins=count)
        edges = [float(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"--by-request {text!r}: bins {spec!r} are invalid; {allowed}") from None
    if any(math.isnan(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"--by-request {text!r}: bin edges must be ascending numbers; {allowed}")
    return ByRequest(column, edges=edges)


def check(spec: ByRequest, requests) -> None:
    """The column against the aggregated requests (a pyarrow Table); ValueError naming those allowed."""
    import pyarrow as pa

    names = [n for n in requests.column_names if n != "job_key"]
    if spec.column not in names:
        raise ValueError(f"--by-request: no request column {spec.column!r}; allowed: {', '.join(names)}")
    kind = requests.schema.field(spec.column).type
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
    if (spec.bins or spec.edges) and not numeric:
        raise ValueError(f"--by-request: {spec.column!r} is not numeric ({kind}): bins need a numeric column; "
                         "give it without bins to group by its values")


def _groups(values, spec: ByRequest):
    """Each request's group label (None: outside every bin or null), in the order of ``values``."""
    import pandas as pd

    if spec.bins is None and spec.edges is None:
        return values.astype(object).where(values.notna(), None)
    numbers = pd.to_numeric(values, errors="coerce")
    edges, last = spec.edges, None
    if edges is None:
        qs = np.nanquantile(numbers.to_numpy(dtype=float), np.linspace(0, 1, spec.bins + 1))
        edges = sorted(set(float(q) for q in qs if not math.isnan(q))) or [0.0]
        last = edges[-1]  # the largest value falls in the last bin, closed on the right
        top = math.nextafter(last, math.inf)
        edges = edges[:-1] + [top] if len(edges) > 1 else edges + [top]
    names = [f"[{_g(a)}, {_g(b)})" for a, b in zip(edges, edges[1:])]
    if last is not None:
        names[-1] = f"[{_g(edges[-2])}, {_g(last)}]"
    cut = pd.cut(numbers, edges, right=False, labels=names)
    return cut.astype(object).where(cut.notna(), None)


def _g(x: float) -> str:
    return f"{x:g}"


def table(runs, summary, requests, spec: ByRequest, seed: int = 0) -> List[str]:
    """The printed lines: per configuration, per group, n and mean [CI] J per request under each rule."""
    frame = requests.to_pandas()
    ok = runs[runs["status"] == "ok"]
    config_of = dict(zip(ok["job_key"], ok["config_key"]))
    frame = frame[frame["job_key"].isin(config_of.keys())]
    if "error" in frame.columns:
        frame = frame[frame["error"].isna()]
    frame = frame.assign(_config=frame["job_key"].map(config_of), _group=_groups(frame[spec.column], spec))
    frame = frame[frame["_group"].notna()]
    settings = varying_columns(summary)
    lines = [f"energy per request by {spec.column} (adjusted J, mean [95% CI]; the rule each job applied, then "
             "by output tokens alone):"]
    for _, conf in summary.iterrows():
        mine = frame[frame["_config"] == conf["config_key"]]
        if mine.empty:
            continue
        label = " ".join(f"{c.removeprefix('cfg.')}={conf[c]}" for c in settings) or conf["config_key"]
        lines.append(f"  {label}")
        for group, rows in sorted(mine.groupby("_group", sort=False), key=lambda g: _order(g[0], spec)):
            cells = [_mean_ci(rows[c] if c in rows.columns else None, seed) for c in ENERGY]
            lines.append(f"    {spec.column}={group}: n={len(rows)}  {cells[0]}  (output-token rule {cells[1]})")
    if len(lines) == 1:
        lines.append("  no successful request to group")
    return lines


def _order(group, spec: ByRequest):
    if spec.bins is None and spec.edges is None:
        return (0, group) if isinstance(group, (int, float)) else (1, str(group))
    return (0, float(str(group)[1:].split(",")[0]))


def _mean_ci(values: Optional[Sequence[float]], seed: int) -> str:
    if values is None:
        return "n/a (no such column)"
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return "n/a (no energy)"
    low, high = bootstrap_ci([v], seed)[0]
    ci = f" [{low:.4g}, {high:.4g}]" if not math.isnan(low) else ""
    return f"{v.mean():.4g} J{ci}"
