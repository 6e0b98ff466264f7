"""A recorded trace replayed as the load (``load.trace``): each line is one request, when it arrived and how
long it was (docs/traces.md).

The schema, JSONL (one object per line) or CSV (a header row), one request a line:

- ``timestamp_s``: when it arrived, in seconds; times are taken from the first line's (so a trace may start
  at any time), and must never go back (a converter sorts them: ``python -m llem.trace convert``);
- ``input_tokens``: its prompt's length, an integer >= 1;
- ``output_tokens`` (optional): the length it asks for, an integer >= 1; absent (or empty), the request draws
  a natural length from ``dataset.output_lengths``, as with ``output_len=null``;
- ``class`` (optional): a label of the request's kind, kept in requests.parquet as ``request_class``.

The whole file is checked before any model loads; an error names the file, the line and the field. Its
prompts are random token ids of each line's length (:func:`trace_prompts`), seeded like ``dataset=random``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from llem.support.errors import WorkloadError
from llem.workload.records import Request

FIELDS = ("timestamp_s", "input_tokens", "output_tokens", "class")
REQUIRED = ("timestamp_s", "input_tokens")
FORMATS = "JSONL (one object per line) or CSV with a header row"
CSV_SUFFIXES = (".csv",)


@dataclass(frozen=True)
class TraceLine:
    """One request of a trace: its arrival (s after the trace's first), its lengths and its class."""

    timestamp_s: float
    input_tokens: int
    output_tokens: Optional[int]
    request_class: Optional[str]


@dataclass(frozen=True)
class Trace:
    """A checked trace: its lines (times from the first line's), the file's name and its content's sha256."""

    name: str
    sha256: str
    lines: Tuple[TraceLine, ...]

    def first(self, n: Optional[int]) -> Tuple[TraceLine, ...]:
        return self.lines if n is None else self.lines[:n]


def _bad(path: Path, line_no: int, field: str, why: str) -> WorkloadError:
    return WorkloadError(f"load.trace={str(path)!r}, line {line_no}, field {field!r}: {why}")


def _length(path: Path, line_no: int, field: str, value: Any) -> int:
    """A token count: a whole number >= 1 (``3`` or ``3.0``; never ``3.5``, text or a boolean)."""
    if isinstance(value, str):
        try:
            value = float(value) if value.strip() else None
        except ValueError:
            raise _bad(path, line_no, field, f"{value!r} is not a number: allowed an integer >= 1") from None
    if value is None:
        raise _bad(path, line_no, field, "missing: allowed an integer >= 1")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value):
        raise _bad(path, line_no, field, f"{value!r} is not an integer: allowed an integer >= 1")
    if value < 1:
        raise _bad(path, line_no, field, f"{int(value)} is invalid: allowed an integer >= 1")
    return int(value)


def _line(path: Path, line_no: int, record: Dict[str, Any], previous: Optional[float]) -> TraceLine:
    for field in REQUIRED:
        if record.get(field) in (None, ""):
            raise _bad(path, line_no, field, f"missing: every line needs {', '.join(REQUIRED)}")
    raw = record["timestamp_s"]
    try:
        t = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        t = math.nan
    if not math.isfinite(t):
        raise _bad(path, line_no, "timestamp_s", f"{raw!r} is not a finite number of seconds")
    if t < 0:
        raise _bad(path, line_no, "timestamp_s", f"{t:g} is negative: allowed seconds >= 0")
    if previous is not None and t < previous:
        raise _bad(path, line_no, "timestamp_s", f"{t:g} is earlier than the line before ({previous:g}): times must "
                   "never go back (sort the file by timestamp_s)")
    out = record.get("output_tokens")
    cls = record.get("class")
    if cls is not None and not isinstance(cls, (str, int)):
        raise _bad(path, line_no, "class", f"{cls!r} is not a label: allowed a string")
    return TraceLine(t, _length(path, line_no, "input_tokens", record["input_tokens"]),
                     None if out in (None, "") else _length(path, line_no, "output_tokens", out),
                     None if cls in (None, "") else str(cls))


def _records(path: Path, text: str):
    """(line number, record) of each request line: JSONL objects, or CSV rows by the header's names."""
    if path.suffix.lower() in CSV_SUFFIXES:
        reader = csv.DictReader(io.StringIO(text))
        missing = [f for f in REQUIRED if f not in (reader.fieldnames or [])]
        if missing:
            raise _bad(path, 1, missing[0], f"not in the CSV header {reader.fieldnames}: the header names "
                       f"{', '.join(REQUIRED)} (and optionally output_tokens, class)")
        for row in reader:
            if any((v or "").strip() for v in row.values() if isinstance(v, str)):
                yield reader.line_num, {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"load.trace={str(path)!r}, line {line_no}: not JSON ({exc.msg}); allowed "
                                f"{FORMATS}") from None
        if not isinstance(record, dict):
            raise WorkloadError(f"load.trace={str(path)!r}, line {line_no}: not a JSON object")
        yield line_no, record


def read_trace(path: Path) -> Trace:
    """The checked trace at ``path``; WorkloadError naming the file, the line and the field otherwise."""
    if not path.is_file():
        raise WorkloadError(f"load.trace={str(path)!r}: no such file: give a trace file, {FORMATS} (docs/traces.md)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WorkloadError(f"load.trace={str(path)!r} cannot be read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise WorkloadError(f"load.trace={str(path)!r} is not UTF-8 text: allowed {FORMATS}") from None
    lines: List[TraceLine] = []
    for line_no, record in _records(path, text):
        lines.append(_line(path, line_no, record, lines[-1].timestamp_s if lines else None))
    if not lines:
        raise WorkloadError(f"load.trace={str(path)!r} holds no request: allowed {FORMATS}, one request a line")
    t0 = lines[0].timestamp_s
    shifted = tuple(TraceLine(x.timestamp_s - t0, x.input_tokens, x.output_tokens, x.request_class) for x in lines)
    return Trace(path.name, hashlib.sha256(data).hexdigest(), shifted)


_CACHE: Dict[Tuple[str, int, int], Trace] = {}


def load(path_text: str) -> Trace:
    """The trace at ``path_text`` (``~`` expanded), read once per content seen by this process."""
    path = Path(path_text).expanduser()
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        return read_trace(path)  # raises, naming the file
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = read_trace(path)
    return _CACHE[key]


def replayed(config: Any) -> Optional[Tuple[TraceLine, ...]]:
    """The lines a job replays: the first ``dataset.num_requests`` of ``load.trace`` (all of it when null);
    None without a trace."""
    if config.load.trace is None:
        return None
    return load(config.load.trace).first(config.dataset.num_requests)


def trace_prompts(lengths: List[int], vocab_size: int, seed: int, avoid: frozenset = frozenset()) -> List[Request]:
    """One prompt of random token ids per length (seeded; request i draws from its own stream, so the first
    requests are the same whatever the count), special ids avoided."""
    import numpy as np

    if vocab_size <= len(avoid) + 1:
        raise WorkloadError(f"vocab_size={vocab_size} is too small for random prompts")
    bad_ids = np.fromiter(avoid, dtype=np.int64) if avoid else None
    requests = []
    for i, n in enumerate(lengths):
        rng = np.random.default_rng([seed, 4, i])
        ids = rng.integers(0, vocab_size, size=n)
        while bad_ids is not None and (bad := np.isin(ids, bad_ids)).any():
            ids[bad] = rng.integers(0, vocab_size, size=int(bad.sum()))
        requests.append(Request(i, ids.tolist()))
    return requests
