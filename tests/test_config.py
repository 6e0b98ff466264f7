"""The schema: composition, typed config, errors that name the key, config_hash."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from llem.aggregate.collect import flatten
from llem.backends import engine_class, engine_names
from llem.config import Config, DType, Weights, config_hash, to_config, to_dict
from llem.support.errors import ConfigError


def test_default_config_is_typed(compose_cfg):
    config = to_config(compose_cfg([]))
    assert isinstance(config, Config)
    assert config.backend.name == "pytorch"
    assert config.model.name == "tiny" and config.model.weights == Weights.random
    assert config.dataset.name == "random" and config.dataset.num_requests is None  # sized per job
    assert config.batch >= 1 and config.output_len >= 1


def test_llama3_architecture_and_overrides(compose_cfg):
    config = to_config(compose_cfg(["model=llama3", "model.weights=random", "model.dtype=bfloat16", "batch=8"]))
    assert config.model.dtype == DType.bfloat16
    assert config.model.hf_id == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert config.model.architecture["num_hidden_layers"] == 32
    assert config.batch == 8


@pytest.mark.parametrize(
    "override, key",
    [
        ("batch=0", "batch"),
        ("input_len=-1", "input_len"),
        ("output_len=0", "output_len"),
        ("dataset.num_requests=0", "dataset.num_requests"),
        ("seed=-2", "seed"),
        ("cooldown_s=-1", "cooldown_s"),
        ("warmup.batches=-1", "warmup.batches"),
        ("baseline.device_idle_s=0", "baseline.device_idle_s"),
        ("energy.sample_interval_ms=1", "energy.sample_interval_ms"),
        ("warmup.until_cv=1.5", "warmup.until_cv"),
        ("warmup.cv_window=1", "warmup.cv_window"),
        ("warmup.until_cv=0.05", "warmup.batches"),  # needs batches >= cv_window
        ("+foo=1", "foo"),
        ("+model.colour=red", "model.colour"),
        ("model.weights=pretrained", "model.hf_id"),
        ("seed=4294967296", "seed"),  # engines seed numpy with 32 bits
        ("cooldown_s=inf", "cooldown_s"),  # values a result file cannot hold, or a job cannot use
        ("decoding.temperature=inf", "decoding.temperature"),
        ("decoding.top_p=nan", "decoding.top_p"),
        ("baseline.loaded_idle_s=inf", "baseline.loaded_idle_s"),
        ("dataset.num_requests=100000000000000000000", "dataset.num_requests"),
        ("warmup.output_len=9223372036854775808", "warmup.output_len"),
    ],
)
def test_invalid_values_name_the_key(compose_cfg, override, key):
    with pytest.raises(ConfigError) as err:
        to_config(compose_cfg([override]))
    assert key in str(err.value)
    assert "allowed" in str(err.value)


def test_a_word_that_yaml_read_as_a_boolean_says_to_quote_it(compose_cfg):
    with pytest.raises(ConfigError, match=r"server\.metrics='True' is invalid: .*quote the word"):
        to_config(compose_cfg(["server.metrics=true"]))


def test_bad_dtype_fails_at_compose_listing_allowed(compose_cfg):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_cfg(["model.dtype=int3"])
    text = str(err.value) + str(err.value.__cause__)
    assert "int3" in text and "bfloat16" in text


def test_unknown_backend_fails_at_compose(compose_cfg):
    with pytest.raises(Exception) as err:
        compose_cfg(["backend=nope"])
    assert "backend/nope" in str(err.value)


def test_engine_args_may_not_duplicate_llem_keys(compose_cfg):
    config = to_config(compose_cfg(["+backend.engine_args.torch_dtype=float16"]))
    with pytest.raises(ConfigError, match="model.dtype"):
        engine_class(config.backend.name).validate_config(config)
    config = to_config(compose_cfg(["+backend.generate_args.max_new_tokens=5"]))
    with pytest.raises(ConfigError, match="output_len"):
        engine_class(config.backend.name).validate_config(config)


def test_unknown_engine_name():
    assert "pytorch" in engine_names()
    with pytest.raises(ConfigError, match="pytorch"):
        engine_class("nope")


def test_config_hash_ignores_repeat_but_not_measured_keys(compose_cfg):
    base = config_hash(to_config(compose_cfg([])))
    assert base == config_hash(to_config(compose_cfg([])))
    assert base == config_hash(to_config(compose_cfg(["repeat=3", "isolate=false"])))
    assert base != config_hash(to_config(compose_cfg(["batch=7"])))
    assert base != config_hash(to_config(compose_cfg(["model.dtype=float16"])))


def test_flatten_dotted_names(compose_cfg):
    flat = flatten(to_dict(to_config(compose_cfg([]))))
    assert flat["model.dtype"] == "float32"
    assert flat["baseline.kind"] == "device_idle"
    assert isinstance(flat["model.architecture"], str)  # JSON text, one column
    assert "backend.engine_args" in flat and isinstance(flat["backend.generate_args"], str)


# -- checks across keys and facts outside the config (llem.config.validate), before anything loads ----------------


@pytest.mark.parametrize("overrides, says", [
    (["input_len=2000", "output_len=100"],
     "input_len \\+ output_len = 2000 \\+ 100 = 2100 is invalid: allowed at most 2048"),
    (["input_len=2000", "warmup.output_len=60", "output_len=8"], "input_len \\+ warmup.output_len"),
    (["objective.metric=cfg.batch"], "objective.metric='cfg.batch' is invalid"),
    (["objective.metric=status"], "objective.metric='status' is invalid"),
    (["+objective.bounds.nonsense='<=3'"], "objective.bounds.nonsense is invalid"),
])
def test_cross_checks_name_the_key(compose_cfg, overrides, says):
    from llem.config import validate

    with pytest.raises(ConfigError, match=says):
        validate.check(to_config(compose_cfg(overrides)))


def test_lengths_fit_the_model_within_its_positions(compose_cfg):
    from llem.config import validate

    validate.check(to_config(compose_cfg(["input_len=1920", "output_len=128"])))  # exactly 2048: fine
    validate.check(to_config(compose_cfg(["objective.metric=output_tok_per_s", "+objective.bounds.ttft_ms_p99='<=9'"])))


def test_a_pretrained_models_positions_come_from_its_config_json(compose_cfg, tmp_path):
    from llem.config import validate

    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_positions": 1024}')
    config = to_config(compose_cfg(["model.weights=pretrained", f"model.hf_id={tmp_path}", "input_len=1000",
                                    "output_len=100"]))
    assert validate.max_positions(config) == (1024, f"{tmp_path}'s config.json.n_positions")
    with pytest.raises(ConfigError, match="allowed at most 1024"):
        validate.check(config)
    absent = to_config(compose_cfg(["model.weights=pretrained", "model.hf_id=llem-tests/not-cached"]))
    limit, why = validate.max_positions(absent)
    assert limit is None and "not in the local Hugging Face cache" in why  # checked at load instead
