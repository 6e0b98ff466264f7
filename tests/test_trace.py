"""A recorded trace (load.trace): the schema read from JSONL or CSV, every bad line refused naming the file, line
and field, and the converters from Mooncake's and Azure's public traces."""

from __future__ import annotations

import json

import pytest

from llem.support.errors import WorkloadError
from llem.trace import convert, main
from llem.workload.trace import read_trace


def _jsonl(path, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_jsonl_trace_gives_each_line_its_time_lengths_and_class(tmp_path):
    trace = read_trace(_jsonl(tmp_path / "t.jsonl",
                              {"timestamp_s": 0, "input_tokens": 5, "output_tokens": 3, "class": "a"},
                              {"timestamp_s": 1.5, "input_tokens": 7, "output_tokens": 2, "class": "b"}))
    assert [(x.timestamp_s, x.input_tokens, x.output_tokens, x.request_class) for x in trace.lines] == [
        (0.0, 5, 3, "a"), (1.5, 7, 2, "b")]
    assert trace.name == "t.jsonl" and len(trace.sha256) == 64


def test_a_csv_trace_reads_by_its_header_and_an_empty_output_is_a_natural_length(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("input_tokens,timestamp_s,output_tokens,class\n4,0.0,,x\n6,0.25,9,\n")
    lines = read_trace(path).lines
    assert [(x.timestamp_s, x.input_tokens, x.output_tokens, x.request_class) for x in lines] == [
        (0.0, 4, None, "x"), (0.25, 6, 9, None)]


def test_times_count_from_the_first_line(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", {"timestamp_s": 100.0, "input_tokens": 1}, {"timestamp_s": 102.5,
                                                                                    "input_tokens": 1})
    assert [x.timestamp_s for x in read_trace(path).lines] == [0.0, 2.5]


def test_the_sha256_changes_with_the_content(tmp_path):
    a = read_trace(_jsonl(tmp_path / "a.jsonl", {"timestamp_s": 0, "input_tokens": 1}))
    b = read_trace(_jsonl(tmp_path / "b.jsonl", {"timestamp_s": 0, "input_tokens": 2}))
    assert a.sha256 != b.sha256


@pytest.mark.parametrize("second, field, says", [
    ({"input_tokens": 3}, "timestamp_s", "missing"),
    ({"timestamp_s": 1}, "input_tokens", "missing"),
    ({"timestamp_s": -1, "input_tokens": 3}, "timestamp_s", "negative"),
    ({"timestamp_s": "soon", "input_tokens": 3}, "timestamp_s", "not a finite number"),
    ({"timestamp_s": 1, "input_tokens": 2.5}, "input_tokens", "not an integer"),
    ({"timestamp_s": 1, "input_tokens": 0}, "input_tokens", "allowed an integer >= 1"),
    ({"timestamp_s": 1, "input_tokens": 3, "output_tokens": "many"}, "output_tokens", "not a number"),
    ({"timestamp_s": 1, "input_tokens": True}, "input_tokens", "not an integer"),
])
def test_a_bad_line_is_refused_naming_the_file_line_and_field(tmp_path, second, field, says):
    path = _jsonl(tmp_path / "bad.jsonl", {"timestamp_s": 0, "input_tokens": 3}, second)
    with pytest.raises(WorkloadError) as err:
        read_trace(path)
    message = str(err.value)
    assert "bad.jsonl" in message and "line 2" in message and f"field {field!r}" in message and says in message


def test_a_time_that_goes_back_is_refused(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", {"timestamp_s": 2, "input_tokens": 3}, {"timestamp_s": 1, "input_tokens": 3})
    with pytest.raises(WorkloadError, match="line 2, field 'timestamp_s'.*earlier than the line before"):
        read_trace(path)


@pytest.mark.parametrize("name, text, says", [
    ("t.csv", "timestamp_s,output_tokens\n0,3\n", "line 1, field 'input_tokens': not in the CSV header"),
    ("t.jsonl", "\n\n", "holds no request"),
    ("t.jsonl", '{"timestamp_s": 0, "input_tokens": 3}\n{oops\n', "line 2: not JSON"),
], ids=["a CSV without a required column", "an empty trace", "a line that is not JSON"])
def test_a_file_that_is_no_trace_is_refused_saying_where(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(WorkloadError, match=says):
        read_trace(path)


def test_a_missing_file_is_refused_naming_it(tmp_path):
    with pytest.raises(WorkloadError, match="nope.jsonl.*no such file"):
        read_trace(tmp_path / "nope.jsonl")


def test_a_mooncake_trace_converts_ms_to_seconds_sorted(tmp_path):
    src = _jsonl(tmp_path / "moon.jsonl",
                 {"timestamp": 0, "input_length": 6755, "output_length": 500, "hash_ids": [0, 1]},
                 {"timestamp": 3052, "input_length": 2287, "output_length": 316, "hash_ids": [0, 42]},
                 {"timestamp": 1500, "input_length": 100, "output_length": 3, "hash_ids": [5]})
    assert convert("mooncake", src, tmp_path / "out.jsonl") == (3, 0)
    lines = read_trace(tmp_path / "out.jsonl").lines
    assert [(x.timestamp_s, x.input_tokens, x.output_tokens) for x in lines] == [
        (0.0, 6755, 500), (1.5, 100, 3), (3.052, 2287, 316)]


def test_an_azure_trace_converts_its_datetimes_and_leaves_out_empty_requests(tmp_path):
    src = tmp_path / "azure.csv"
    src.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                   "2023-11-16 18:15:50.9951690,396,109\n2023-11-16 18:15:47.0000000,10,0\n")
    assert convert("azure", src, tmp_path / "out.csv") == (2, 1)
    lines = read_trace(tmp_path / "out.csv").lines
    assert [(x.input_tokens, x.output_tokens) for x in lines] == [(374, 44), (396, 109)]
    assert lines[1].timestamp_s == pytest.approx(4.314579, abs=1e-6)


def test_a_converter_names_the_column_a_file_lacks(tmp_path, capsys):
    src = tmp_path / "azure.csv"
    src.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,374\n")
    assert main(["convert", "--from", "azure", str(src), str(tmp_path / "out.jsonl")]) == 2
    assert "GeneratedTokens" in capsys.readouterr().err and not (tmp_path / "out.jsonl").exists()


def test_an_azure_timestamp_with_a_zone_converts_alike(tmp_path):
    src = tmp_path / "azure.csv"
    src.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.009930+00:00,100,10\n"
                   "2024-05-10 00:00:01.509930+00:00,200,20\n")
    convert("azure", src, tmp_path / "out.jsonl")
    assert [x.timestamp_s for x in read_trace(tmp_path / "out.jsonl").lines] == pytest.approx([0.0, 1.5])


def test_check_summarises_a_valid_trace(tmp_path, capsys):
    path = _jsonl(tmp_path / "t.jsonl", {"timestamp_s": 0, "input_tokens": 5, "class": "a"},
                  {"timestamp_s": 2, "input_tokens": 9, "output_tokens": 4, "class": "b"})
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 requests over 2 s" in out and "input_tokens ≤ 9" in out and "classes a, b" in out
