"""load.trace end to end on the tiny model: a two-class trace replayed in llem's process, its arrival offsets read
back from requests.parquet against the trace (against a launched server: tests/test_served_workloads_e2e.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import run_in_process, run_llem

pytestmark = pytest.mark.slow

SCALE = 0.5
RECORDS = [  # (timestamp_s, input_tokens, output_tokens or None, class)
    (0.0, 8, 4, "short"), (0.2, 16, 12, "long"), (0.2, 6, None, "short"), (0.7, 14, 10, "long"),
    (1.1, 5, 3, "short"), (1.6, 16, 8, "long"),
]
KEYS = ["output_len=null", "input_len=16", "dataset.output_lengths.max=32", "dataset.output_lengths.mean=8",
        f"load.trace_time_scale={SCALE}"]


def write_trace(path):
    """The two-class trace of RECORDS as JSONL at ``path``."""
    lines = [{"timestamp_s": t, "input_tokens": n_in, "class": c, **({"output_tokens": n_out} if n_out else {})}
             for t, n_in, n_out, c in RECORDS]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture
def trace_file(tmp_path):
    return write_trace(tmp_path / "two_class.jsonl")


def _check_replayed(job):
    """The row names the trace; each request was due at its trace time × SCALE, asked its lengths, kept its
    class."""
    r = pd.read_parquet(job / "results.parquet").iloc[0]
    req = pd.read_parquet(job / "requests.parquet").sort_values("request_id")
    assert r["status"] == "ok" and r["load_mode"] == "open" and r["load_trace"] == "two_class.jsonl"
    assert len(r["load_trace_sha256"]) == 64 and r["num_requests"] == len(RECORDS)
    assert r["output_len_source"] == "trace+distribution" and r["requests_sizing"] == "trace"
    due = req["arrival_offset_s"].to_numpy() - req["arrival_offset_s"].iloc[0]
    assert due == pytest.approx([t * SCALE for t, *_ in RECORDS], abs=1e-6)
    assert list(req["input_tokens"]) == [n for _, n, _, _ in RECORDS]
    asked = [n for _, _, n, _ in RECORDS]
    assert [a for a, n in zip(req["output_tokens_requested"], asked) if n] == [n for n in asked if n]
    assert (req["output_tokens"] == req["output_tokens_requested"]).all()  # EOS ignored
    assert list(req["request_class"]) == [c for *_, c in RECORDS]
    assert (req["start_offset_s"] >= req["arrival_offset_s"]).all() and req["error"].isna().all()
    return r, req


def test_a_trace_replayed_in_process(compose_cfg, trace_file, tmp_path):
    run_in_process(compose_cfg, [f"load.trace={trace_file}", "dataset.num_requests=null", *KEYS], tmp_path / "run")
    r, _ = _check_replayed(tmp_path / "run")
    assert r["target_requests_per_s"] == pytest.approx((len(RECORDS) - 1) / (RECORDS[-1][0] * SCALE))


def test_a_bad_trace_fails_the_job_before_anything_loads(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp_s": 0, "input_tokens": 3}\n{"timestamp_s": -2, "input_tokens": 3}\n')
    proc = run_llem([f"load.trace={path}", *KEYS, "hydra.run.dir=run"], cwd=tmp_path)
    r = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert proc.returncode == 1 and r["status"] == "failed" and r["error_stage"] == "config"
    assert "bad.jsonl" in r["error"] and "line 2, field 'timestamp_s'" in r["error"] and "negative" in r["error"]
    assert "loading tiny" not in proc.stdout + proc.stderr
