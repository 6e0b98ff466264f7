"""Compile caches under cache_dir: pointed there before the build, hit or miss read off the files;
the device-idle floor reused by later jobs of a sweep while recent."""

import os
import time

from llem.backends.base import CompileCache
from llem.config import to_config
from llem.energy.idle import DeviceIdle, remember_device_idle, reuse_device_idle
from llem.measure import compile_cache


def _cache(tmp_path):
    return CompileCache(env={"LLEM_TEST_CACHE_DIR": str(tmp_path / "cc")},
                        artifacts=[str(tmp_path / "cc" / "graphs" / "*" / "artifact_*")])


def test_a_build_that_writes_artifacts_is_a_miss_and_the_next_one_a_hit(tmp_path, monkeypatch):
    monkeypatch.delenv("LLEM_TEST_CACHE_DIR", raising=False)
    cache = _cache(tmp_path)
    compile_cache.apply(cache)
    assert os.environ["LLEM_TEST_CACHE_DIR"] == str(tmp_path / "cc") and (tmp_path / "cc").is_dir()
    before = compile_cache.snapshot(cache)
    (tmp_path / "cc" / "graphs" / "k1").mkdir(parents=True)
    (tmp_path / "cc" / "graphs" / "k1" / "artifact_0").write_text("compiled")
    first = compile_cache.outcome(cache, tmp_path, before, compile_cache.snapshot(cache))
    assert (first.compile_cache, first.num_compile_files_written) == ("miss", 1)
    before = compile_cache.snapshot(cache)  # the next job: loads, writes nothing
    second = compile_cache.outcome(cache, tmp_path, before, compile_cache.snapshot(cache))
    assert (second.compile_cache, second.num_compile_files_written) == ("hit", 0)
    nothing = CompileCache()
    assert compile_cache.outcome(nothing, tmp_path, {}, {}).compile_cache == "none"


def test_a_variable_the_user_set_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("LLEM_TEST_CACHE_DIR", str(tmp_path / "mine"))
    compile_cache.apply(_cache(tmp_path))
    assert os.environ["LLEM_TEST_CACHE_DIR"] == str(tmp_path / "mine")


def test_engines_point_their_caches_under_the_root(compose_cfg, tmp_path, monkeypatch):
    from llem.backends import engine_class

    for var in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    vllm = to_config(compose_cfg(["backend=vllm", "model=llama3", "model.weights=random"]))
    cache = engine_class("vllm")(vllm, "cuda").compile_cache(tmp_path)
    assert cache.env["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm") and cache.artifacts
    assert all(a.startswith(str(tmp_path / "vllm" / "torch_compile_cache")) for a in cache.artifacts)
    eager = to_config(compose_cfg(["backend=vllm", "backend.enforce_eager=true"]))
    assert engine_class("vllm")(eager, "cuda").compile_cache(tmp_path).artifacts == []
    off = to_config(compose_cfg([]))
    assert engine_class("pytorch")(off, "cpu").compile_cache(tmp_path) == CompileCache()
    compiled = to_config(compose_cfg(["backend.torch_compile=default"]))
    assert engine_class("pytorch")(compiled, "cpu").compile_cache(tmp_path).env["TORCHINDUCTOR_CACHE_DIR"] == str(
        tmp_path / "inductor")


def test_the_shared_dummy_model_has_one_path_per_architecture(compose_cfg, tmp_path):
    from llem.backends._hf_model import shared_dummy_model

    arch = to_config(compose_cfg(["model=llama3"])).model.architecture
    a = shared_dummy_model(arch, "bfloat16", tmp_path)
    assert a == shared_dummy_model(arch, "bfloat16", tmp_path) and (a / "config.json").is_file()
    assert shared_dummy_model(arch, "float16", tmp_path) != a
    assert [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".")] == []


def test_the_device_idle_floor_is_reused_while_recent_and_clean(tmp_path):
    uuids = ["GPU-b", "GPU-a"]
    idle = DeviceIdle(power_w_per_gpu=[70.0, 71.5], source="measured", taken_at=time.time() - 30)
    remember_device_idle(tmp_path, uuids, idle, "batch=1", unclean=False)
    again = reuse_device_idle(tmp_path, ["GPU-a", "GPU-b"], max_age_s=600)
    assert again is not None and again.power_w == 141.5 and again.source == "reused" and again.job == "batch=1"
    assert again.rows == [] and again.taken_at == idle.taken_at
    assert reuse_device_idle(tmp_path, uuids, max_age_s=10) is None  # expired: measured again
    assert reuse_device_idle(tmp_path, ["GPU-a"], max_age_s=600) is None  # other GPUs
    assert reuse_device_idle(tmp_path, uuids, max_age_s=0) is None  # reuse off
    remember_device_idle(tmp_path, uuids, idle, "batch=2", unclean=True)
    assert reuse_device_idle(tmp_path, uuids, max_age_s=600) is None  # an unstable floor is never reused
