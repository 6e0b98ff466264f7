"""The schema: composition, typed config, errors that name the key, config_hash."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from llem.backends import engine_class, engine_names
from llem.config import Config, DType, Weights, config_hash, flatten, to_config, to_dict
from llem.errors import ConfigError


def test_default_config_is_typed(compose_cfg):
    config = to_config(compose_cfg([]))
    assert isinstance(config, Config)
    assert config.backend.name == "pytorch"
    assert config.model.name == "tiny" and config.model.weights == Weights.random
    assert config.dataset.name == "random" and config.dataset.num_requests >= 1
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
    ],
)
def test_invalid_values_name_the_key(compose_cfg, override, key):
    with pytest.raises(ConfigError) as err:
        to_config(compose_cfg([override]))
    assert key in str(err.value)
    assert "allowed" in str(err.value)


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
    assert "backend.engine_args" in flat
