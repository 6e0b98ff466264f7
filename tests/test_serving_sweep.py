"""server=launch in a sweep against real transformers serve: consecutive jobs that need the same server
share one (one engine start for a rate sweep), then the aggregate's capacity and load plot."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import run_llem, served_cache
from tests.test_serving_e2e import SERVE_CACHE, _servers_left

pytestmark = pytest.mark.slow
pytest.importorskip("aiohttp")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_rate_sweep_shares_one_server_then_capacity(tmp_path, tmp_path_factory):
    """-m load.request_rate=8,16,inf with natural output lengths: one server for the three jobs, each length
    asked for generated, then the aggregate's capacity under a TTFT bound and the load plot."""
    cache = served_cache(tmp_path, tmp_path_factory)
    run_llem(["-m", "server=launch", SERVE_CACHE, "load.request_rate=8,16,inf", "dataset.num_requests=16",
              "output_len=null", "dataset.output_lengths.mean=24", "dataset.output_lengths.max=48",
              "hydra.sweep.dir=sweep", f"cache_dir={cache}"], cwd=tmp_path, check=True, timeout=600)
    sweep = tmp_path / "sweep"
    rows = pd.concat([pd.read_parquet(p) for p in sorted(sweep.glob("*/results.parquet"))])
    assert len(rows) == 3 and (rows["status"] == "ok").all()
    assert (rows["num_server_starts"] == 1).all() and rows["server_reused"].sum() == 2  # one engine start
    assert len(list((sweep / ".llem-servers").glob("*.log"))) == 1 and len(list(sweep.glob("*/server.log"))) == 3
    assert (rows["output_len_source"] == "distribution").all()
    req = pd.concat([pd.read_parquet(p) for p in sweep.glob("*/requests.parquet")])
    assert (req["output_tokens"] == req["output_tokens_requested"]).all() and req["output_tokens"].nunique() > 5
    assert not _servers_left(cache)
    out = subprocess.run([sys.executable, "-m", "llem.aggregate", "sweep", "--slo", "ttft_p99_ms<=100000",
                          "--plots"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "== capacity under ttft_ms_p99<=100000" in out.stdout
    assert "the highest rate tried, 16 req/s, still met it — try higher rates" in out.stdout
    assert "inf (burst: every request at once) meets the bounds; not a rate" in out.stdout
    assert (tmp_path / "aggregate" / "figures" / "load_j_per_token_and_latency_vs_rate.png").is_file()
    summary = pd.read_parquet(tmp_path / "aggregate" / "summary.parquet")
    assert summary["requests_per_s_mean"].notna().all() and summary["queue_ms_p99"].notna().all()
