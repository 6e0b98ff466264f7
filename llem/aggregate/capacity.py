"""Capacity over a request-rate sweep: the highest ``load.request_rate`` whose configuration meets every
``--slo`` bound, with its achieved rate, J/token and J/request (means and 95 % CIs across repeats).

The sweep's other settings (engine, model, batch, …) split it into series; in each, rates are read in
increasing order (``inf``, all at once, last: the throughput ceiling). A doubt-flagged configuration is
never given as the capacity without its flags."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

from llem.aggregate.doubt import MARK, flag_text, is_flagged
from llem.aggregate.recommend import Bound, value_column
from llem.aggregate.stats import varying_columns

RATE = "cfg.load.request_rate"


def _ci(row, metric: str, unit: str) -> str:
    mean = row.get(f"{metric}_mean")
    if mean is None or mean != mean:
        return "n/a"
    lo, hi = row.get(f"{metric}_ci95_low"), row.get(f"{metric}_ci95_high")
    ci = f" [95% CI {lo:.4g}, {hi:.4g}]" if lo is not None and lo == lo else " (one repeat: no CI)"
    return f"{mean:.4g} {unit}{ci}"


def _rate(value: float) -> str:
    return "inf (all at once)" if value == math.inf else f"{value:g} req/s"


def capacity_text(summary, bounds: Sequence[Bound]) -> Optional[str]:
    """The capacity lines, or None when the aggregate holds no sweep over load.request_rate."""
    if RATE not in summary.columns or summary[RATE].astype(float).nunique() < 2:
        return None
    others = [c for c in ["cfg.backend.name", "cfg.model.name", *varying_columns(summary)]
              if c in summary.columns and c != RATE]
    others = list(dict.fromkeys(others))
    lines = [f"== capacity under {', '.join(map(str, bounds))}: the highest load.request_rate meeting every bound =="]
    for values, group in summary.groupby(others, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        label = " ".join(f"{k.removeprefix('cfg.')}={v}" for k, v in zip(others, values))
        group = group.assign(_rate=group[RATE].astype(float)).sort_values("_rate", kind="stable")
        meets: List[bool] = [all(b.ok(r[value_column(group, b.metric)]) for b in bounds) for _, r in group.iterrows()]
        if not any(meets):
            lines.append(f"{label}: no rate tried meets every bound (from {_rate(group['_rate'].iloc[0])})")
            continue
        best = group[meets].iloc[-1]
        achieved = best.get("requests_per_s_mean")
        got = f", {achieved:.3g} req/s achieved" if achieved is not None and achieved == achieved else ""
        seen = ", ".join(f"{b.metric}={best[value_column(group, b.metric)]:.4g}" for b in bounds)
        line = (f"{label}: {_rate(best['_rate'])}{got}; J/token {_ci(best, 'j_per_output_token', 'J')}, "
                f"J/request {_ci(best, 'j_per_request', 'J')}; {seen}")
        last = len(meets) - 1 - meets[::-1].index(True)
        broken = [_rate(r) for r, ok in zip(group["_rate"], meets[:last]) if not ok]
        if all(meets):
            line += f" (every rate tried meets the bounds: the capacity is at least {_rate(best['_rate'])})"
        elif broken:
            line += f" (but {', '.join(broken)}, lower, breaks a bound: the margin is thin or the runs are noisy)"
        lines.append(line)
        if is_flagged(best):
            lines.append(f"    {MARK} doubt-flagged: {flag_text(best, limit=0)}")
    return "\n".join(lines)
