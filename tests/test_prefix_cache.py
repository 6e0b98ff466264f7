"""Prefix caching as a swept key: backend.enable_prefix_caching reaches vLLM in llem's process and vllm serve,
and the engine's own prefix-cache counters become the row's hit rate (vLLM faked: shaped like its 0.24 API)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from llem.backends.vllm import VllmEngine, llm_kwargs, prefix_cache_counters
from llem.config import to_config
from llem.measure.window_parts import prefix_cache_part
from llem.workload.shared_prefix import shared_prefix_requests
from tests import test_vllm_engine as vt


@dataclass
class Counter:  # vllm.v1.metrics.reader.Counter
    name: str
    labels: dict
    value: int


class CachingLLM(vt.FakeLLM):
    """The fake LLM with a token-level prefix cache: each prompt's longest prefix shared with an earlier one is a
    hit; counted as vLLM's counters, read through get_metrics()."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen, self.queries, self.hits = [], 0, 0
        add = self.llm_engine.add_request

        def counted(request_id, prompt, params):
            ids = prompt["prompt_token_ids"]
            shared = [next((i for i, (a, b) in enumerate(zip(ids, s)) if a != b), min(len(ids), len(s)))
                      for s in self.seen]
            self.queries, self.hits = self.queries + len(ids), self.hits + max(shared, default=0)
            self.seen.append(ids)
            add(request_id, prompt, params)

        self.llm_engine.add_request = counted

    def get_metrics(self):
        return [Counter("vllm:prefix_cache_queries", {"engine": "0"}, self.queries),
                Counter("vllm:prefix_cache_hits", {"engine": "0"}, self.hits),
                Counter("vllm:prompt_tokens", {"engine": "0"}, self.queries)]


@pytest.fixture
def caching_vllm(monkeypatch):
    vt.install_fake_vllm(monkeypatch, CachingLLM)


def _config(compose_cfg, *overrides):
    return to_config(compose_cfg(["backend=vllm", "model=llama3", "model.weights=random", "batch=4", *overrides]))


@pytest.mark.parametrize("value", [True, False])
def test_the_key_reaches_vllm_in_process(compose_cfg, value):
    config = _config(compose_cfg, f"backend.enable_prefix_caching={str(value).lower()}")
    assert llm_kwargs(config, "/m", token_ids_only=True)["enable_prefix_caching"] is value


@pytest.mark.parametrize("value, flag", [("true", "--enable-prefix-caching"), ("false", "--no-enable-prefix-caching")])
def test_the_key_reaches_vllm_serve(compose_cfg, tmp_path, value, flag):
    config = _config(compose_cfg, f"backend.enable_prefix_caching={value}", "server=launch", f"cache_dir={tmp_path}")
    argv = VllmEngine.serving(config, "cuda").command(None, "127.0.0.1", 8000).argv
    other = {"--enable-prefix-caching", "--no-enable-prefix-caching"} - {flag}
    assert flag in argv and not other & set(argv)


def test_the_counters_are_summed_over_engines_and_others_ignored():
    metrics = [Counter("vllm:prefix_cache_queries", {"engine": "0"}, 10), Counter("vllm:prefix_cache_hits", {}, 4),
               Counter("vllm:prefix_cache_queries", {"engine": "1"}, 6), Counter("vllm:prompt_tokens", {}, 99)]
    assert prefix_cache_counters(metrics) == (16, 4)


def test_no_counters_is_none():
    assert prefix_cache_counters([Counter("vllm:prompt_tokens", {}, 5)]) is None


def _measured(compose_cfg, *overrides):
    engine = VllmEngine(_config(compose_cfg, *overrides), "cuda")
    engine.load()
    warm = shared_prefix_requests(2, 2, 6, 8, 1000, seed=9)  # a warm-up: its lookups are not the window's
    engine.generate(warm, 1, lambda n: None)
    engine.generate(shared_prefix_requests(6, 2, 6, 8, 1000, seed=1), 2, lambda n: None)
    return engine


def test_the_window_hit_rate_counts_only_the_measured_generate(compose_cfg, caching_vllm):
    part = prefix_cache_part(_measured(compose_cfg, "backend.enable_prefix_caching=true"))
    # 6 prompts of 8 tokens, 2 groups: the 4 after each group's first find its 6-token prefix
    assert part.engine_prefix_cache_hit_pct == pytest.approx(100.0 * 4 * 6 / (6 * 8))
    assert part.engine_prefix_cache_null_reason is None


def test_with_the_cache_off_the_rate_is_null_and_says_why(compose_cfg, caching_vllm):
    part = prefix_cache_part(_measured(compose_cfg))
    assert part.engine_prefix_cache_hit_pct is None
    assert "backend.enable_prefix_caching is false" in part.engine_prefix_cache_null_reason


def test_an_engine_without_counters_gives_a_null_rate_and_says_why(compose_cfg, caching_vllm, monkeypatch):
    monkeypatch.setattr(CachingLLM, "get_metrics", lambda self: [])
    part = prefix_cache_part(_measured(compose_cfg, "backend.enable_prefix_caching=true"))
    assert part.engine_prefix_cache_hit_pct is None and "get_metrics" in part.engine_prefix_cache_null_reason
