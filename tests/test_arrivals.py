"""The load side of a workload: seeded arrival processes, natural output lengths, and the checks that
refuse what an engine cannot do in llem's process."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llem.backends import engine_class
from llem.backends.base import Engine
from llem.config import OutputLengthsConfig, to_config
from llem.support.errors import ConfigError
from llem.workload import build
from llem.workload.arrivals import arrival_offsets, drawn_lengths, shape


def _gaps(rate, burstiness, n=4000, seed=0):
    return np.diff(arrival_offsets(n, rate, burstiness, seed))


def test_poisson_arrivals_have_the_rate_asked_and_unit_cv():
    gaps = _gaps(8.0, 1.0)
    assert gaps.mean() == pytest.approx(1 / 8.0, rel=1e-9)  # rescaled: the rate asked, exactly
    assert gaps.std(ddof=1) / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential gaps
    assert (gaps > 0).all() and arrival_offsets(5, 8.0, 1.0, 0)[0] == 0.0


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_burstiness_is_the_gamma_shape(burstiness):
    gaps = _gaps(2.0, burstiness)
    assert gaps.mean() == pytest.approx(0.5, rel=1e-9)
    assert gaps.std(ddof=1) / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.08)


def test_arrivals_are_seeded_and_inf_is_all_at_once():
    assert arrival_offsets(50, 4.0, 1.0, 7) == arrival_offsets(50, 4.0, 1.0, 7)
    assert arrival_offsets(50, 4.0, 1.0, 7) != arrival_offsets(50, 4.0, 1.0, 8)
    assert arrival_offsets(50, math.inf, 1.0, 7) is None


def test_natural_lengths_follow_the_distribution_asked():
    lognormal = np.array(drawn_lengths(20000, OutputLengthsConfig(mean=200, spread=0.6, max=5000), 0))
    assert lognormal.mean() == pytest.approx(200, rel=0.03) and lognormal.min() >= 1
    assert np.median(lognormal) < lognormal.mean()  # right-skewed, as real answers are
    uniform = np.array(drawn_lengths(5000, OutputLengthsConfig(distribution="uniform", mean=100, spread=0.5), 0))
    assert 50 <= uniform.min() and uniform.max() <= 150 and uniform.mean() == pytest.approx(100, rel=0.02)
    clipped = drawn_lengths(5000, OutputLengthsConfig(mean=100, spread=1.5, min=20, max=300), 0)
    assert min(clipped) == 20 and max(clipped) == 300
    assert drawn_lengths(10, OutputLengthsConfig(), 3) == drawn_lengths(10, OutputLengthsConfig(), 3)


def test_shape_sets_lengths_and_arrivals(compose_cfg):
    config = to_config(compose_cfg(["output_len=null", "load.request_rate=8", "dataset.num_requests=40"]))
    work = build(config, 40)
    shaped = shape(work.requests, config)
    assert shaped.source == "distribution"
    assert all(1 <= r.output_len <= config.dataset.output_lengths.max for r in work.requests)
    assert len({r.output_len for r in work.requests}) > 10  # a mix, not one length
    arrivals = [r.arrival_s for r in work.requests]
    assert arrivals[0] == 0.0 and np.diff(arrivals).mean() == pytest.approx(1 / 8, rel=1e-9)
    fixed = to_config(compose_cfg([]))
    work = build(fixed, 8)
    assert shape(work.requests, fixed).source == "fixed"
    assert all(r.output_len is None and r.arrival_s is None for r in work.requests)


@pytest.mark.parametrize("override, key", [
    ("load.request_rate=0", "load.request_rate"), ("load.request_rate=-1", "load.request_rate"),
    ("load.burstiness=0", "load.burstiness"), ("load.max_concurrency=0", "load.max_concurrency"),
    ("output_len=0", "output_len"), ("server.mode=sideways", "server.mode"), ("server.port=0", "server.port"),
    ("dataset.output_lengths.mean=5000", "dataset.output_lengths.mean"),
    ("dataset.output_lengths.distribution=zipf", "dataset.output_lengths.distribution"),
])
def test_bad_load_values_name_their_key(compose_cfg, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_config(compose_cfg([override]))


def test_external_needs_a_url(compose_cfg):
    with pytest.raises(ConfigError, match="server.url"):
        to_config(compose_cfg(["server=external", "server.url=localhost:8000"]))


def test_inf_is_a_storable_rate(compose_cfg):
    assert to_config(compose_cfg(["load.request_rate=inf"])).load.request_rate == math.inf
    with pytest.raises(ConfigError, match="cooldown_s"):
        to_config(compose_cfg(["cooldown_s=inf"]))  # other floats stay finite


def test_data_parallel_pytorch_says_plainly_why_it_cannot(compose_cfg):
    for override in (["load.request_rate=4"], ["load.request_rate=4", "load.max_concurrency=2"]):
        config = to_config(compose_cfg([*override, "backend.num_processes=2"]))
        with pytest.raises(ConfigError, match="backend.num_processes=1") as err:
            engine_class("pytorch").validate_config(config)
        assert "server=launch" in str(err.value)
        engine_class("pytorch").validate_config(to_config(compose_cfg(override)))  # one process takes it
        engine_class("pytorch").validate_config(to_config(compose_cfg([*override, "backend.num_processes=2",
                                                                       "server=launch"])))


class BatchOnly(Engine):
    """An engine that keeps the contract's defaults: no arrivals, no natural lengths, no trace."""

    name = "batchonly"

    def load(self):
        pass

    def generate(self, requests, output_len, progress):
        return []


def test_an_engine_without_arrivals_is_refused_before_it_loads(compose_cfg):
    for override, key in (("load.request_rate=4", "load.request_rate"), ("output_len=null", "output_len=null")):
        with pytest.raises(ConfigError, match=key) as err:
            BatchOnly.validate_config(to_config(compose_cfg([override])))
        assert "backend=batchonly" in str(err.value) and "server=launch" in str(err.value)


def test_every_engine_takes_arrivals_in_process(compose_cfg):
    for backend in ("vllm", "tensorrt", "pytorch"):
        config = to_config(compose_cfg([f"backend={backend}", "load.request_rate=4", "output_len=null"]))
        engine_class(backend).validate_config(config)


def test_server_settings_that_measure_nothing_leave_the_hash(compose_cfg):
    from llem.config import config_hash

    base = config_hash(to_config(compose_cfg(["server=launch"])))
    assert config_hash(to_config(compose_cfg(["server=launch", "server.port=9100"]))) == base
    assert config_hash(to_config(compose_cfg(["server=launch", "load.request_rate=2"]))) != base
    assert config_hash(to_config(compose_cfg([]))) != base
