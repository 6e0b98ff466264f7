"""The PyTorch engine on CPU with the tiny random model: exact output length, real token times,
every option's validation, length sorting and padding counts, static cache, data parallel (gloo)."""

from __future__ import annotations

import pytest

from llem.backends import engine_class
from llem.config import to_config
from llem.support.errors import ConfigError, EngineUnavailable
from llem.workload.records import Request

pytest.importorskip("transformers")


def _padding(counts) -> float:
    return (counts.tokens_computed - counts.tokens_requested) / counts.tokens_requested


def _engine(compose_cfg, overrides):
    config = to_config(compose_cfg(["device=cpu", *overrides]))
    eng = engine_class("pytorch")(config, "cpu")
    eng.validate_config(config)
    eng.check()
    eng.load()
    return eng


@pytest.fixture(scope="module")
def engine(compose_cfg):
    eng = _engine(compose_cfg, ["batch=3"])
    yield eng
    eng.close()


def _varied(n=5):
    return [Request(i, [5 + i] * (4 + i)) for i in range(n)]  # different lengths → left padding


def test_generates_exactly_output_len_with_token_times(engine):
    done = []
    out = engine.generate(_varied(), 6, done.append)
    assert [o.request_id for o in out] == [0, 1, 2, 3, 4]
    assert [o.output_tokens for o in out] == [6] * 5
    assert [o.input_tokens for o in out] == [4, 5, 6, 7, 8]
    assert [o.batch_index for o in out] == [0, 0, 0, 1, 1]
    assert sum(done) == 5
    for o in out:
        assert len(o.token_times_s) == 6
        assert o.start_s < o.first_token_s <= o.token_times_s[-1] == o.end_s
        assert o.token_times_s == sorted(o.token_times_s)


def test_padding_counts_without_sorting(engine):
    engine.generate(_varied(), 6, lambda n: None)
    counts = engine.work_counts()
    # batch 0: 3 rows × (6 + 6) computed for 4+5+6 + 3×6 requested; batch 1: 2 × (8 + 6) for 7+8 + 2×6
    assert counts.tokens_computed == 3 * 12 + 2 * 14
    assert counts.tokens_requested == (15 + 18) + (15 + 12)
    assert _padding(counts) == pytest.approx((64 - 60) / 60)


def test_sort_by_length_batches_similar_lengths_and_cuts_padding(compose_cfg):
    eng = _engine(compose_cfg, ["batch=2", "backend.sort_by_length=true"])
    try:
        reqs = [Request(0, [5] * 4), Request(1, [6] * 12), Request(2, [7] * 5), Request(3, [8] * 11)]
        out = eng.generate(reqs, 3, lambda n: None)
        assert [o.request_id for o in out] == [0, 1, 2, 3]  # returned in request order
        by_id = {o.request_id: o.batch_index for o in out}
        assert by_id[1] == by_id[3] == 0 and by_id[0] == by_id[2] == 1  # longest first, similar together
        sorted_pad = _padding(eng.work_counts())
    finally:
        eng.close()
    unsorted = _engine(compose_cfg, ["batch=2"])
    try:
        unsorted.generate(reqs, 3, lambda n: None)
        assert sorted_pad < _padding(unsorted.work_counts())
    finally:
        unsorted.close()


def test_min_tokens_suppresses_eos(engine):
    """A prompt full of EOS still yields the full length: EOS is suppressed until output_len."""
    eos = sorted(engine._runner.eos)[0]
    out = engine.generate([Request(0, [eos] * 8)], 12, lambda n: None)
    assert out[0].output_tokens == 12


def test_count_stops_at_first_eos(engine):
    import torch

    eos = sorted(engine._runner.eos)[0]
    counts = engine._runner.count_generated(torch.tensor([[7, eos, 0, 0], [7, 8, 9, eos], [7, 8, 9, 10]]))
    assert counts == [2, 4, 4]


def test_info_reports_parameters_and_precision(engine):
    info = engine.info()
    assert info.num_parameters == sum(p.numel() for p in engine._runner.model.parameters())
    assert info.weight_bytes == info.num_parameters * 4  # float32
    assert info.weight_precision == info.compute_precision == "float32"
    assert info.resolved.attn_implementation == "sdpa"
    assert "torch" in info.versions and engine.memory_peak_mib() is None  # CPU: no device memory peak


