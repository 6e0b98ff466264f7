"""Result files of one job, written atomically with the declared column types.

``results.parquet`` (one row) is written last: it is the job's commit marker. Each file is
written to a temporary name in the same directory, fsynced and renamed, so a job killed
mid-write never leaves a file that reads as a success. String values are scrubbed of secrets.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from llem.results.schema import BOOL, F64, I64, JSON, LIST_F64, LIST_STR, STR, Column, columns_of, storable

RESULTS = "results.parquet"
REQUESTS = "requests.parquet"
TIMESERIES = "timeseries.parquet"


def arrow_type(kind: str):
    import pyarrow as pa

    return {F64: pa.float64(), I64: pa.int64(), STR: pa.string(), JSON: pa.string(), BOOL: pa.bool_(),
            LIST_F64: pa.list_(pa.float64()), LIST_STR: pa.list_(pa.string())}[kind]


def arrow_schema(columns: Sequence[Column]):
    import pyarrow as pa

    return pa.schema([pa.field(c.name, arrow_type(c.type)) for c in columns])


def scrub_table(table):
    """``table`` with secret values (in every encoded form) and URL credentials replaced in its string columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from llem.support.secrets import CREDENTIALS, URL_CREDENTIALS, forms, secrets

    found = forms(secrets())
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            column = table.column(i)
            for name, form in found:
                column = pc.replace_substring(column, form, f"<{name}>")
            column = pc.replace_substring_regex(column, URL_CREDENTIALS.pattern, rf"\1{CREDENTIALS}@")
            table = table.set_column(i, field, column)
    return table


def write_atomic(table, path: Path, **options) -> None:
    """Write ``table`` to ``path`` via a temporary file, fsync and rename (``options``: write_table's).
    String columns are scrubbed of secret values on the way."""
    import pyarrow.parquet as pq

    table = scrub_table(table)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, **options)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _scrubbed(value: Any) -> Any:
    """Secrets replaced in the plain value (nested dicts and lists too) before it is encoded (JSON)."""
    from llem.results.schema import plain
    from llem.support.secrets import scrub_value

    return scrub_value(plain(value))


def rows_table(rows: Sequence[Any], cls: type):
    """Rows (instances of ``cls``, or dicts with its field names) → an Arrow table of its columns."""
    import pyarrow as pa

    columns = columns_of(cls)
    names = {c.name for c in columns}
    data: Dict[str, List[Any]] = {c.name: [] for c in columns}
    for r in rows:
        values = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)} if dataclasses.is_dataclass(r) else r
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"{cls.__name__} has no column(s) {sorted(unknown)}: declare them in llem.results")
        for c in columns:
            data[c.name].append(storable(c, _scrubbed(values.get(c.name))))
    return pa.Table.from_pydict(data, schema=arrow_schema(columns))


def write_rows(rows: Sequence[Any], path: Path, cls: type) -> None:
    """Many rows (requests, time series) → Parquet with the declared schema (empty is fine)."""
    write_atomic(rows_table(rows, cls), path)


# A one-row file gains nothing from column statistics, dictionary pages or the embedded Arrow schema
# (the Parquet types carry ours), and each costs read time: aggregating thousands of jobs reads
# thousands of these (a 200-column row: 3.4 ms to read with dictionaries, 2.1 ms without).
ONE_ROW_OPTIONS = {"write_statistics": False, "store_schema": False, "use_dictionary": False}


def result_table(row) -> Any:
    """A :class:`~llem.results.row.ResultRow` → a one-row Arrow table of its declared types. A value
    that does not fit its column is stored as null and named in ``warnings``, never a crash."""
    import pyarrow as pa

    columns, arrays, problems = list(row.columns.values()), [], []
    for column in columns:
        value = storable(column, _scrubbed(row.values[column.name]))
        try:
            arrays.append(pa.array([value], type=arrow_type(column.type)))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            problems.append(f"{column.name}={value!r} could not be stored as {column.type} ({type(exc).__name__}): "
                            "null")
            arrays.append(pa.nulls(1, arrow_type(column.type)))
    if problems and "warnings" in row.columns:
        at = [c.name for c in columns].index("warnings")
        arrays[at] = pa.array([list(arrays[at][0].as_py() or []) + problems], type=arrow_type(LIST_STR))
    return pa.Table.from_arrays(arrays, schema=arrow_schema(columns))


def write_result(row, job_dir: Path) -> Path:
    path = job_dir / RESULTS
    write_atomic(result_table(row), path, **ONE_ROW_OPTIONS)
    return path


def amend_result(job_dir: Path, part: Any) -> Optional[Dict[str, Any]]:
    """Set the columns of ``part`` (a row part whose values the job's parent knows, not the measurement: its place
    in the sweep) in the job's row, rewritten atomically; the row's values, or None when it has no row."""
    import pyarrow as pa

    path = job_dir / RESULTS
    if not path.is_file():
        return None
    table = read_table(path)
    values = dataclasses.asdict(part)
    for column in columns_of(type(part)):
        field = pa.field(column.name, arrow_type(column.type))
        array = pa.array([storable(column, values[column.name])], type=field.type)
        at = table.schema.get_field_index(column.name)
        table = table.set_column(at, field, array) if at >= 0 else table.append_column(field, array)
    write_atomic(table, path, **ONE_ROW_OPTIONS)
    return table.to_pylist()[0]


def read_table(path: Path) -> Any:
    """One Parquet file as an Arrow table, read as a single file: ``pq.read_table`` goes through
    ``pyarrow.dataset``, which imports pandas, a second of CPU in every job's driver for one row."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as file:
        return file.read()


def read_result(job_dir: Path) -> Optional[Dict[str, Any]]:
    """The job's result row, or None when there is none (or it cannot be read)."""
    path = job_dir / RESULTS
    if not path.is_file():
        return None
    try:
        rows = read_table(path).to_pylist()
    except Exception:
        return None
    return rows[0] if len(rows) == 1 else None
