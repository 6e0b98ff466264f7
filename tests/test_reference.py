"""The column reference in docs/ is the one the code generates: it cannot drift from the writer."""

from __future__ import annotations

from pathlib import Path

from llem.reference import render
from llem.results.row import part_columns

DOC = Path(__file__).resolve().parents[1] / "docs" / "columns.md"


def test_docs_column_reference_is_generated_from_the_declarations():
    assert DOC.is_file(), "docs/columns.md is missing: python -m llem.reference > docs/columns.md"
    assert DOC.read_text() == render(), "docs/columns.md is stale: python -m llem.reference > docs/columns.md"


def test_every_column_is_in_the_reference():
    text = render()
    missing = [c.name for c in part_columns() if f"`{c.name}`" not in text]
    assert not missing and "`engine.compile_s`" in text and "`cfg.backend.tensor_parallel_size`" in text
