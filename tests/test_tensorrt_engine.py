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
from llem.support.errors import ConfigError, DeviceError, EngineUnavailable
from llem.workload.records import Request
from tests.conftest import fake_distribution, run_llem


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
    with pytest.raises(EngineUnavailable, match=r"pip install \"\.\[tensorrt\]\""):
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
    assert info.versions["tensorrt_llm"] == "1.2.1" and json.loads(info.resolved.llm_args)["max_batch_size"] == 2
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
def test_cli_shows_config_without_tensorrt_llm(tmp_path):
    shown = run_llem(["backend=tensorrt", "--cfg", "job"], cwd=tmp_path, check=True)
    assert "llm_backend: pytorch" in shown.stdout and "kv_cache_free_gpu_memory_fraction" in shown.stdout


def test_a_job_fails_fast_at_the_check_without_tensorrt_llm(compose_cfg, tmp_path, caplog, monkeypatch):
    """The job's own path in this process (the check stage's exit code: tests/test_sweeps.py)."""
    from tests.conftest import run_in_process

    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # not importable, installed here or not
    with caplog.at_level("INFO"):
        run_in_process(compose_cfg, ["backend=tensorrt"], tmp_path / "run")
    assert 'pip install ".[tensorrt]"' in caplog.text
    r = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert r["status"] == "failed" and r["error_stage"] == "check" and r["error_type"] == "EngineUnavailable"
    assert "loaded" not in caplog.text


