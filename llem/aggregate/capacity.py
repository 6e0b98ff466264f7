"""Capacity over a request-rate sweep: the highest ``load.request_rate`` whose configuration meets every
``--slo`` bound, with its achieved rate, J/token and J/request (means and 95 % CIs across repeats).

The sweep's other settings (engine, model, batch, …) split it into series; in each, the finite rates
(open loop) are read in increasing order. ``inf`` is no rate: a burst (every request at once) or a closed
loop (``load.max_concurrency`` requests in flight) is shown beside the series, never named its capacity.
When the highest rate tried still meets the bounds the capacity is not found, and the line says to try
higher rates. A doubt-flagged configuration is never given as the capacity without its flags."""

from __future__ import annotations

import math
from typing import Optional, Sequence

from llem.aggregate.doubt import MARK, flag_text, is_flagged
from llem.aggregate.recommend import Bound, value_column
from llem.aggregate.stats import varying_columns

RATE = "cfg.load.request_rate"
CAP = "cfg.load.max_concurrency"


def _ci(row, metric: str, unit: str) -> str:
    mean = row.get(f"{metric}_mean")
    if mean is None or mean != mean:
        return "n/a"
    lo, hi = row.get(f"{metric}_ci95_low"), row.get(f"{metric}_ci95_high")
    ci = f" [95% CI {lo:.4g}, {hi:.4g}]" if lo is not None and lo == lo else " (one repeat: no CI)"
    return f"{mean:.4g} {unit}{ci}"


def _rate(value: float) -> str:
    return "inf" if value == math.inf else f"{value:g} req/s"


def _mode(row) -> str:
    """How a row's load was made: open (a rate), burst (inf, no cap) or closed (inf with a concurrency cap)."""
    if row["_rate"] != math.inf:
        return "open"
    cap = row.get(CAP)
    return "closed" if cap is not None and cap == cap else "burst"


def _shown(row) -> str:
    """A load that is no rate, named as such: ``inf (burst)`` or ``inf (closed loop, 8 in flight)``."""
    if _mode(row) == "closed":
        return f"inf (closed loop, {int(row[CAP])} in flight)"
    return "inf (burst: every request at once)"


def capacity_text(summary, bounds: Sequence[Bound]) -> Optional[str]:
    """The capacity lines, or None when the aggregate holds no sweep over load.request_rate."""
    if RATE not in summary.columns or summary[RATE].astype(float).nunique() < 2:
        return None
    others = [c for c in ["cfg.backend.name", "cfg.model.name", *varying_columns(summary)]
              if c in summary.columns and c not in (RATE, CAP)]
    others = list(dict.fromkeys(others))
    lines = [f"== capacity under {', '.join(map(str, bounds))}: the highest load.request_rate meeting every bound =="]
    for values, group in summary.groupby(others, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        label = " ".join(f"{k.removeprefix('cfg.')}={v}" for k, v in zip(others, values))
        group = group.assign(_rate=group[RATE].astype(float)).sort_values("_rate", kind="stable")
        meets_all = [all(b.ok(r[value_column(group, b.metric)]) for b in bounds) for _, r in group.iterrows()]
        rated = [(r, ok) for (_, r), ok in zip(group.iterrows(), meets_all) if _mode(r) == "open"]
        lines.append(_series_line(label, rated, bounds, group))
        if rated and any(ok for _, ok in rated):
            best = [r for r, ok in rated if ok][-1]
            if is_flagged(best):
                lines.append(f"    {MARK} doubt-flagged: {flag_text(best, limit=0)}")
        for (_, r), ok in zip(group.iterrows(), meets_all):
            if _mode(r) != "open":
                lines.append(f"    {_shown(r)} {'meets' if ok else 'breaks'} the bounds; not a rate, so never the "
                             f"capacity ({_seen(r, bounds, group)})")
    return "\n".join(lines)


def _seen(row, bounds: Sequence[Bound], group) -> str:
    return ", ".join(f"{b.metric}={row[value_column(group, b.metric)]:.4g}" for b in bounds)


def _series_line(label: str, rated, bounds: Sequence[Bound], group) -> str:
    """One series' capacity among the rates tried (the open-loop rows, in increasing rate)."""
    if not rated:
        return f"{label}: capacity not found: no finite load.request_rate was tried"
    meets = [ok for _, ok in rated]
    if not any(meets):
        return f"{label}: capacity not found: no rate tried meets every bound (from {_rate(rated[0][0]['_rate'])})"
    if meets[-1]:
        top = rated[-1][0]["_rate"]
        return (f"{label}: capacity not found: the highest rate tried, {_rate(top)}, still met it — try higher "
                f"rates ({_seen(rated[-1][0], bounds, group)})")
    last = len(meets) - 1 - meets[::-1].index(True)
    best = rated[last][0]
    achieved = best.get("requests_per_s_mean")
    got = f", {achieved:.3g} req/s achieved" if achieved is not None and achieved == achieved else ""
    line = (f"{label}: {_rate(best['_rate'])}{got}; J/token {_ci(best, 'j_per_output_token', 'J')}, "
            f"J/request {_ci(best, 'j_per_request', 'J')}; {_seen(best, bounds, group)}")
    broken = [_rate(r["_rate"]) for r, ok in rated[:last] if not ok]
    if broken:
        line += f" (but {', '.join(broken)}, lower, breaks a bound: the margin is thin or the runs are noisy)"
    return line
