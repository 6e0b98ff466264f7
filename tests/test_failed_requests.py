"""A job in which no request succeeded is a failed row (its requests kept, re-measured on resume, exit 1);
one in which some failed is measured, counts them and is flagged past the documented threshold."""

from __future__ import annotations

import pandas as pd
import pytest

from llem.measure.load_metrics import FAILED_PCT_FLAG, load_part
from llem.results import read_result
from llem.workload.records import RequestResult
from tests.conftest import FAST, run_in_process, run_llem
from tests.stand_in_server import StandIn

pytest.importorskip("aiohttp")


def _external(url):
    return ["server=external", f"server.url={url}", "server.prompt=token_ids"]


def test_a_job_whose_every_request_failed_is_a_failed_row_at_measure(compose_cfg, tmp_path):
    with StandIn(mode="fail500") as server:
        row = run_in_process(compose_cfg, [*_external(server.url), "warmup.batches=0"], tmp_path / "job")
    assert row["status"] == "failed" and row["error_stage"] == "measure" and row["error_type"] == "RequestsFailed"
    assert "no request of the measured window succeeded (4 asked)" in row["error"]
    assert "4× 'HTTP 500: internal error: out of blocks'" in row["error"]
    requests = pd.read_parquet(tmp_path / "job" / "requests.parquet")
    assert len(requests) == 4 and requests["error"].str.startswith("HTTP 500").all()
    assert (tmp_path / "job" / "outcome.txt").read_text().strip() == "failed"


def test_a_job_whose_every_request_failed_is_measured_again_on_resume(compose_cfg, tmp_path):
    with StandIn(mode="fail500") as server:
        run_in_process(compose_cfg, [*_external(server.url), "warmup.batches=0"], tmp_path / "job")
    with StandIn() as server:
        row = run_in_process(compose_cfg, [*_external(server.url), "warmup.batches=0"], tmp_path / "job")
    assert row["status"] == "ok" and row["num_requests_failed"] == 0
    assert read_result(tmp_path / "job")["status"] == "ok"


def test_a_warm_up_whose_every_request_failed_quotes_the_request_errors(compose_cfg, tmp_path):
    with StandIn(mode="fail500") as server:
        row = run_in_process(compose_cfg, [*_external(server.url), "warmup.batches=1"], tmp_path / "job")
    assert row["status"] == "failed" and row["error_stage"] == "warmup"
    assert "warm-up batch 1" in row["error"] and "HTTP 500: internal error: out of blocks" in row["error"]


@pytest.mark.slow
def test_a_job_whose_every_request_failed_exits_1(tmp_path):
    with StandIn(mode="fail500") as server:
        proc = run_llem([*FAST, "isolate=false", "warmup.batches=0", *_external(server.url),
                         "hydra.run.dir=job"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert read_result(tmp_path / "job")["status"] == "failed"


@pytest.mark.slow
def test_a_sweep_counts_such_jobs_failed_and_a_rerun_measures_them_again(tmp_path):
    args = ["-m", *FAST, "isolate=false", "warmup.batches=0", "repeat=0,1", "hydra.sweep.dir=sweep"]
    with StandIn(mode="fail500") as server:
        first = run_llem([*args, *_external(server.url)], cwd=tmp_path, timeout=300)
        server.mode = "ok"  # the same server, answering now: the same jobs, resumed
        again = run_llem([*args, *_external(server.url)], cwd=tmp_path, timeout=300)
    assert first.returncode == 1 and "0 ok, 0 skipped, 2 failed" in first.stdout + first.stderr
    assert again.returncode == 0 and "2 ok, 0 skipped, 0 failed" in again.stdout + again.stderr


def _results(n, failed):
    return [RequestResult(request_id=i, input_tokens=3, output_tokens=0 if i < failed else 4, start_s=0.0,
                          end_s=1.0, arrival_s=None, error="HTTP 500: boom" if i < failed else None)
            for i in range(n)]


def test_a_window_whose_requests_gave_no_token_and_no_error_fails_too():
    from llem.measure.load_metrics import check_some_succeeded
    from llem.support.errors import RequestsFailed

    silent = [RequestResult(request_id=i, input_tokens=3, output_tokens=0, start_s=0.0, end_s=1.0) for i in range(3)]
    with pytest.raises(RequestsFailed, match="3× 'no output token, and no error'"):
        check_some_succeeded(silent, "measured window")
    check_some_succeeded(silent + _results(1, 0), "measured window")  # one succeeded: measured, not failed


def test_the_quoted_errors_are_the_first_few_distinct_ones():
    from llem.measure.load_metrics import QUOTED_ERRORS, quote_errors

    results = [RequestResult(request_id=i, input_tokens=3, output_tokens=0, start_s=0.0, end_s=1.0,
                             error=f"HTTP 50{i % 5}") for i in range(10)]
    text = quote_errors(results)
    assert text.startswith("2× 'HTTP 500'; 2× 'HTTP 501'") and text.count("×") == QUOTED_ERRORS
    assert text.endswith("and 2 other distinct error(s)")


def _part(compose_cfg, n, failed):
    from llem.config import to_config
    from llem.measure.metrics import request_rows

    config = to_config(compose_cfg([]))
    results = _results(n, failed)
    return load_part(results, request_rows(results, 0.0), 1.0, config)


def test_some_failed_requests_are_counted_and_flagged_past_the_threshold(compose_cfg):
    part, flags = _part(compose_cfg, 8, 2)
    assert part.num_requests_failed == 2
    assert [f.code for f in flags] == ["requests_failed"] and "2 of 8 requests failed" in flags[0].message
    assert "HTTP 500: boom" in flags[0].message


def test_failures_under_the_threshold_are_counted_not_flagged(compose_cfg):
    n = int(100 / FAILED_PCT_FLAG) * 2  # one failure is half the threshold's share
    part, flags = _part(compose_cfg, n, 1)
    assert part.num_requests_failed == 1 and flags == []
