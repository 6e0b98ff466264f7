"""The TensorRT-LLM engine on CPU, against a small fake shaped like the 1.x LLM API (no tensorrt_llm
needed): config mapping, validation errors, result conversion, the engine cache, the missing package."""

from __future__ import annotations

import datetime
import enum
import json
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest

from llem.backends import engine_class
from llem.backends.tensorrt import TensorRTEngine, cache_key, llm_kwargs, to_api
from llem.config import to_config
from llem.errors import ConfigError, DeviceError, EngineUnavailable
from llem.records import Request
from tests.conftest import FAST, run_llem


class QuantAlgo(enum.Enum):  # tensorrt_llm.llmapi.QuantAlgo (the members llem maps to)
    FP8 = "FP8"
    FP8_BLOCK_SCALES = "FP8_BLOCK_SCALES"
    NVFP4 = "NVFP4"
    W8A16 = "W8A16"
    W4A16 = "W4A16"
    W4A16_AWQ = "W4A16_AWQ"
    W8A8_SQ_PER_CHANNEL = "W8A8_SQ_PER_CHANNEL"
    INT8 = "INT8"


class Kw:
    """Stands for a TensorRT-LLM config object: keeps its keyword arguments."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class Stream:
    """LLM.generate_async(..., streaming=True): one chunk per engine iteration, token ids growing."""

    def __init__(self, llm, prompt, params):
        self.llm, self.prompt, self.params = llm, prompt, params
        self.ids, self.scheduled = [], None

    def __aiter__(self):
        return self

    async def __anext__(self):
        import asyncio

        if len(self.ids) >= self.params.max_tokens:
            raise StopAsyncIteration
        await asyncio.sleep(0.001)
        if self.scheduled is None:
            self.scheduled = time.perf_counter()
        self.ids.append(7)
        timing = Kw(first_scheduled_time=datetime.timedelta(seconds=self.scheduled)) if self.llm.stamps else None
        completion = Kw(token_ids=list(self.ids), request_perf_metrics=Kw(timing_metrics=timing))
        return Kw(outputs=[completion], finished=len(self.ids) == self.params.max_tokens)


class FakeLLM:
    built = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.stamps = kwargs.get("return_perf_metrics", False)
        self.prompts = []
        FakeLLM.built.append(self)

    def generate_async(self, inputs, sampling_params=None, streaming=False):
        assert streaming and isinstance(inputs["prompt_token_ids"], list)
        self.prompts.append(inputs["prompt_token_ids"])
        return Stream(self, inputs, sampling_params)

    def save(self, engine_dir):
        Path(engine_dir, "config.json").write_text(json.dumps({"built_from": self.kwargs["model"]}))

    def shutdown(self):
        self.closed = True


@pytest.fixture
def fake_trt(monkeypatch):
    root = types.ModuleType("tensorrt_llm")
    root.__version__ = "1.2.1"
    root.LLM = type("LLM", (FakeLLM,), {})
    root.SamplingParams = Kw
    llmapi = types.ModuleType("tensorrt_llm.llmapi")
    llmapi.KvCacheConfig, llmapi.QuantConfig, llmapi.QuantAlgo = Kw, Kw, QuantAlgo
    engine_mod = types.ModuleType("tensorrt_llm._tensorrt_engine")
    engine_mod.LLM = type("TrtLLM", (FakeLLM,), {})
    root.llmapi, root._tensorrt_engine = llmapi, engine_mod
    for name, mod in {"tensorrt_llm": root, "tensorrt_llm.llmapi": llmapi,
                      "tensorrt_llm._tensorrt_engine": engine_mod}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    FakeLLM.built = []
    return root


def _config(compose_cfg, *overrides):
    cfg = to_config(compose_cfg(["backend=tensorrt", "model=tiny", *overrides]))
    engine_class("tensorrt").validate_config(cfg)
    return cfg


def test_shared_keys_map_to_llm_arguments(compose_cfg):
    cfg = _config(compose_cfg, "batch=8", "model.dtype=bfloat16", "input_len=100", "output_len=28",
                  "backend.tensor_parallel_size=2", "backend.max_num_tokens=4096",
                  "backend.kv_cache_free_gpu_memory_fraction=0.5", "backend.quantization=fp8",
                  "backend.kv_cache_dtype=fp8", "+backend.engine_args.enable_chunked_prefill=true")
    kw = llm_kwargs(cfg, "/m", token_ids_only=True)
    assert kw["max_batch_size"] == 8 and kw["dtype"] == "bfloat16" and kw["max_seq_len"] == 128
    assert kw["tensor_parallel_size"] == 2 and kw["pipeline_parallel_size"] == 1 and kw["max_num_tokens"] == 4096
    assert kw["kv_cache_config"] == {"free_gpu_memory_fraction": 0.5, "enable_block_reuse": False}
    assert kw["quant_config"] == {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    assert kw["load_format"] == "dummy" and kw["skip_tokenizer_init"] and kw["return_perf_metrics"]
    assert kw["enable_chunked_prefill"] is True
    assert TensorRTEngine.gpus_required(cfg.backend) == 2
    api = to_api(kw, types.SimpleNamespace(KvCacheConfig=Kw, QuantConfig=Kw, QuantAlgo=QuantAlgo))
    assert api["kv_cache_config"].free_gpu_memory_fraction == 0.5
    assert api["quant_config"].quant_algo is QuantAlgo.FP8 and api["quant_config"].kv_cache_quant_algo is QuantAlgo.FP8
    plain = llm_kwargs(_config(compose_cfg), "/m", True)
    assert "quant_config" not in plain and "max_num_tokens" not in plain


@pytest.mark.parametrize("arg,key", [("max_batch_size", "batch"), ("dtype", "model.dtype"),
                                     ("kv_cache_config", "backend.kv_cache_free_gpu_memory_fraction"),
                                     ("quant_config", "backend.quantization"), ("load_format", "model.weights")])
def test_engine_args_may_not_duplicate_llem_keys(compose_cfg, arg, key):
    with pytest.raises(ConfigError, match=f"backend.engine_args.{arg}.*{key}"):
        _config(compose_cfg, f"+backend.engine_args.{arg}=1")


@pytest.mark.parametrize("bad,key", [
    ("backend.llm_backend=onnx", "backend.llm_backend"), ("backend.tensor_parallel_size=0", "tensor_parallel_size"),
    ("backend.quantization=int3", "backend.quantization"), ("backend.kv_cache_dtype=fp4", "kv_cache_dtype"),
    ("backend.kv_cache_free_gpu_memory_fraction=1.5", "kv_cache_free_gpu_memory_fraction"),
    ("backend.max_seq_len=1", "max_seq_len"), ("backend.max_num_tokens=0", "max_num_tokens"),
])
def test_bad_values_name_the_key_and_the_allowed(compose_cfg, bad, key):
    with pytest.raises(ConfigError, match=f"{key}.*allowed"):
        _config(compose_cfg, bad)


def test_engine_build_needs_pretrained_weights(compose_cfg):
    with pytest.raises(ConfigError, match="model.weights=random.*llm_backend=trt"):
        _config(compose_cfg, "backend.llm_backend=trt")


def test_check_names_the_install_and_the_gpu(compose_cfg, monkeypatch, fake_trt):
    cfg = _config(compose_cfg)
    with pytest.raises(DeviceError, match="device=cuda"):
        TensorRTEngine(cfg, "cpu").check()
    TensorRTEngine(cfg, "cuda").check()
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    with pytest.raises(EngineUnavailable, match=r"llem\[tensorrt\]"):
        TensorRTEngine(cfg, "cuda").check()


def test_generate_streams_every_request_and_converts(compose_cfg, fake_trt):
    cfg = _config(compose_cfg, "batch=2", "output_len=5")
    engine = TensorRTEngine(cfg, "cuda")
    engine.load()
    llm = FakeLLM.built[-1]
    assert isinstance(llm, fake_trt.LLM) and llm.kwargs["load_format"] == "dummy"
    assert Path(llm.kwargs["model"], "config.json").is_file()  # written from the tiny architecture
    reqs = [Request(i, [3 + i, 4, 5], 3) for i in range(5)]
    done = []
    t0 = time.perf_counter()
    out = engine.generate(reqs, 5, done.append)
    assert [r.request_id for r in out] == list(range(5)) and sum(done) == 5
    assert llm.prompts == [r.token_ids for r in reqs]
    for r in out:
        assert r.output_tokens == 5 and r.timing_note is None
        assert t0 <= r.start_s <= r.first_token_s <= r.end_s and r.token_times_s == sorted(r.token_times_s)
    params = engine.sampling_params(5)
    assert params.max_tokens == params.min_tokens == 5 and params.ignore_eos and params.top_k == 1
    assert params.end_id in (cfg.model.architecture["eos_token_id"],) and not params.detokenize
    info = engine.info()
    assert info.versions["tensorrt_llm"] == "1.2.1" and info.resolved_args["max_batch_size"] == 2
    assert info.num_parameters > 0 and info.weight_bytes == 4 * info.num_parameters  # tiny is float32
    engine.close()
    assert llm.closed


def test_no_executor_stamps_falls_back_with_a_note(compose_cfg, fake_trt):
    engine = TensorRTEngine(_config(compose_cfg, "+backend.engine_args.enable_iter_perf_stats=true"), "cuda")
    engine.load()
    FakeLLM.built[-1].stamps = False
    out = engine.generate([Request(0, [5, 6], 2)], 3, lambda n: None)
    assert out[0].output_tokens == 3 and "first_scheduled_time" in out[0].timing_note


def test_engine_build_is_cached_across_jobs(compose_cfg, fake_trt, tmp_path, monkeypatch):
    from llem.backends import tensorrt

    monkeypatch.setattr(tensorrt, "count_parameters", lambda cfg: None)  # no hub lookup of the made-up id
    overrides = ["backend.llm_backend=trt", "model.weights=pretrained", "model.hf_id=org/some-model",
                 f"backend.engine_cache_dir={tmp_path}"]
    first = TensorRTEngine(_config(compose_cfg, *overrides), "cuda")
    first.load()
    assert first.cache == "built" and isinstance(first.llm, fake_trt._tensorrt_engine.LLM)
    assert first.llm.kwargs["model"] == "org/some-model"
    saved = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(saved) == 1 and (saved[0] / "config.json").is_file()
    second = TensorRTEngine(_config(compose_cfg, *overrides), "cuda")
    second.load()
    assert second.cache == "hit" and second.llm.kwargs["model"] == str(saved[0])
    third = TensorRTEngine(_config(compose_cfg, *overrides, "batch=16"), "cuda")
    third.load()
    assert third.cache == "built"  # another build setting, another engine
    assert cache_key({"a": 1}, "1.2.1") != cache_key({"a": 1}, "1.3.0")


@pytest.mark.slow
def test_cli_shows_config_and_fails_fast_without_tensorrt_llm(tmp_path):
    shown = run_llem(["backend=tensorrt", "--cfg", "job"], cwd=tmp_path, check=True)
    assert "llm_backend: pytorch" in shown.stdout and "kv_cache_free_gpu_memory_fraction" in shown.stdout
    proc = run_llem(["backend=tensorrt", *FAST, "hydra.run.dir=run"], cwd=tmp_path)
    assert proc.returncode == 1 and "pip install 'llem[tensorrt]'" in proc.stdout + proc.stderr
    r = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert r["status"] == "failed" and r["error_stage"] == "check" and r["error_type"] == "EngineUnavailable"
    assert "loaded" not in proc.stdout + proc.stderr


def test_resolved_llm_arguments_print_without_tensorrt_llm(capsys, monkeypatch):
    from llem.backends import tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    tensorrt.main(["model=llama3", "batch=32", "backend.quantization=w4a16_awq"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["max_batch_size"] == 32 and shown["quant_config"]["quant_algo"] == "W4A16_AWQ"
    assert shown["model"] == "meta-llama/Meta-Llama-3-8B-Instruct" and shown["dtype"] == "bfloat16"
    with pytest.raises(ConfigError, match="backend.quantization"):
        tensorrt.main(["backend.quantization=int3"])
