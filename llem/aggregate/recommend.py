"""The question users ask: which configuration costs the least energy per token while meeting my
latency/throughput bounds? Per model: the Pareto front of J/token against each bounded metric, and
the lowest-J/token configuration that meets every bound, with its CI."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Sequence

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


def parse_bounds(texts: Sequence[str]) -> List[Bound]:
    bounds = []
    for text in texts:
        m = _BOUND.match(text)
        if not m:
            raise ValueError(f"--slo {text!r}: expected METRIC<=NUMBER or METRIC>=NUMBER, e.g. ttft_ms_p99<=500")
        bounds.append(Bound(m.group(1), m.group(2), float(m.group(3))))
    return bounds


def value_column(summary, metric: str) -> str:
    """The summary column a bound on ``metric`` reads: pooled percentiles, else the repeat mean."""
    if metric in POOLED and metric in summary.columns:
        return metric
    if f"{metric}_mean" in summary.columns:
        return f"{metric}_mean"
    if metric in summary.columns:
        return metric
    raise ValueError(f"--slo: unknown metric {metric!r}; use a results column such as ttft_ms_p99, "
                     "output_tok_per_s, itl_ms_p50, avg_power_w")


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


def recommend_text(summary, bounds: Sequence[Bound]) -> str:
    for b in bounds:
        value_column(summary, b.metric)  # unknown metric → clear error before any output
    settings = ["cfg.backend.name"] + [c for c in varying_columns(summary) if c not in ("cfg.backend.name",
                                                                                         "cfg.model.name")]
    lines = [f"== recommendation under {', '.join(map(str, bounds))} (lowest adjusted J/token) =="]
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
                             f"{_label(r, settings)}")
        ok = measured[[all(b.ok(r[value_column(group, b.metric)]) for b in bounds)
                       for _, r in measured.iterrows()]]
        if ok.empty:
            lines.append("  no configuration meets every bound")
            continue
        best = ok.sort_values(f"{ENERGY}_mean", kind="stable").iloc[0]
        lo, hi = best.get(f"{ENERGY}_ci95_low"), best.get(f"{ENERGY}_ci95_high")
        ci = f" [95% CI {lo:.4g}, {hi:.4g}]" if lo == lo and lo is not None else " (one repeat: no CI)"
        lines.append(f"  recommended: {_label(best, settings)}: {best[f'{ENERGY}_mean']:.4g} J/token{ci}, n="
                     f"{int(best[f'{ENERGY}_n'])}; " + ", ".join(
                         f"{b.metric}={best[value_column(group, b.metric)]:.4g}" for b in bounds))
    return "\n".join(lines)
