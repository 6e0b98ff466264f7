"""Doubt flags per configuration, so a flagged number is never read as a good one.

A configuration's numbers come from its successful repeats, so it carries the union of their flag
codes (``flags`` of each job's result row) and how many repeats raised each. The summary's flag
columns are declared once, as the fields of :class:`FlagSummary`; the printed table, the plots and
``--slo`` read them. Results written before a flag existed simply lack it: a job whose ``flags`` is
null (an older llem) counts as raising none.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Dict, List, Sequence

from llem.results.files import arrow_type
from llem.results.flag_codes import FLAG_MEANINGS as MEANINGS
from llem.results.schema import col, columns_of

MARK = "!"  # next to a flagged configuration in the printed table and the recommendation
CODES_SHOWN = 3  # codes spelled out in a table cell; the rest as "+N"
DOCS = "docs/method.md (Doubt flags)"

# One line per code for the recommendation: what the flag says about the numbers. The rule that raises
# each, with its threshold, is where the flag is raised (llem/energy/flags.py, llem/measure/sizing.py, codecarbon.py).


@dataclass
class FlagSummary:
    """The doubt-flag columns of summary.parquet, one row per configuration (its successful repeats)."""

    flagged: bool = col("a successful repeat raised a doubt flag: read the numbers with its warnings", default=False)
    n_flagged: int = col("successful repeats that raised at least one doubt flag", default=0)
    flags: List[str] = col("doubt-flag codes any successful repeat raised (sorted)", factory=list)
    flag_repeats: Dict[str, int] = col("successful repeats that raised each code (JSON: code → count)")


COLUMNS = columns_of(FlagSummary)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType"


def texts_of(value) -> List[str]:
    """A list-of-text cell (``warnings``) as a list: a list or array as is, a lone text as one, null as none."""
    if _missing(value):
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value if v is not None]


def codes_of(value) -> List[str]:
    """A job's ``flags`` cell as a list of codes: a list or array of text; null (an older llem) → none."""
    if isinstance(value, str):  # a column some llem version wrote as text: "['a', 'b']" or "a,b"
        try:
            value = json.loads(value.replace("'", '"'))
        except ValueError:
            value = value.split(",")
        if isinstance(value, str):
            value = [value]
    return [v.strip() for v in texts_of(value) if v.strip()]


def summarise_flags(ok, keys: Sequence[str]) -> Dict[str, list]:
    """The :class:`FlagSummary` columns for configurations ``keys`` from their successful jobs ``ok``
    (a runs DataFrame with ``config_key`` and, unless every job is older than flags, ``flags``)."""
    counts: Dict[str, Dict[str, int]] = {k: {} for k in keys}
    flagged: Dict[str, int] = dict.fromkeys(keys, 0)
    if "flags" in ok.columns:
        for key, value in zip(ok["config_key"], ok["flags"]):
            codes = sorted(set(codes_of(value)))
            if key not in counts or not codes:
                continue
            flagged[key] += 1
            for code in codes:
                counts[key][code] = counts[key].get(code, 0) + 1
    return {"flagged": [flagged[k] > 0 for k in keys], "n_flagged": [flagged[k] for k in keys],
            "flags": [sorted(counts[k]) for k in keys],
            "flag_repeats": [json.dumps(counts[k], sort_keys=True) for k in keys]}


def repeats_of(row) -> Dict[str, int]:
    """code → repeats that raised it, for one summary row (empty for a summary older than flags)."""
    text = row.get("flag_repeats")
    if isinstance(text, str) and text:
        return json.loads(text)
    return dict.fromkeys(codes_of(row.get("flags")), 0)  # counts unknown (0: not shown)


def is_flagged(row) -> bool:
    value = row.get("flagged")
    return bool(value) if value is not None and value == value else bool(codes_of(row.get("flags")))


def n_repeats(row) -> int:
    """The successful repeats of a summary row."""
    for name in ("n_ok", "j_per_output_token_n"):
        n = row.get(name)
        if n is not None and n == n:
            return int(n)
    return 0


def flag_text(row, limit: int = CODES_SHOWN) -> str:
    """``short_window 2/3, throttled``: each code, with k/n when only k of the n successful repeats raised it."""
    n = n_repeats(row)
    parts = [code if not k or k >= n else f"{code} {k}/{n}" for code, k in sorted(repeats_of(row).items())]
    if limit and len(parts) > limit:
        parts = parts[:limit] + [f"+{len(parts) - limit}"]
    return ", ".join(parts)


def meaning(code: str) -> str:
    return MEANINGS.get(code, f"see {DOCS} and the job's warnings")


def explain(row) -> List[str]:
    """One line per code of a summary row: the code, how many repeats raised it, what it means."""
    n = n_repeats(row)
    lines = []
    for code, k in sorted(repeats_of(row).items()):
        seen = f" ({k} of {n} repeats)" if k and n else ""
        lines.append(f"{code}{seen}: {meaning(code)}")
    return lines


def arrow_columns(table):
    """``table`` (summary.parquet) with the flag columns in their declared types (an all-empty list
    column would otherwise be written as list<null>)."""
    import pyarrow as pa

    for c in COLUMNS:
        if c.name in table.column_names:
            i = table.column_names.index(c.name)
            table = table.set_column(i, c.name, pa.array(table.column(i).to_pylist(), arrow_type(c.type)))
    return table