def test_resolved_llm_arguments_print_without_tensorrt_llm(capsys, monkeypatch):
    from llem.backends import tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    tensorrt.main(["model=llama3", "batch=32", "backend.quantization=w4a16_awq"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["max_batch_size"] == 32 and shown["quant_config"]["quant_algo"] == "W4A16_AWQ"
    assert shown["model"] == "meta-llama/Meta-Llama-3-8B-Instruct" and shown["dtype"] == "bfloat16"
    with pytest.raises(ConfigError, match="backend.quantization"):
        tensorrt.main(["backend.quantization=int3"])


# -- engine_args checked against LLM's arguments, read from tensorrt_llm's source (never imported) ----------

_BASE_FIELDS = ("model", "tokenizer", "tokenizer_mode", "skip_tokenizer_init", "trust_remote_code",
                "tensor_parallel_size", "pipeline_parallel_size", "dtype", "revision", "load_format", "max_batch_size",
                "max_num_tokens", "max_seq_len", "kv_cache_config", "quant_config", "enable_chunked_prefill",
                "scheduler_config", "speculative_config", "return_perf_metrics", "enable_iter_perf_stats")

_FAKE_LLM_ARGS = '''
from typing import Any, ClassVar, Optional

from pydantic import Field, PrivateAttr

from .utils import StrictBaseModel


class KvCacheConfig(StrictBaseModel):
    free_gpu_memory_fraction: float = 0.9


class BaseLlmArgs(StrictBaseModel):
    """Arguments common to both backends."""

    model_config = {"arbitrary_types_allowed": True, "extra": "forbid"}
    registry: ClassVar[dict] = {}
    _parallel_config: Optional[object] = PrivateAttr(default=None)

%s

    def get_runtime_sizes(self):
        sizes: tuple = ()
        return sizes


class TorchLlmArgs(BaseLlmArgs):
    cuda_graph_config: Optional[Any] = Field(default=None, description="CUDA graphs.")
    garbage_collection_gen0_threshold: int = Field(default=20000)


class TrtLlmArgs(BaseLlmArgs):
    build_config: Optional[Any] = Field(default=None, description="Build config.")
    enable_build_cache: bool = False
'''


def _fake_trt_source(root, llm_args=None, version="1.2.1"):
    """A tensorrt_llm source tree shaped like 1.x's (llmapi/llm_args.py with pydantic args classes) whose
    import fails: the check must read it, never import it."""
    pkg = root / "tensorrt_llm"
    (pkg / "llmapi").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('tensorrt_llm imported by a check')\n")
    (pkg / "llmapi" / "__init__.py").write_text("")
    fields = "\n".join(f"    {name}: Optional[Any] = Field(default=None)" for name in _BASE_FIELDS)
    (pkg / "llmapi" / "llm_args.py").write_text(llm_args if llm_args is not None else _FAKE_LLM_ARGS % fields)
    fake_distribution(root, "tensorrt_llm", version)
    return pkg


@pytest.fixture
def trt_source(on_path):
    return on_path("tensorrt_llm", _fake_trt_source)


def _checked(compose_cfg, llm_backend, *engine_args):
    """check() of a job with these engine_args (pretrained weights, as llm_backend=trt needs)."""
    cfg = _config(compose_cfg, "model=llama3", "model.weights=pretrained", f"backend.llm_backend={llm_backend}",
                  *(f"+backend.engine_args.{arg}=1" for arg in engine_args))
    TensorRTEngine(cfg, "cuda").check()


def test_source_gives_the_fields_of_the_args_class_and_its_bases(trt_source):
    from llem.backends._trt_args import llm_arguments

    torch_args, trt_args = llm_arguments(trt_source, "pytorch"), llm_arguments(trt_source, "trt")
    assert set(_BASE_FIELDS) <= torch_args & trt_args
    assert "cuda_graph_config" in torch_args - trt_args and "build_config" in trt_args - torch_args
    assert not {"model_config", "registry", "_parallel_config", "sizes", "free_gpu_memory_fraction"} & torch_args
    assert "tensorrt_llm" not in sys.modules


@pytest.mark.parametrize("llm_backend, arg", [("pytorch", "cuda_graph_config"), ("pytorch", "scheduler_config"),
                                              ("trt", "build_config"), ("trt", "enable_iter_perf_stats")])
def test_known_engine_args_pass_check(compose_cfg, trt_source, llm_backend, arg):
    _checked(compose_cfg, llm_backend, arg)
    assert "tensorrt_llm" not in sys.modules


def test_unknown_engine_arg_is_named_with_the_closest_argument(compose_cfg, trt_source):
    with pytest.raises(ConfigError) as err:
        _checked(compose_cfg, "pytorch", "cuda_graph_confg")
    assert str(err.value).startswith("backend.engine_args.cuda_graph_confg is not an argument of tensorrt_llm.LLM "
                                     "(TorchLlmArgs, TensorRT-LLM 1.2.1): did you mean cuda_graph_config?")
    assert "tensorrt_llm" not in sys.modules


def test_an_argument_of_the_other_backend_is_unknown(compose_cfg, trt_source):
    with pytest.raises(ConfigError, match=r"backend.engine_args.build_config is not an argument of "
                                          r"tensorrt_llm.LLM \(TorchLlmArgs"):
        _checked(compose_cfg, "pytorch", "build_config")
    with pytest.raises(ConfigError, match=r"backend.engine_args.cuda_graph_config is not an argument of "
                                          r"tensorrt_llm._tensorrt_engine.LLM \(TrtLlmArgs"):
        _checked(compose_cfg, "trt", "cuda_graph_config")


@pytest.mark.parametrize("llm_args", ["def broken(:\n", "class LlmArgs:\n    model: str = ''\n"])
def test_unreadable_source_skips_the_check(compose_cfg, tmp_path, monkeypatch, llm_args):
    monkeypatch.delitem(sys.modules, "tensorrt_llm", raising=False)
    _fake_trt_source(tmp_path, llm_args)
    monkeypatch.syspath_prepend(str(tmp_path))
    _checked(compose_cfg, "pytorch", "no_such_argument")  # left to TensorRT-LLM


def test_args_class_with_a_base_from_elsewhere_skips_the_check(compose_cfg, tmp_path, monkeypatch):
    """A base class defined in another module may add fields this reading cannot see: no check then,
    rather than rejecting a valid key."""
    from llem.backends._trt_args import llm_arguments

    monkeypatch.delitem(sys.modules, "tensorrt_llm", raising=False)
    fields = "\n".join(f"    {name}: Optional[Any] = None" for name in _BASE_FIELDS)
    source = (_FAKE_LLM_ARGS % fields).replace("class TorchLlmArgs(BaseLlmArgs):",
                                               "class TorchLlmArgs(BaseLlmArgs, ImportedMixin):")
    pkg = _fake_trt_source(tmp_path, source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert llm_arguments(pkg, "pytorch") == frozenset() and "build_config" in llm_arguments(pkg, "trt")
    _checked(compose_cfg, "pytorch", "mixin_argument")
