"""``python -m llem.aggregate DIR [DIR ...]``: combine any number of run and sweep dirs late.

Writes ``runs.parquet`` (one row per job: ok, failed and incomplete), ``requests.parquet``
(every request row, keyed by ``job_key``) and ``summary.parquet`` (one row per configuration,
see :mod:`llem.aggregate.stats`, with its doubt flags: :mod:`llem.aggregate.doubt`), prints the
table (flagged configurations marked), lists failed jobs, and optionally draws plots and
recommends a configuration under latency/throughput bounds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

log = logging.getLogger(__name__)


@dataclass
class Aggregate:
    runs: object  # pandas DataFrame, one row per job
    requests: object  # pyarrow Table, one row per request
    summary: object  # pandas DataFrame, one row per configuration
    warnings: List[str] = field(default_factory=list)

    @property
    def failed(self):
        return self.runs[self.runs["status"] != "ok"]


def aggregate(dirs: Sequence[Path], seed: int = 0) -> Aggregate:
    """Read every job under ``dirs`` and summarise it (nothing written)."""
    from llem.aggregate.collect import collect
    from llem.aggregate.stats import config_keys, group_columns, summarise

    collected = collect([Path(d) for d in dirs])
    runs = collected.runs.to_pandas()
    runs.insert(1, "config_key", config_keys(runs, group_columns(runs.columns)))
    summary = summarise(runs, collected.requests, seed=seed)
    return Aggregate(runs, collected.requests, summary, collected.warnings)


def write(agg: Aggregate, out: Path) -> List[Path]:
    """runs.parquet, requests.parquet, summary.parquet into ``out`` (atomically each)."""
    import pyarrow as pa

    from llem.aggregate.conform import untyped_as_declared
    from llem.aggregate.doubt import arrow_columns
    from llem.results import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "runs.parquet", out / "requests.parquet", out / "summary.parquet"]
    write_atomic(untyped_as_declared(pa.Table.from_pandas(agg.runs, preserve_index=False)), paths[0])
    write_atomic(agg.requests, paths[1])
    write_atomic(arrow_columns(pa.Table.from_pandas(agg.summary, preserve_index=False)), paths[2])
    return paths


def load(out: Path, with_requests: bool = True) -> Aggregate:
    """Read what :func:`write` wrote (for notebooks)."""
    import pandas as pd
    import pyarrow.parquet as pq

    requests = pq.read_table(out / "requests.parquet") if with_requests else None
    return Aggregate(pd.read_parquet(out / "runs.parquet"), requests, pd.read_parquet(out / "summary.parquet"))


def table(agg: Aggregate, max_rows: Optional[int] = 60) -> str:
    """The printed summary: the varying settings and the headline statistics per configuration."""
    from llem.aggregate.report import summary_table

    return summary_table(agg.summary, max_rows)
