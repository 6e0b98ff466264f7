"""Make result tables from different jobs (and llem versions) combine into one.

Every job's file is conformed before it is combined: columns renamed since it was written get
their current name, a declared column is cast to its declared type, and a text column of an
undeclared family (cfg.*, engine.*) that holds only nulls becomes Arrow's null type, which
combines with any type (older versions of llem wrote every unknown null as text). Two jobs that still disagree
on a column's type (a list written as text by an old llem) are combined as text, with a warning naming
the column — never a crash. A declared column holding values that cannot be cast to its type (an int
``flags``, words in a number column) is :class:`ForeignColumn`: that job is left out, with a warning
naming the column, and the rest are aggregated.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Sequence

from llem.results.files import arrow_type
from llem.results.row import Outcome, part_columns
from llem.results.schema import RENAMED
from llem.results.tables import RequestRow, TimeseriesRow

CURRENT = Outcome().schema_version  # results files of this schema are written typed and named as declared


@functools.cache
def declared() -> Dict[str, object]:
    """Column name → Arrow type of every declared fixed column (results, requests, time series)."""
    from llem.results.schema import columns_of

    cols = part_columns() + columns_of(RequestRow) + columns_of(TimeseriesRow)
    return {c.name: arrow_type(c.type) for c in cols}


def conform(table):
    """One job's table: current names, null-only columns typed null, declared columns cast. A results
    file of the current schema needs none of it (the check costs a column lookup, not a pass over 200)."""
    import pyarrow as pa

    has_version = table.num_rows and "schema_version" in table.column_names
    if has_version and table.column("schema_version")[0].as_py() == CURRENT and _as_declared(table.schema):
        return table

    names = [RENAMED.get(n, n) for n in table.column_names]
    if names != table.column_names:
        table = table.rename_columns(names)
    types = declared()
    for i, name in enumerate(table.column_names):
        column = table.column(i)
        want = types.get(name)
        if want is None and column.null_count == len(column) and pa.types.is_string(column.type):
            column = pa.nulls(len(column), pa.null())  # an older writer typed unknown nulls as text
        elif want is not None and column.type != want:
            try:
                column = column.cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                if column.null_count != len(column) and _text(column.type) and not _number(want):
                    continue  # text in a list column (an old llem's flags): concat() combines it as text, warned
                if column.null_count != len(column):
                    raise ForeignColumn(f"column {name!r} holds {column.type}, where llem writes {want} "
                                        "(not written by llem?)") from None
                column = pa.nulls(len(column), want)  # only nulls (a list column an old writer typed as text)
        else:
            continue
        table = table.set_column(i, name, column)
    return table


class ForeignColumn(ValueError):
    """A known column holds values of a type llem never writes there (an int ``flags``): the job's file
    cannot be combined with the others, so it is left out with this reason."""


def _text(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _number(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _as_declared(schema) -> bool:
    """Every declared column of ``schema`` has its declared type (or holds only nulls)."""
    import pyarrow as pa

    types = declared()
    return all(types.get(f.name) in (None, f.type) or pa.types.is_null(f.type) for f in schema)


def untyped_as_declared(table):
    """``table`` with declared columns that carry no type of their own (null, or lists of nothing: a
    ``flags`` column no job raised a flag in, after a trip through pandas) cast to their declared type."""
    import pyarrow as pa

    types = declared()
    for i, field in enumerate(table.schema):
        want = types.get(field.name)
        untyped = pa.types.is_null(field.type) or (pa.types.is_list(field.type)
                                                   and pa.types.is_null(field.type.value_type))
        if want is not None and untyped and field.type != want:
            table = table.set_column(i, field.name, table.column(i).cast(want))
    return table


def concat(tables: Sequence, warnings: List[str]):
    """Tables → one (promoting types where Arrow can); conflicting columns become text, warned."""
    import pyarrow as pa

    tables = [t for t in tables if t is not None]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    seen: Dict[str, set] = {}
    for t in tables:
        for field in t.schema:
            if field.type != pa.null():
                seen.setdefault(field.name, set()).add(field.type)
    clash = sorted(n for n, kinds in seen.items() if len(kinds) > 1)
    warnings.append(f"column(s) {', '.join(clash)} have different types in different jobs (results of different "
                    "llem versions?): combined as text")
    fixed = []
    for t in tables:
        for name in clash:
            if name in t.column_names:
                i = t.column_names.index(name)
                t = t.set_column(i, name, _as_text(t.column(i)))
        fixed.append(t)
    return pa.concat_tables(fixed, promote_options="permissive")


def _as_text(column):
    import pyarrow as pa

    try:
        return column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())
