"""server.metrics against a real server without Prometheus metrics: transformers serve, launched by llem on
the tiny random model. Under auto the job measures as always and the server_* columns are null with the
reason; under on the job fails at its check, naming the key (the server shared by both jobs)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import run_llem
from tests.test_serving_e2e import SERVE_CACHE, _servers_left

pytestmark = pytest.mark.slow
pytest.importorskip("aiohttp")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_transformers_serve_has_no_metrics_null_under_auto_a_check_failure_under_on(tmp_path):
    cache = tmp_path / "cache"
    proc = run_llem(["-m", "server=launch", SERVE_CACHE, "server.metrics=auto,on", "dataset.num_requests=4",
                     "output_len=8", "hydra.sweep.dir=sweep", f"cache_dir={cache}"], cwd=tmp_path, timeout=600)
    rows = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "sweep").glob("*/results.parquet"))])
    auto = rows[rows["cfg.server.metrics"] == "auto"].iloc[0]
    on = rows[rows["cfg.server.metrics"] == "on"].iloc[0]
    assert auto["status"] == "ok", (auto["error"], proc.stderr[-2000:])
    assert pd.isna(auto["num_server_running_mean"]) and pd.isna(auto["server_generated_tokens"])
    assert "has no Prometheus metrics llem reads" in auto["server_metrics_null_reason"]
    assert "(HTTP 404)" in auto["server_metrics_null_reason"] and "(HTTP 404)" in on["error"]
    assert on["status"] == "failed" and on["error_stage"] == "check" and "server.metrics=on" in on["error"]
    assert not _servers_left(cache)
