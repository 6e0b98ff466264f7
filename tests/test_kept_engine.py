"""reuse_engine: consecutive jobs of a sweep with the same engine build measure on one kept engine."""

from __future__ import annotations

import pandas as pd
import pytest

from llem.backends import engine_class
from llem.config import to_config
from llem.deploy.reuse import Reuse, SweepJobs, reuse_for
from tests.conftest import FAST, run_llem

VLLM = ["backend=vllm", "model=llama3", "device=cuda"]


def _rows(sweep):
    rows = {}
    for path in sorted(sweep.glob("*/results.parquet")):
        rows[path.parent.name] = pd.read_parquet(path).iloc[0]
    return rows


def test_vllm_build_key_leaves_out_batch_and_seed_only(compose_cfg):
    key = engine_class("vllm").build_key
    base = key(to_config(compose_cfg(VLLM)))
    assert base is not None
    assert key(to_config(compose_cfg([*VLLM, "batch=32", "seed=7", "repeat=3", "dataset.num_requests=9"]))) == base
    for change in ("model.dtype=float16", "backend.gpu_memory_utilization=0.5", "input_len=64", "output_len=64",
                   "backend.enforce_eager=true", "cache_dir=/elsewhere"):
        assert key(to_config(compose_cfg([*VLLM, change]))) != base, change


def test_pytorch_build_key_keeps_the_shapes_a_compiled_decode_was_built_at(compose_cfg):
    key = engine_class("pytorch").build_key
    eager = key(to_config(compose_cfg(["batch=1"])))
    assert eager == key(to_config(compose_cfg(["batch=8"])))  # eager generate takes any batch
    assert eager != key(to_config(compose_cfg(["batch=1", "seed=1"])))  # random weights follow the seed
    compiled = ["backend.torch_compile=default"]
    assert key(to_config(compose_cfg([*compiled, "batch=1"]))) != key(to_config(compose_cfg([*compiled, "batch=8"])))
    assert key(to_config(compose_cfg(["backend.num_processes=2"]))) is None


def test_a_build_is_sized_for_the_largest_batch_of_the_jobs_after_it(compose_cfg, monkeypatch):
    jobs = [("batch=1",), ("batch=32",), ("batch=8",), ("batch=64", "model.dtype=float16"), ("batch=128",)]
    monkeypatch.setattr(SweepJobs, "jobs", jobs)
    monkeypatch.setattr(SweepJobs, "compose", lambda ov: to_config(compose_cfg([*VLLM, *ov])))
    first = reuse_for(to_config(compose_cfg([*VLLM, "batch=1"])), "cuda", ["batch=1"])
    assert (first.capacity, first.build_for) == (1, 32)  # the float16 job ends the run of this build
    after = reuse_for(to_config(compose_cfg([*VLLM, "batch=64", "model.dtype=float16"])), "cuda",
                      ["batch=64", "model.dtype=float16"])
    assert after.build_for == 64 and after.key != first.key
    assert first.served_by(first.key, 32) and not first.served_by(first.key, 0)
    assert Reuse(first.key, 64, 64).served_by(first.key, 32) is False  # a build too small for the batch
    assert reuse_for(to_config(compose_cfg([*VLLM, "reuse_engine=false"])), "cuda", []) is None
    assert reuse_for(to_config(compose_cfg([*VLLM, "isolate=false"])), "cuda", []) is None
    assert reuse_for(to_config(compose_cfg([*VLLM, "server=launch"])), "cuda", []) is None  # the server holds it


def _by(rows, *keys):
    return {tuple(int(r[f"cfg.{k}"]) for k in keys): r for r in rows.values()}


@pytest.fixture(scope="module")
def kept_sweep(tmp_path_factory):
    """One real sweep shared by the tests below: per seed, four jobs of one build (batch=1,2 × repeat=0,1);
    the second seed's jobs need another build (random weights follow the seed)."""
    root = tmp_path_factory.mktemp("kept")
    fast = [o for o in FAST if not o.startswith("batch=")]  # a key's first place on the line is its place in the grid
    run_llem(["-m", *fast, "seed=0,1", "batch=1,2", "repeat=0,1", "hydra.sweep.dir=sweep"], cwd=root, check=True)
    return _rows(root / "sweep")


@pytest.mark.slow
def test_sweep_measures_on_one_kept_engine(kept_sweep):
    """Four jobs, one build: the later three pay no load, measure their own batch, and say whose build it was."""
    rows = _by({k: r for k, r in kept_sweep.items() if int(r["cfg.seed"]) == 0}, "batch", "repeat")
    assert len(rows) == 4 and all(r.status == "ok" for r in rows.values())
    first = rows[(1, 0)]
    assert not first.engine_reused and first.load_s > 0 and first.num_engine_jobs == 1
    assert first.engine_import_s > 0  # imported by the kept process as it started, outside load_s
    for k in ((1, 1), (2, 0), (2, 1)):
        r = rows[k]
        assert r.engine_reused and pd.isna(r.load_s) and pd.isna(r.engine_import_s), k
        assert r.engine_build_job == first.engine_build_job and r.engine_build_s == first.load_s
        assert r.num_engine_builds == 1
    assert [rows[k].num_engine_jobs for k in ((1, 0), (1, 1), (2, 0), (2, 1))] == [1, 2, 3, 4]
    assert rows[(2, 1)].output_tokens_total == 4 * 8 and rows[(2, 1)].num_in_flight == 2  # its own batch


@pytest.mark.slow
def test_a_different_build_closes_the_kept_engine(kept_sweep):
    """Seeds differ (random weights follow the seed): the first job of the second seed builds its own."""
    rows = _by(kept_sweep, "seed", "batch", "repeat")
    assert len(rows) == 8 and all(r.status == "ok" for r in rows.values())
    first, other = rows[(0, 1, 0)], rows[(1, 1, 0)]
    assert not other.engine_reused and other.load_s > 0 and other.num_engine_jobs == 1
    assert [int(first.num_engine_builds), int(other.num_engine_builds)] == [1, 2]
    assert other.engine_build_job != first.engine_build_job
    assert rows[(1, 2, 1)].engine_reused and rows[(1, 2, 1)].engine_build_job == other.engine_build_job


def test_a_kept_engine_whose_device_idle_floor_expired_is_rebuilt(compose_cfg, monkeypatch, tmp_path):
    """On a GPU the floor the kept engine's jobs use is the one metered before it was built: once older than
    baseline.device_idle_reuse_s there is none (the job closes the engine and meters the floor again)."""
    from llem.deploy import floors
    from llem.energy.idle import DeviceIdle

    config = to_config(compose_cfg(["baseline.device_idle_reuse_s=60"]))
    monkeypatch.setattr(floors, "visible_uuids", lambda n: ["GPU-0"])
    seen = []
    fresh = DeviceIdle(power_w_per_gpu=[75.0], source="reused", taken_at=1.0, job="a")

    def reuse(store, uuids, max_age_s):
        seen.append(max_age_s)
        return fresh if len(seen) == 1 else None

    monkeypatch.setattr(floors, "reuse_device_idle", reuse)
    assert floors.for_kept(config, 1, "cuda", tmp_path) is fresh
    assert floors.for_kept(config, 1, "cuda", tmp_path) is None and seen == [60, 60]
    assert floors.for_kept(config, 1, "cpu", tmp_path).power_w is None  # no floor on the CPU: nothing to expire
