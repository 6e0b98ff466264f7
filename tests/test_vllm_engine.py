"""The vLLM engine on CPU, against a small fake shaped like vLLM 0.24's offline API (no vllm needed)."""

from __future__ import annotations

import json
import sys
import time
import types
from dataclasses import dataclass, field
from typing import List, Optional

import pytest

from llem.backends import engine_class
from llem.backends._hf_model import write_dummy_model
from llem.backends.vllm import VllmEngine, llm_kwargs
from llem.config import to_config
from llem.support.errors import ConfigError, DeviceError
from llem.workload.records import Request
from tests.conftest import fake_distribution


@dataclass
class FakeStats:  # vllm.v1.metrics.stats.RequestStateStats (the fields llem reads)
    arrival_time: float = 0.0
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0


@dataclass
class FakeCompletion:
    token_ids: List[int]


@dataclass
class FakeOutput:  # vllm.outputs.RequestOutput with output_kind=DELTA
    request_id: str
    outputs: List[FakeCompletion]
    finished: bool
    metrics: object = None
    num_cached_tokens: Optional[int] = None  # prompt tokens served from the prefix cache


@dataclass
class FakeEngine:
    """Steps every request once per step, one token each, batch limited by max_num_seqs."""

    max_num_seqs: int
    with_stats: bool = True
    cached: Optional[int] = None  # num_cached_tokens of every output
    queue: list = field(default_factory=list)
    done: dict = field(default_factory=dict)
    added: list = field(default_factory=list)

    def add_request(self, request_id, prompt, params):
        assert params.min_tokens == params.max_tokens and params.ignore_eos
        self.added.append((request_id, prompt["prompt_token_ids"]))
        self.queue.append([request_id, params.max_tokens, FakeStats(arrival_time=time.time())])

    def has_unfinished_requests(self):
        return bool(self.queue)

    def step(self):
        time.sleep(0.002)
        stamp = time.monotonic()  # engine-core step time, CLOCK_MONOTONIC like vLLM's
        outs = []
        for item in self.queue[: self.max_num_seqs]:
            rid, left, stats = item
            stats.scheduled_ts = stats.scheduled_ts or stamp - 0.001
            stats.last_token_ts = stamp
            stats.first_token_ts = stats.first_token_ts or stamp
            item[1] = left - 1
            outs.append(FakeOutput(rid, [FakeCompletion([7])], item[1] == 0, stats if self.with_stats else None,
                                   self.cached))
        self.queue = [i for i in self.queue if i[1] > 0]
        return outs


class FakeLLM:
    last_kwargs: dict = {}

    def __init__(self, **kwargs):
        FakeLLM.last_kwargs = kwargs
        self.llm_engine = FakeEngine(kwargs["max_num_seqs"], with_stats=not kwargs["disable_log_stats"])
        self.llm_engine.vllm_config = types.SimpleNamespace(cache_config=types.SimpleNamespace(num_gpu_blocks=42))
        self.llm_engine.engine_core = types.SimpleNamespace(shutdown=lambda: None)


@dataclass
class FakeSamplingParams:
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    temperature: float
    detokenize: bool
    output_kind: object
    top_p: float = 1.0
    top_k: int = 0
    seed: object = None


def install_fake_vllm(monkeypatch, llm_class):
    """A fake ``vllm`` (with ``vllm.inputs`` and ``vllm.sampling_params``) whose LLM is ``llm_class``."""
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.24.0-fake"
    vllm.LLM, vllm.SamplingParams = llm_class, FakeSamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    sp = types.ModuleType("vllm.sampling_params")
    sp.RequestOutputKind = types.SimpleNamespace(DELTA="delta", FINAL_ONLY="final")
    for name, mod in (("vllm", vllm), ("vllm.inputs", inputs), ("vllm.sampling_params", sp)):
        monkeypatch.setitem(sys.modules, name, mod)
    return vllm


@pytest.fixture
def fake_vllm(monkeypatch):
    return install_fake_vllm(monkeypatch, FakeLLM)


def _config(compose_cfg, *overrides):
    return to_config(compose_cfg(["backend=vllm", "model=llama3", "model.weights=random", *overrides]))


def test_shared_keys_map_to_engine_args(compose_cfg):
    config = _config(compose_cfg, "batch=32", "model.dtype=bfloat16", "backend.tensor_parallel_size=2",
                     "+backend.engine_args.kv_cache_dtype=fp8", "seed=3")
    kw = llm_kwargs(config, "/m", token_ids_only=True)
    assert kw["max_num_seqs"] == 32 and kw["dtype"] == "bfloat16" and kw["tensor_parallel_size"] == 2
    assert kw["load_format"] == "dummy" and kw["skip_tokenizer_init"] and kw["disable_log_stats"] is False
    assert kw["enable_prefix_caching"] is False and kw["seed"] == 3 and kw["kv_cache_dtype"] == "fp8"
    assert kw["max_model_len"] == config.input_len + config.output_len
    assert VllmEngine.gpus_required(config.backend) == 2
    pretrained = llm_kwargs(_config(compose_cfg, "model.weights=pretrained"), "meta-llama/x", False)
    assert "load_format" not in pretrained


