"""server=launch against a real OpenAI-compatible server: transformers serve --continuous-batching on the
tiny random model (llem writes its checkpoint and id-word tokenizer), real HTTP, real streaming: one run
as the README gives it (the sweep is tests/test_serving_sweep.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import psutil
import pytest

from tests.conftest import run_llem, served_cache

pytestmark = pytest.mark.slow
pytest.importorskip("aiohttp")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


# transformers serve sizes its paged KV cache from the host's free memory: ~15 GB resident for the tiny model
# on the 2-core, 24 GB VM, so two of these tests at once (xdist) ran the machine out of memory and the kernel
# killed one server's model process while it loaded. 64 pages of 256 tokens hold every request of these tests
# (1.75 GB resident, the same tok/s).
SERVE_CACHE = "server.args=[--cb-num-blocks,64]"


def _servers_left(cache):
    return [p for p in psutil.process_iter(["cmdline"]) if str(cache) in " ".join(p.info["cmdline"] or [])]


def test_launch_at_a_rate(tmp_path, tmp_path_factory, compose_cfg):
    """The README's command on CPU, as given: ends ok, the server's KV cache sized to the workload (it fits a
    laptop), arrivals at the rate asked, every token asked for, the server's log kept in the job dir, and no
    server left behind."""
    from llem.backends._serve_cache import cache_pages
    from llem.config import to_config

    cache = served_cache(tmp_path, tmp_path_factory)
    proc = run_llem(["server=launch", "load.request_rate=8", "dataset.num_requests=32",
                     "hydra.run.dir=run", f"cache_dir={cache}"], cwd=tmp_path, check=True, timeout=600)
    job = tmp_path / "run"
    r = pd.read_parquet(job / "results.parquet").iloc[0]
    req = pd.read_parquet(job / "requests.parquet").sort_values("arrival_offset_s")
    assert r["status"] == "ok" and r["server_mode"] == "launch" and r["server_prompt"] == "text"
    assert r["server_start_s"] > 0 and not r["server_reused"] and r["num_server_starts"] == 1
    pages = cache_pages(to_config(compose_cfg(["server=launch"])))
    assert f"--cb-num-blocks {pages}" in r["server_command"]
    assert 0 < r["cpu_rss_peak_mib"] < 4096  # the client and the server's processes (~15 GB left to itself)
    assert len(req) == 32 and (req["output_tokens"] == 128).all() and req["error"].isna().all()
    assert req["token_count_note"].isna().all()  # the server streamed and reported every token asked
    assert (req["server_input_tokens"] == req["input_tokens"]).all()  # the id-word text is the token ids exactly
    gaps = np.diff(req["arrival_offset_s"].to_numpy())
    assert gaps.mean() == pytest.approx(1 / 8, rel=0.25), gaps.mean()
    assert r["inter_arrival_s_mean"] == pytest.approx(1 / 8, rel=0.25) and r["target_requests_per_s"] == 8.0
    assert 0.5 < r["inter_arrival_cv"] < 1.6  # Poisson gaps (CV 1), not a fixed clock
    assert (req["ttft_ms"] > 0).all() and (req["queue_ms"] >= 0).all()
    assert r["load_mode"] == "open" and (req["lateness_ms"] >= 0).all() and r["client_lateness_ms_p99"] is not None
    assert r["output_tokens_total"] == r["output_tokens_expected"] == 32 * 128
    assert "Uvicorn running" in (job / "server.log").read_text()
    assert "server: stopped" in proc.stdout + proc.stderr and not _servers_left(cache)
    assert pd.isna(r["num_in_flight_engine"]) and "no maximum batch size" in r["num_in_flight_engine_null_reason"]
    assert 0.0 <= r["host_other_cpu_pct"] <= 100.0  # the server's tree is the job's own, not another's