def test_sampling_still_gives_exact_length(compose_cfg):
    eng = _engine(compose_cfg, ["decoding.temperature=1.0", "decoding.top_k=20", "batch=2"])
    out = eng.generate([Request(0, [5] * 4), Request(1, [6] * 4)], 9, lambda n: None)
    assert [o.output_tokens for o in out] == [9, 9]
    eng.close()


def test_eager_attention_is_used_and_agrees_with_sdpa(compose_cfg, engine):
    eng = _engine(compose_cfg, ["batch=3", "backend.attn_implementation=eager"])
    try:
        assert eng.info().resolved.attn_implementation == "eager"
        reqs = [Request(0, [9] * 6)]
        import torch  # same seed, same random weights: the two kernels give the same logits

        ids = torch.tensor([[9] * 6])
        with torch.inference_mode():
            la = eng._runner.model(ids).logits
            lb = engine._runner.model(ids).logits
        assert torch.allclose(la, lb, atol=1e-4)
        assert eng.generate(reqs, 4, lambda n: None)[0].output_tokens == 4
    finally:
        eng.close()


def test_static_cache_pads_every_batch_to_fixed_shape(compose_cfg):
    eng = _engine(compose_cfg, ["batch=3", "input_len=10", "backend.cache_implementation=static"])
    try:
        assert eng._runner.model.generation_config.cache_implementation == "static"
        assert eng._runner.model.generation_config.disable_compile is True  # torch_compile=off means off
        out = eng.generate(_varied(4), 5, lambda n: None)
        assert [o.output_tokens for o in out] == [5] * 4
        # two batches, each 3 rows × (10 + 5), whatever the prompts and the last batch's size
        assert eng.work_counts().tokens_computed == 2 * 3 * 15
    finally:
        eng.close()


