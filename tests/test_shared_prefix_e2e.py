"""dataset=shared_prefix measured end to end on the tiny model in llem's process (against a launched server:
tests/test_served_workloads_e2e.py): every request's group and reusable tokens come back in requests.parquet, and
the prompts measured are the workload's (groups sharing their prefix ids)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import run_in_process

pytestmark = pytest.mark.slow
KEYS = ["dataset=shared_prefix", "dataset.num_groups=3", "dataset.prefix_len=24", "input_len=32", "output_len=8",
        "dataset.num_requests=9"]


def _rebuilt(compose_cfg, overrides):
    from llem import workload
    from llem.config import to_config

    return workload.build(to_config(compose_cfg(overrides)))


def _check_groups(job, work):
    r = pd.read_parquet(job / "results.parquet").iloc[0]
    req = pd.read_parquet(job / "requests.parquet").sort_values("request_id")
    assert r["status"] == "ok" and r["workload_sha256"] == work.counts().workload_sha256  # the prompts measured
    assert req["prefix_group_index"].tolist() == [0, 1, 2] * 3
    assert req["prefix_reusable_tokens"].tolist() == [0, 0, 0] + [24] * 6
    assert (req["input_tokens"] == 32).all() and req["error"].isna().all()
    assert r["prefix_reusable_tokens_total"] == 6 * 24 and pd.isna(r["engine_prefix_cache_hit_pct"])
    for group in range(3):
        prefixes = {tuple(q.token_ids[:24]) for q in work.requests if q.prefix_group_index == group}
        assert len(prefixes) == 1
    return r, req


def test_a_shared_prefix_job_in_process(compose_cfg, tmp_path):
    run_in_process(compose_cfg, KEYS, tmp_path / "run")
    r, _ = _check_groups(tmp_path / "run", _rebuilt(compose_cfg, KEYS))
    assert "backend=pytorch has no prefix cache" in r["engine_prefix_cache_null_reason"]
