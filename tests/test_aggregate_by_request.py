"""Energy per request grouped by a request column (python -m llem.aggregate --by-request)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from llem.aggregate import by_request


def _aggregate():
    runs = pd.DataFrame({"job_key": ["j1", "j2"], "config_key": ["c1", "c1"], "status": ["ok", "failed"]})
    summary = pd.DataFrame({"config_key": ["c1"], "cfg.batch": [8]})
    requests = pa.table({
        "job_key": ["j1"] * 5 + ["j2"],
        "request_class": ["A", "A", "B", "B", "B", "A"],
        "input_tokens": [4000, 3000, 100, 200, 300, 4000],
        "energy_adjusted_j": [10.0, 12.0, 3.0, 4.0, 5.0, 999.0],
        "energy_output_tokens_rule_adjusted_j": [2.0, 2.0, 6.0, 6.0, 6.0, 999.0],
        "error": [None, None, None, None, "HTTP 500", None],
    })
    return runs, summary, requests


def test_the_mean_energy_per_request_of_each_class_under_both_rules():
    lines = by_request.table(*_aggregate(), by_request.parse("request_class"))
    assert any(line.strip().startswith("request_class=A: n=2  11 J") and "output-token rule 2 J" in line
               for line in lines)
    # the failed request and the failed job's request are not counted
    assert any(line.strip().startswith("request_class=B: n=2  3.5 J") for line in lines)


def test_bins_by_edges_of_a_numeric_column():
    lines = by_request.table(*_aggregate(), by_request.parse("input_tokens:0,1000,inf"))
    assert [line.split(":")[0].strip() for line in lines[2:]] == ["input_tokens=[0, 1000)", "input_tokens=[1000, inf)"]


@pytest.mark.parametrize("text", ["input_tokens:1", "input_tokens:5,2", "input_tokens:a,b", ":3"])
def test_bad_bins_say_what_is_allowed(text):
    with pytest.raises(ValueError, match="allowed COLUMN"):
        by_request.parse(text)


def test_a_column_the_requests_lack_names_those_they_have():
    with pytest.raises(ValueError, match="no request column 'prompt_len'; allowed: request_class, input_tokens"):
        by_request.check(by_request.parse("prompt_len"), _aggregate()[2])


def test_bins_of_a_text_column_are_refused():
    with pytest.raises(ValueError, match="'request_class' is not numeric"):
        by_request.check(by_request.parse("request_class:3"), _aggregate()[2])
