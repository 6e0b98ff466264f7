"""Text a person reads: the summary table, the failed jobs, the warnings."""

from __future__ import annotations

import math
from typing import List, Optional

from llem.aggregate.doubt import DOCS, MARK, codes_of, flag_text, is_flagged, texts_of
from llem.aggregate.stats import varying_columns
from llem.results.row import part_columns
from llem.results.schema import columns_of
from llem.results.tables import RequestRow

# (summary column, header, format), from the columns declared with a label (llem.results)
HEADLINE = [(c.name, c.label, c.fmt) for c in part_columns() if c.label]
POOLED = [(f"{c.name}_p{q}", f"{c.label} p{q} ms", c.fmt) for c in columns_of(RequestRow) if c.label for q in c.pooled]
ALWAYS = ["cfg.backend.name", "cfg.model.name", "cfg.batch"]


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def _setting(value):
    """Settings as written: 8 not 8.0 (a column holding a null turns ints into floats)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _with_ci(row, metric: str, spec: str) -> str:
    mean = row.get(f"{metric}_mean")
    lo, hi = row.get(f"{metric}_ci95_low"), row.get(f"{metric}_ci95_high")
    text = _fmt(mean, spec)
    if lo is not None and not (isinstance(lo, float) and math.isnan(lo)):
        text += f" [{_fmt(lo, spec)}, {_fmt(hi, spec)}]"
    return text


def summary_table(summary, max_rows: Optional[int] = 60) -> str:
    """One line per configuration: varying settings, n, mean [95% CI] and pooled percentiles; a
    configuration with doubt flags is marked, its codes in the last column, and a legend says so."""
    import pandas as pd

    settings = [c for c in ALWAYS if c in summary.columns]
    settings += [c for c in varying_columns(summary) if c not in settings]
    flagged = [is_flagged(r) for _, r in summary.iterrows()]
    rows = []
    for (_, r), doubtful in zip(summary.iterrows(), flagged):
        line = {" ": MARK if doubtful else ""} if any(flagged) else {}
        line.update({c.removeprefix("cfg."): _setting(r[c]) for c in settings})
        line["n"] = f"{r['n_ok']}" + (f" (+{r['n_jobs'] - r['n_ok']} failed)" if r["n_jobs"] != r["n_ok"] else "")
        for metric, header, spec in HEADLINE:
            line[header] = _with_ci(r, metric, spec) if f"{metric}_mean" in r else "–"
        for metric, header, spec in POOLED:
            line[header] = _fmt(r.get(metric), spec)
        if "flagged" in summary.columns:  # always there: "–" says no repeat raised a flag
            line["flags"] = flag_text(r) if doubtful else "–"
        rows.append(line)
    frame = pd.DataFrame(rows)
    if "flags" in frame:  # left-aligned: codes read as text
        frame["flags"] = frame["flags"].str.ljust(frame["flags"].str.len().max())
    shown = frame if max_rows is None else frame.head(max_rows)
    text = shown.to_string(index=False)
    if len(frame) > len(shown):
        more = sum(flagged[len(shown):])
        text += f"\n… {len(frame) - len(shown)} more configurations in summary.parquet" + (
            f" ({more} of them flagged)" if more else "")
    text += "\nmean [bootstrap 95% CI] across repeats; percentiles pooled over all request rows"
    if any(flagged):
        text += (f"\n{MARK} doubt-flagged: a repeat raised the flags shown (k/n: k of its n repeats); read its numbers "
                 f"with care\n  codes: {DOCS}; each job's messages: --warnings, or warnings in runs.parquet")
    elif "flagged" in summary.columns:
        text += "\nno doubt flags raised"
    return text


def flag_messages(runs, summary, limit: int = 200) -> List[str]:
    """Each flagged configuration (in table order), then the warnings of each of its flagged jobs; none
    when nothing is flagged (the table says so)."""
    settings = [c for c in dict.fromkeys([*ALWAYS, *varying_columns(summary)]) if c in summary.columns]
    ok = runs[runs["status"] == "ok"]
    jobs_of = ok.groupby("config_key", sort=False).indices
    lines: List[str] = []
    for _, r in summary.iterrows():
        if not is_flagged(r):
            continue
        label = " ".join(f"{c.removeprefix('cfg.')}={_setting(r[c])}" for c in settings)
        lines.append(f"{MARK} {label}: {flag_text(r, limit=0)}")
        for _, job in ok.iloc[jobs_of.get(r["config_key"], [])].iterrows():
            codes = codes_of(job.get("flags"))
            if not codes:
                continue
            lines.append(f"  {job['job_id']} [{', '.join(codes)}]")
            lines.extend(f"    {w}" for w in texts_of(job.get("warnings")))
    if len(lines) > limit:
        lines = lines[:limit] + [f"… {len(lines) - limit} more lines: warnings in runs.parquet"]
    return lines


def failed_list(runs, limit: int = 20) -> List[str]:
    bad = runs[runs["status"] != "ok"]
    lines = [f"{len(bad)} of {len(runs)} jobs did not succeed (counted, never averaged in):"] if len(bad) else []
    for _, r in bad.head(limit).iterrows():
        stage = r.get("error_stage")
        where = f" during {stage}" if isinstance(stage, str) else ""
        lines.append(f"  {r['status']}{where}: {r['job_dir']}: {str(r.get('error'))[:160]}")
    if len(bad) > limit:
        lines.append(f"  … {len(bad) - limit} more in runs.parquet (status != 'ok')")
    return lines
