"""tests/compose.py composes what Hydra composes: the same config for group choices mixed with values, and
Hydra's own error for a value it refuses."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from llem.config import conf_dir
from tests.compose import Composer

CASES = [
    [],
    ["batch=8", "input_len=64"],
    ["backend=vllm", "model=llama3", "batch=32", "load.request_rate=inf"],
    ["load.max_concurrency=4", "server=launch", "server.args=[--cb-num-blocks,64]"],
    ["dataset=shared_prefix", "dataset.num_groups=3", "output_len=null"],
    ["+backend.generate_args={top_k: 5}", "model.weights=random"],
    ["batch=1,2"],  # a sweep: Hydra's compose whole
]


def _hydra(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: " ".join(o) or "defaults")
def test_the_composer_gives_hydras_config(overrides):
    try:
        expected = OmegaConf.to_container(_hydra(overrides))
    except ConfigCompositionException:
        with pytest.raises(ConfigCompositionException):
            Composer(conf_dir())(overrides)
        return
    assert OmegaConf.to_container(Composer(conf_dir())(overrides)) == expected


def test_a_value_hydra_refuses_is_refused_with_hydras_error():
    with pytest.raises(ConfigCompositionException, match="batch"):
        _hydra(["batch=abc"])
    with pytest.raises(ConfigCompositionException, match="batch"):
        Composer(conf_dir())(["backend=vllm", "batch=abc"])


def test_each_call_gets_its_own_copy():
    composer = Composer(conf_dir())
    composer(["batch=4"]).input_len = 7
    assert composer(["batch=4"]).input_len == composer([]).input_len != 7
