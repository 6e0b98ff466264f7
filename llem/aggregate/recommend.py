"""The question users ask: which configuration costs the least energy per token while meeting my
latency/throughput bounds? Per model: the Pareto front of J/token against each bounded metric, and
the lowest-J/token configuration that meets every bound, with its CI.

A doubt-flagged configuration is never recommended silently: its flags and what they mean are
spelled out, with the best unflagged alternative beside it; ``--unflagged`` recommends only
unflagged configurations and names a flagged one that reads lower."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import List, Sequence

from llem.aggregate.doubt import MARK, explain, flag_text, is_flagged, n_repeats
from llem.aggregate.stats import POOLED, varying_columns

ENERGY = "j_per_output_token"
_BOUND = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


@dataclass
class Bound:
    metric: str
    op: str
    limit: float

    def ok(self, value) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return value <= self.limit if self.op == "<=" else value >= self.limit

    @property
    def higher_is_better(self) -> bool:
        return self.op == ">="

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.limit:g}"


_UNIT_LAST = re.compile(r"^(\w+?)_(p\d+|mean)_(ms|s|w|j)$")  # ttft_p99_ms → ttft_ms_p99, as the columns read


def parse_bounds(texts: Sequence[str]) -> List[Bound]:
    bounds = []
    for text in texts:
        m = _BOUND.match(text)
        if not m:
            raise ValueError(f"--slo {text!r}: expected METRIC<=NUMBER or METRIC>=NUMBER, e.g. ttft_ms_p99<=500")
        metric = _UNIT_LAST.sub(r"\1_\3_\2", m.group(1))
        bounds.append(Bound(metric, m.group(2), float(m.group(3))))
    return bounds


ALLOWED = "a numeric results column such as ttft_ms_p99, output_tok_per_s, itl_ms_p50, avg_power_w"


def value_column(summary, metric: str) -> str:
    """The summary column a bound on ``metric`` reads: pooled percentiles, else the repeat mean. A bound
    compares numbers: a column of text, lists or flags is refused (ValueError naming it)."""
    if metric in POOLED and metric in summary.columns:
        column = metric
    elif f"{metric}_mean" in summary.columns:
        column = f"{metric}_mean"
    elif metric in summary.columns:
        column = metric
    else:
        raise ValueError(f"--slo: unknown metric {metric!r}; use {ALLOWED}")
    values = summary[column].dropna()
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        kind = type(next(v for v in values if not isinstance(v, numbers.Real) or isinstance(v, bool))).__name__
        raise ValueError(f"--slo: {metric!r} is not a number (its column {column!r} holds {kind} values): "
                         f"a bound needs {ALLOWED}")
    return column


def pareto_front(summary, column: str, higher_is_better: bool):
    """Rows not dominated in (lower J/token, better ``column``), sorted by J/token."""
    rows = summary.dropna(subset=[f"{ENERGY}_mean", column]).sort_values(f"{ENERGY}_mean", kind="stable")
    front, best = [], None
    for idx, r in rows.iterrows():
        v = r[column] if higher_is_better else -r[column]
        if best is None or v > best:
            front.append(idx)
            best = v
    return rows.loc[front]


def _label(row, settings: List[str]) -> str:
    return " ".join(f"{c.removeprefix('cfg.')}={row[c]}" for c in settings)


def _flag_note(row) -> str:
    return f"  {MARK} flags: {flag_text(row, limit=0)}" if is_flagged(row) else ""


def _choice(best, settings: List[str], bounds: Sequence[Bound], group) -> str:
    """A configuration in one line: its settings, J/token with its CI and n, each bounded metric."""
    lo, hi = best.get(f"{ENERGY}_ci95_low"), best.get(f"{ENERGY}_ci95_high")
    ci = f" [95% CI {lo:.4g}, {hi:.4g}]" if lo == lo and lo is not None else " (one repeat: no CI)"
    n = best.get(f"{ENERGY}_n")
    return (f"{_label(best, settings)}: {best[f'{ENERGY}_mean']:.4g} J/token{ci}, n={int(n) if n == n else '?'}; "
            + ", ".join(f"{b.metric}={best[value_column(group, b.metric)]:.4g}" for b in bounds))


def _more(other, best) -> str:
    """How much more (or less) J/token ``other`` costs than ``best``, in percent."""
    a, b = other[f"{ENERGY}_mean"], best[f"{ENERGY}_mean"]
    return f"{100 * (a - b) / b:+.0f} % J/token" if b else "J/token"


def recommend_text(summary, bounds: Sequence[Bound], unflagged: bool = False) -> str:
    """The Pareto fronts and the recommendation per model. Doubt flags are never silent: the
    recommendation is the lowest J/token meeting every bound; when it is flagged, its flags are
    spelled out and the best unflagged configuration meeting the bounds is named beside it. With
    ``unflagged`` only unflagged configurations are recommended, and a flagged one that costs less is
    named beside it."""
    for b in bounds:
        value_column(summary, b.metric)  # unknown metric → clear error before any output
    settings = ["cfg.backend.name"] + [c for c in varying_columns(summary) if c not in ("cfg.backend.name",
                                                                                         "cfg.model.name")]
    among = "unflagged configurations" if unflagged else "every configuration"
    lines = [f"== recommendation under {', '.join(map(str, bounds))} (lowest adjusted J/token, {among}) =="]
    for model, group in summary.groupby("cfg.model.name", dropna=False, sort=True):
        lines.append(f"model {model}:")
        measured = group.dropna(subset=[f"{ENERGY}_mean"])
        if measured.empty:
            lines.append("  no configuration has J/token (energy was not measured: no NVML GPU)")
            continue
        for b in bounds:
            col = value_column(group, b.metric)
            front = pareto_front(measured, col, b.higher_is_better)
            lines.append(f"  Pareto front, J/token vs {b.metric}:")
            for _, r in front.iterrows():
                mark = "meets" if b.ok(r[col]) else "breaks"
                lines.append(f"    {r[f'{ENERGY}_mean']:.4g} J/token, {b.metric}={r[col]:.4g} ({mark} {b})  "
                             f"{_label(r, settings)}{_flag_note(r)}")
        ok = measured[[all(b.ok(r[value_column(group, b.metric)]) for b in bounds)
                       for _, r in measured.iterrows()]]
        if ok.empty:
            lines.append("  no configuration meets every bound")
            continue
        ok = ok.sort_values(f"{ENERGY}_mean", kind="stable")
        clean = ok[[not is_flagged(r) for _, r in ok.iterrows()]]
        best, cheapest = ok.iloc[0], ok.iloc[0]
        if unflagged:
            if clean.empty:
                lines.append("  no unflagged configuration meets every bound; the best flagged one:")
                lines += _flagged_lines(cheapest, settings, bounds, group, "    ")
                continue
            best = clean.iloc[0]
        lines.append(f"  recommended: {_choice(best, settings, bounds, group)}")
        if is_flagged(best):
            lines += _flagged_lines(best, settings, bounds, group, "  ", head=False)
            if clean.empty:
                lines.append("  no unflagged configuration meets every bound")
            else:
                lines.append(f"  best unflagged meeting every bound ({_more(clean.iloc[0], best)}): "
                             f"{_choice(clean.iloc[0], settings, bounds, group)}")
        elif is_flagged(cheapest):
            lines.append(f"  a doubt-flagged configuration reads lower ({_more(cheapest, best)}), not recommended:")
            lines += _flagged_lines(cheapest, settings, bounds, group, "    ")
    return "\n".join(lines)


def _flagged_lines(row, settings: List[str], bounds: Sequence[Bound], group, indent: str,
                   head: bool = True) -> List[str]:
    """A flagged configuration (unless ``head`` is False: already shown), then each flag and what it means."""
    lines = [f"{indent}{_choice(row, settings, bounds, group)}"] if head else []
    k = row.get("n_flagged")
    some = f"{int(k)} of {n_repeats(row)} repeats" if k is not None and k == k else "repeats"
    lines.append(f"{indent}{MARK} doubt-flagged: {some} raised a flag, so its numbers may be off "
                 "(messages: --warnings):")
    lines += [f"{indent}    {line}" for line in explain(row)]
    return lines