@pytest.mark.parametrize("arg, key", [("max_num_seqs", "batch"), ("dtype", "model.dtype"), ("seed", "seed"),
                                      ("tensor_parallel_size", "backend.tensor_parallel_size"),
                                      ("disable_log_stats", "request timestamps")])
def test_engine_args_may_not_duplicate_llem_keys(compose_cfg, arg, key):
    config = _config(compose_cfg, f"+backend.engine_args.{arg}=1")
    with pytest.raises(ConfigError, match=key):
        engine_class("vllm").validate_config(config)


@pytest.mark.parametrize("bad", ["backend.tensor_parallel_size=0", "backend.gpu_memory_utilization=1.5",
                                 "backend.max_model_len=1"])
def test_range_checks(compose_cfg, bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        _config(compose_cfg, bad)


def test_launcher_gpus_follow_parallelism(compose_cfg):
    from llem.backends import gpus_resolver

    cfg = compose_cfg(["backend=vllm", "backend.tensor_parallel_size=2", "backend.pipeline_parallel_size=2"])
    assert gpus_resolver(_root_=cfg) == 4


def test_vllm_needs_a_gpu(compose_cfg, fake_vllm):
    with pytest.raises(DeviceError, match="GPU"):
        VllmEngine(_config(compose_cfg), "cpu").check()


def test_a_missing_vllm_is_said_before_the_device(compose_cfg, monkeypatch):
    from llem.support.errors import EngineUnavailable

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(EngineUnavailable, match=r'not installed: pip install "\.\[vllm\]"'):
        VllmEngine(_config(compose_cfg), "cpu").check()


def test_dummy_model_dir_has_the_architecture(compose_cfg, tmp_path):
    config = _config(compose_cfg)
    cfg = json.loads((write_dummy_model(config.model.architecture, "bfloat16", tmp_path) / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_hidden_layers"] == 32
    assert cfg["vocab_size"] == 128256 and cfg["num_key_value_heads"] == 8


def test_generate_submits_all_and_converts_outputs(compose_cfg, fake_vllm):
    config = _config(compose_cfg, "batch=2", "backend.enforce_eager=true")
    engine = VllmEngine(config, "cuda")
    engine.check()
    engine.load()
    assert FakeLLM.last_kwargs["enforce_eager"] is True
    reqs = [Request(i, [11, 12, 13 + i]) for i in range(5)]
    done = []
    out = engine.generate(reqs, 4, done.append)
    assert [r.request_id for r in out] == list(range(5)) and sum(done) == 5
    assert [r.output_tokens for r in out] == [4] * 5
    assert len(engine.llm.llm_engine.added) == 5
    first, last = out[0], out[-1]
    assert first.timing_note is None and len(first.token_times_s) == 4
    assert first.start_s < first.first_token_s <= first.end_s
    # waited for a free slot (max_num_seqs=2): service starts when scheduled, after the first ones ended
    assert last.start_s > first.end_s and last.first_token_s - last.start_s < 0.05
    info = engine.info()
    assert info.versions["vllm"] == "0.24.0-fake" and info.resolved.num_gpu_blocks == 42
    assert info.num_parameters and info.num_parameters > 7e9  # counted on the meta device
    engine.close()


def test_without_engine_stamps_host_times_with_a_note(compose_cfg, fake_vllm):
    config = _config(compose_cfg, "batch=4")
    engine = VllmEngine(config, "cuda")
    engine.load()
    engine.llm.llm_engine.with_stats = False
    out = engine.generate([Request(0, [5, 6])], 3, lambda n: None)
    assert out[0].output_tokens == 3 and "host receive times" in out[0].timing_note
    assert out[0].start_s <= out[0].first_token_s
    assert out[0].first_token_s is not None


def test_the_prompt_tokens_served_from_the_prefix_cache_are_kept(compose_cfg, fake_vllm):
    engine = VllmEngine(_config(compose_cfg, "batch=4"), "cuda")
    engine.load()
    engine.llm.llm_engine.cached = 2
    out = engine.generate([Request(0, [5, 6, 7])], 3, lambda n: None)
    assert out[0].prompt_tokens_cached == 2


def test_decoding_keys_map_to_sampling_params(compose_cfg, fake_vllm):
    greedy = VllmEngine(_config(compose_cfg), "cuda").sampling_params(16)
    assert greedy.temperature == 0.0 and greedy.min_tokens == greedy.max_tokens == 16 and greedy.ignore_eos
    config = _config(compose_cfg, "decoding.temperature=0.7", "decoding.top_p=0.9", "decoding.top_k=50", "seed=5")
    sampled = VllmEngine(config, "cuda").sampling_params(16)
    assert (sampled.temperature, sampled.top_p, sampled.top_k, sampled.seed) == (0.7, 0.9, 50, 5)


# -- engine_args checked against vllm.LLM's arguments, read from vllm's source (never imported) --------------

_FAKE_LLM_PY = '''
from typing import Any
from vllm.engine.arg_utils import EngineArgs


class LLM:
    """Offline entry point: named arguments, the rest forwarded to EngineArgs."""

    def __init__(self, model: str, *, runner: str = "auto", tokenizer: str | None = None,
                 skip_tokenizer_init: bool = False, trust_remote_code: bool = False, dtype: str = "auto",
                 seed: int = 0, gpu_memory_utilization: float = 0.9, enforce_eager: bool = False,
                 hf_overrides: dict | None = None, compilation_config: int | dict | None = None,
                 logits_processors: list | None = None, **kwargs: Any) -> None:
        self.engine_args = EngineArgs(model=model, **kwargs)

    def generate(self, prompts, sampling_params=None):
        return []
'''

_ENGINE_ARGS_FIELDS = ("model", "tokenizer", "runner", "skip_tokenizer_init", "trust_remote_code", "download_dir",
                       "load_format", "dtype", "kv_cache_dtype", "seed", "max_model_len", "pipeline_parallel_size",
                       "tensor_parallel_size", "data_parallel_size", "block_size", "enable_prefix_caching",
                       "gpu_memory_utilization", "max_num_batched_tokens", "max_num_seqs", "disable_log_stats",
                       "revision", "quantization", "enforce_eager", "enable_chunked_prefill", "speculative_config",
                       "compilation_config", "async_scheduling")


def _fake_vllm_source(root, llm_py=_FAKE_LLM_PY, version="0.24.0"):
    """A vllm source tree shaped like 0.24's (vllm/entrypoints/llm.py, vllm/engine/arg_utils.py) whose
    import fails: the check must read it, never import it."""
    pkg = root / "vllm"
    for sub in ("entrypoints", "engine"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("raise RuntimeError('vllm imported by a check')\n")
    (pkg / "entrypoints" / "llm.py").write_text(llm_py)
    fields = "\n".join(f"    {name}: Any = None" for name in _ENGINE_ARGS_FIELDS)
    (pkg / "engine" / "arg_utils.py").write_text(
        "from dataclasses import dataclass\nfrom typing import Any, ClassVar\n\nimport torch\n\n\n"
        f"@dataclass\nclass EngineArgs:\n    \"\"\"Arguments for the engine.\"\"\"\n\n{fields}\n"
        "    registry: ClassVar[dict] = {}\n\n    def create_engine_config(self):\n        local: int = 1\n")
    fake_distribution(root, "vllm", version)
    return pkg


@pytest.fixture
def vllm_source(on_path):
    return on_path("vllm", _fake_vllm_source)


def test_source_gives_llm_init_parameters_and_engine_args_fields(vllm_source):
    from llem.backends.vllm import llm_arguments

    names = llm_arguments(vllm_source)
    assert {"logits_processors", "hf_overrides"} <= names  # LLM.__init__ only
    assert {"kv_cache_dtype", "async_scheduling", "max_num_seqs"} <= names  # EngineArgs only
    assert not {"self", "kwargs", "registry", "local"} & names  # no self/**kwargs, ClassVar or method locals
    assert "vllm" not in sys.modules


@pytest.mark.parametrize("key", ["kv_cache_dtype", "hf_overrides", "enable_chunked_prefill"])
def test_known_engine_args_pass_check(compose_cfg, vllm_source, key):
    VllmEngine(_config(compose_cfg, f"+backend.engine_args.{key}=1"), "cuda").check()
    assert "vllm" not in sys.modules


def test_unknown_engine_arg_is_named_with_the_closest_argument(compose_cfg, vllm_source):
    engine = VllmEngine(_config(compose_cfg, "+backend.engine_args.kv_cache_dtyp=fp8"), "cuda")
    with pytest.raises(ConfigError) as err:
        engine.check()
    message = str(err.value)
    assert message.startswith("backend.engine_args.kv_cache_dtyp is not an argument of vllm.LLM (vLLM 0.24.0): "
                              "did you mean kv_cache_dtype?")
    assert "allowed:" in message and "vllm" not in sys.modules


def test_llm_without_kwargs_takes_only_its_named_parameters(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    named = ", ".join(f"{n}=None" for n in _ENGINE_ARGS_FIELDS if n not in ("model", "kv_cache_dtype"))
    _fake_vllm_source(tmp_path, f"class LLM:\n    def __init__(self, model, *, {named}):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="backend.engine_args.kv_cache_dtype is not an argument of vllm.LLM"):
        VllmEngine(_config(compose_cfg, "+backend.engine_args.kv_cache_dtype=fp8"), "cuda").check()


@pytest.mark.parametrize("llm_py", ["class LLM:\n    pass\n", "def broken(:\n", "class Other:\n    x: int = 1\n"])
def test_unreadable_source_skips_the_check(compose_cfg, tmp_path, monkeypatch, llm_py):
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    _fake_vllm_source(tmp_path, llm_py)
    monkeypatch.syspath_prepend(str(tmp_path))
    VllmEngine(_config(compose_cfg, "+backend.engine_args.no_such_argument=1"), "cuda").check()  # left to vLLM