@pytest.mark.parametrize("override, message", [
    ("backend.attn_implementation=flash", "backend.attn_implementation"),
    ("backend.torch_compile=fast", "backend.torch_compile"),
    ("backend.cache_implementation=paged", "backend.cache_implementation"),
    ("backend.quantization.method=gptq", "backend.quantization.method"),
    ("backend.quantization.compute_dtype=int8", "backend.quantization.compute_dtype"),
    ("backend.num_processes=0", "backend.num_processes"),
    ("backend.gpus_per_process=2", "backend.device_map"),
    ("backend.device_map=everywhere", "backend.device_map"),
])
def test_bad_options_name_the_key(compose_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        to_config(compose_cfg([override]))


def test_data_parallel_excludes_sharding(compose_cfg):
    with pytest.raises(ConfigError, match="backend.device_map"):
        to_config(compose_cfg(["backend.num_processes=2", "backend.device_map=auto"]))


@pytest.mark.parametrize("key", ["attn_implementation", "device_map", "quantization_config", "load_in_4bit",
                                 "use_flash_attention_2"])
def test_engine_args_cannot_bypass_llem_keys(compose_cfg, key):
    config = to_config(compose_cfg([f"+backend.engine_args.{key}=x"]))
    with pytest.raises(ConfigError, match=f"backend.engine_args.{key}"):
        engine_class("pytorch").validate_config(config)


@pytest.mark.parametrize("override", ["backend.quantization.method=bnb_nf4", "backend.device_map=auto",
                                      "backend.attn_implementation=flash_attention_2"])
def test_gpu_only_options_fail_on_cpu_before_load(compose_cfg, override):
    config = to_config(compose_cfg(["device=cpu", "model.dtype=bfloat16", override]))
    eng = engine_class("pytorch")(config, "cpu")
    with pytest.raises((ConfigError, EngineUnavailable), match=override.split("=")[0].replace(".method", "")):
        eng.check()
    assert eng._runner is None and eng._pool is None  # nothing was loaded


def test_gpus_required_counts_replicas_and_shards(compose_cfg):
    cls = engine_class("pytorch")
    assert cls.gpus_required(to_config(compose_cfg([])).backend) == 1
    assert cls.gpus_required(to_config(compose_cfg(["backend.num_processes=4"])).backend) == 4
    sharded = to_config(compose_cfg(["backend.gpus_per_process=2", "backend.device_map=auto"]))
    assert cls.gpus_required(sharded.backend) == 2


def test_split_is_deterministic_and_covers_everything():
    from llem.backends._torch_workers import split

    items = list(range(11))
    parts = [split(items, 3, i) for i in range(3)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert [split(items, 3, i) for i in range(3)] == parts


# -- engine_args checked against what transformers takes, as load starts (before any weights are built) -----

def _load_fails(compose_cfg, *overrides):
    """The ConfigError load raises for this job, and the runner, which must hold no model."""
    config = to_config(compose_cfg(["device=cpu", *overrides]))
    eng = engine_class("pytorch")(config, "cpu")
    eng.validate_config(config)
    eng.check()
    with pytest.raises(ConfigError) as err:
        eng.load()
    assert eng._runner.model is None  # failed before building weights
    eng.close()
    return str(err.value)


def test_unknown_engine_arg_is_named_with_the_closest_argument(compose_cfg):
    message = _load_fails(compose_cfg, "+backend.engine_args.experts_implementaton=eager")
    assert message.startswith("backend.engine_args.experts_implementaton is not an argument of transformers' "
                              "from_pretrained (loading arguments, or LlamaConfig attributes): "
                              "did you mean experts_implementation")


def test_random_weights_take_config_attributes_from_the_architecture(compose_cfg):
    message = _load_fails(compose_cfg, "+backend.engine_args.use_cache=false")
    assert message.startswith("backend.engine_args.use_cache is an attribute of the model's config")
    assert "model.architecture.use_cache" in message


def test_random_weights_do_not_take_from_pretrained_arguments(compose_cfg):
    message = _load_fails(compose_cfg, "+backend.engine_args.low_cpu_mem_usage=true")
    assert message.startswith("backend.engine_args.low_cpu_mem_usage is a from_pretrained argument")
    assert "allowed with random weights: experts_implementation" in message


def test_from_config_argument_passes_and_loads(compose_cfg):
    eng = _engine(compose_cfg, ["+backend.engine_args.experts_implementation=eager"])
    try:
        assert eng._runner.model.config._experts_implementation == "eager"
    finally:
        eng.close()


@pytest.fixture(scope="module")
def llama_config():
    from transformers import AutoConfig

    return AutoConfig.for_model("llama", hidden_size=64, num_attention_heads=4, num_hidden_layers=1)


@pytest.mark.parametrize("key", ["cache_dir", "low_cpu_mem_usage", "max_memory", "subfolder", "use_cache",
                                 "rope_parameters", "output_attentions"])
def test_pretrained_takes_loading_arguments_and_config_overrides(llama_config, key):
    from llem.backends._torch_args import check_loading_args

    check_loading_args({key: 1}, lambda: llama_config, from_config=False)


def test_pretrained_unknown_arg_is_named(llama_config):
    from llem.backends._torch_args import check_loading_args

    with pytest.raises(ConfigError, match=r"^backend.engine_args.max_memroy is not an argument of transformers' "
                                          r"from_pretrained .*did you mean max_memory\?"):
        check_loading_args({"max_memroy": 1}, lambda: llama_config, from_config=False)


def test_pretrained_config_is_read_only_for_keys_that_need_it(llama_config):
    from llem.backends._torch_args import check_loading_args

    reads = []
    check_loading_args({"cache_dir": "x", "variant": "fp16"}, lambda: reads.append(1), from_config=False)
    assert reads == []  # loading arguments alone: no config read
    check_loading_args({"use_cache": 1, "output_attentions": 1}, lambda: reads.append(1) or llama_config, False)
    assert reads == [1]  # read once
    check_loading_args({"no_such_argument": 1}, lambda: None, from_config=False)  # config unreadable: skipped


def test_pretrained_checkpoint_takes_config_overrides_and_names_typos(compose_cfg, tmp_path):
    """from_pretrained on a checkpoint saved here: a config attribute is an override, a typo fails first."""
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = dict(to_config(compose_cfg([])).model.architecture)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(arch.pop("model_type"), **arch)).save_pretrained(tmp_path)
    pretrained = ["model.weights=pretrained", f"model.hf_id={tmp_path}"]
    message = _load_fails(compose_cfg, *pretrained, "+backend.engine_args.use_cach=false")
    assert message.startswith("backend.engine_args.use_cach is not an argument of transformers' from_pretrained")
    assert "did you mean use_cache" in message
    eng = _engine(compose_cfg, [*pretrained, "+backend.engine_args.use_cache=false",
                                "+backend.engine_args.low_cpu_mem_usage=true"])
    try:
        assert eng._runner.model.config.use_cache is False
    finally:
        eng.close()
