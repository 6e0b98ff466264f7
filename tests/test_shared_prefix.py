"""dataset=shared_prefix: groups of random prompts that start with the same token ids, for measuring a prefix
cache; its bad settings are refused before any model loads."""

from __future__ import annotations

import pytest

from llem import workload
from llem.config import to_config
from llem.measure.metrics import label_rows, request_rows
from llem.support.errors import ConfigError, WorkloadError
from llem.workload.records import RequestResult
from llem.workload.shared_prefix import shared_prefix_requests

BASE = ["dataset=shared_prefix", "input_len=12", "seed=5"]


def _build(compose_cfg, *overrides):
    return workload.build(to_config(compose_cfg([*BASE, *overrides])))


def test_every_request_of_a_group_starts_with_the_groups_prefix(compose_cfg):
    work = _build(compose_cfg, "dataset.num_requests=9", "dataset.num_groups=3", "dataset.prefix_len=8")
    for r in work.requests:
        first = work.requests[r.prefix_group_index]
        assert r.token_ids[:8] == first.token_ids[:8] and r.input_tokens == 12


def test_groups_have_different_prefixes_and_requests_their_own_suffix(compose_cfg):
    work = _build(compose_cfg, "dataset.num_requests=6", "dataset.num_groups=3", "dataset.prefix_len=8")
    assert len({tuple(r.token_ids[:8]) for r in work.requests}) == 3
    assert len({tuple(r.token_ids[8:]) for r in work.requests}) == 6


def test_groups_take_turns_in_arrival_order(compose_cfg):
    work = _build(compose_cfg, "dataset.num_requests=7", "dataset.num_groups=3", "dataset.prefix_len=4")
    assert [r.prefix_group_index for r in work.requests] == [0, 1, 2, 0, 1, 2, 0]


def test_only_a_groups_later_requests_have_tokens_a_cache_could_serve(compose_cfg):
    work = _build(compose_cfg, "dataset.num_requests=5", "dataset.num_groups=2", "dataset.prefix_len=4")
    assert [r.prefix_reusable_tokens for r in work.requests] == [0, 0, 4, 4, 4]


def test_the_same_seed_gives_the_same_prompts_and_another_seed_others(compose_cfg):
    keys = ["dataset.num_requests=4", "dataset.num_groups=2", "dataset.prefix_len=6"]
    first, again = _build(compose_cfg, *keys), _build(compose_cfg, *keys)
    other = workload.build(to_config(compose_cfg([*BASE[:2], "seed=6", *keys])))
    assert first.counts().workload_sha256 == again.counts().workload_sha256 != other.counts().workload_sha256


def test_a_larger_count_keeps_the_first_requests(compose_cfg):
    config = to_config(compose_cfg([*BASE, "dataset.num_requests=4", "dataset.num_groups=2", "dataset.prefix_len=6"]))
    small, large = workload.build(config), workload.build(config, 10)
    assert [r.token_ids for r in large.requests[:4]] == [r.token_ids for r in small.requests]


def test_prompts_avoid_special_token_ids():
    requests = shared_prefix_requests(20, 4, 5, 10, vocab_size=8, seed=1, avoid={0, 1, 2})
    assert not {t for r in requests for t in r.token_ids} & {0, 1, 2}


def test_random_prompts_are_still_drawn_from_the_seed_alone():
    import numpy as np

    expected = np.random.default_rng(7).integers(0, 1000, size=(2, 4))
    assert [r.token_ids for r in workload.random_requests(2, 4, 1000, seed=7)] == expected.tolist()


@pytest.mark.parametrize("overrides, key", [
    (["dataset.prefix_len=12"], "dataset.prefix_len=12"),
    (["dataset.prefix_len=-1"], "dataset.prefix_len=-1"),
    (["dataset.num_groups=0"], "dataset.num_groups=0"),
    (["dataset.num_groups=5", "dataset.num_requests=4"], "dataset.num_groups=5"),
])
def test_impossible_groups_are_refused_naming_the_key(compose_cfg, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_config(compose_cfg([*BASE, *overrides]))


def test_more_groups_than_a_sized_workload_holds_fails_naming_the_key(compose_cfg):
    config = to_config(compose_cfg([*BASE, "dataset.num_groups=50", "dataset.prefix_len=4"]))
    with pytest.raises(WorkloadError, match=r"dataset\.num_groups=50 is more than the 10 requests"):
        workload.build(config, 10)


def test_each_request_row_names_its_group_and_reusable_tokens(compose_cfg):
    work = _build(compose_cfg, "dataset.num_requests=3", "dataset.num_groups=2", "dataset.prefix_len=4")
    results = [RequestResult(request_id=r.request_id, input_tokens=r.input_tokens, output_tokens=1, start_s=0.0,
                             end_s=0.1) for r in work.requests]
    rows = request_rows(results, 0.0)
    label_rows(rows, work.requests)
    assert [(r.prefix_group_index, r.prefix_reusable_tokens) for r in rows] == [(0, 0), (1, 0), (0, 4)]


def test_rows_of_other_datasets_have_no_group(compose_cfg):
    work = workload.build(to_config(compose_cfg(["dataset.num_requests=2", "input_len=4"])))
    rows = request_rows([RequestResult(request_id=r.request_id, input_tokens=4, output_tokens=1, start_s=0.0,
                                       end_s=0.1) for r in work.requests], 0.0)
    label_rows(rows, work.requests)
    assert [(r.prefix_group_index, r.prefix_reusable_tokens) for r in rows] == [(None, None), (None, None)]


def test_no_shared_prefix_leaves_nothing_to_reuse(compose_cfg):
    work = _build(compose_cfg, "dataset.num_requests=4", "dataset.num_groups=2", "dataset.prefix_len=0")
    assert [r.prefix_reusable_tokens for r in work.requests] == [0, 0, 0, 0]
    assert len({tuple(r.token_ids) for r in work.requests}) == 4 and work.counts().prefix_reusable_tokens_total == 0


def test_the_row_sums_the_reusable_tokens(compose_cfg):
    work = _build(compose_cfg, "dataset.num_requests=5", "dataset.num_groups=2", "dataset.prefix_len=4")
    assert work.counts().prefix_reusable_tokens_total == 3 * 4


def test_other_datasets_have_no_reusable_total(compose_cfg):
    work = workload.build(to_config(compose_cfg(["dataset.num_requests=2", "input_len=4"])))
    assert work.counts().prefix_reusable_tokens_total is None
