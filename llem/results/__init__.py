"""What a job writes: the declared columns (schema, row, tables) and the files (files)."""

from llem.results.files import (
    REQUESTS,
    RESULTS,
    TIMESERIES,
    read_result,
    write_atomic,
    write_result,
    write_rows,
)
from llem.results.row import ResultRow, Stage

__all__ = ["REQUESTS", "RESULTS", "TIMESERIES", "ResultRow", "Stage", "read_result", "write_atomic", "write_result",
           "write_rows"]
