"""The work rule of energy per request (llem.energy.attribution.work_rule) over synthetic intervals: a
flat 100 W on one GPU sampled every 100 ms, so each interval holds 10 J and the split is the rule's alone."""

from __future__ import annotations

import pytest

from llem.energy.attribution import output_tokens_rule, prompt_tokens_charged, work_rule
from llem.workload.records import RequestResult

POWER_W, STEP_S = 100.0, 0.1


def _samples(t0: float, t1: float):
    n = round((t1 - t0) / STEP_S)
    return [{"t_s": t0 + k * STEP_S, "gpu_index": 0, "energy_counter_mj": round(k * POWER_W * STEP_S * 1000)}
            for k in range(n + 1)]


def _decoder(i: int, t0: float, t1: float, per_interval: int = 1) -> RequestResult:
    """Prefilled before ``t0`` (its first token too), then decodes ``per_interval`` tokens in every interval of
    [t0, t1]."""
    times = [t0 + STEP_S * (k + 0.5) for k in range(round((t1 - t0) / STEP_S)) for _ in range(per_interval)]
    return RequestResult(i, 16, len(times) + 1, t0 - 0.5, t1, t0 - 0.4, [t0 - 0.4] + times)


def _prefill(i: int, start: float, first: float, prompt: int, cached=None) -> RequestResult:
    """A long prompt prefilled from ``start`` to ``first``, then one token."""
    return RequestResult(i, prompt, 1, start, first, first, [first], prompt_tokens_cached=cached)


def test_a_long_prefill_beside_decoders_is_charged_its_prefill():
    # interval [0, 0.1): 60 decoders produce one token each, and one request prefills 4,000 tokens
    decoders = [_decoder(i, 0.0, 0.1) for i in range(60)]
    long = _prefill(60, 0.0, 0.1, 4000)
    results = decoders + [long]
    shares = work_rule(_samples(0.0, 0.1), results, 0.0, 0.1, 10.0, 0.0, j_per_prompt_token=0.001,
                       j_per_output_token=0.01)
    # work: 60 × 0.01 J decoding + 4000 × 0.001 J + its own token's 0.01 J prefill beside it
    long_work, total = 4000 * 0.001 + 0.01, 60 * 0.01 + 4000 * 0.001 + 0.01
    assert shares.raw_j[60] == pytest.approx(10.0 * long_work / total)
    old = output_tokens_rule(_samples(0.0, 0.1), results, 0.0, 0.1, 10.0, 0.0)
    assert old.raw_j[60] == pytest.approx(10.0 / 61)  # the old rule: one token among 61


def test_the_requests_sum_to_the_window_raw_and_adjusted():
    results = [_decoder(0, 0.0, 1.0, 2), _decoder(1, 0.3, 0.8), _prefill(2, 0.2, 0.7, 2000)]
    shares = work_rule(_samples(0.0, 1.0), results, 0.0, 1.0, 100.0, 40.0, 0.002, 0.05)
    assert sum(shares.raw_j) == pytest.approx(100.0)
    assert sum(shares.adjusted_j) == pytest.approx(100.0 - 40.0 * 1.0)


def test_the_prompt_and_output_terms_make_up_the_adjusted_energy_where_there_is_work():
    results = [_decoder(0, 0.0, 1.0), _prefill(1, 0.0, 0.5, 1000)]
    shares = work_rule(_samples(0.0, 1.0), results, 0.0, 1.0, 100.0, 30.0, 0.001, 0.02)
    for i in range(2):
        assert shares.prompt_adjusted_j[i] + shares.output_adjusted_j[i] == pytest.approx(shares.adjusted_j[i])
    assert shares.prompt_adjusted_j[0] == 0.0  # the decoder's prompt was prefilled before the window


def test_a_prompt_is_spread_from_its_start_of_service_to_its_first_token():
    # a prefill over the first half beside a decoder over the whole window: all its prompt work lies in
    # the first half, so in the second half the decoder pays for every interval but the prefill's one token
    results = [_decoder(0, 0.0, 1.0), _prefill(1, 0.0, 0.45, 1000)]
    shares = work_rule(_samples(0.0, 1.0), results, 0.0, 1.0, 100.0, None, 0.001, 0.01)
    prefill_share_per_interval = 10.0 * (1000 * 0.001 / 4.5) / (1000 * 0.001 / 4.5 + 0.01)
    expected = 4 * prefill_share_per_interval + 10.0 * (1000 * 0.001 / 9 + 0.01) / (1000 * 0.001 / 9 + 0.02)
    assert shares.raw_j[1] == pytest.approx(expected)


def test_cached_prompt_tokens_reduce_the_prompt_share():
    def long_share(cached):
        results = [_decoder(0, 0.0, 0.5), _prefill(1, 0.0, 0.45, 2000, cached=cached)]
        return work_rule(_samples(0.0, 0.5), results, 0.0, 0.5, 50.0, 0.0, 0.001, 0.01).raw_j[1]

    assert long_share(1500) < long_share(None)
    assert prompt_tokens_charged(_prefill(0, 0.0, 0.1, 2000, cached=1500)) == 500


def test_the_server_s_prompt_count_is_charged_over_the_prompt_sent():
    r = RequestResult(0, 100, 1, 0.0, 0.1, 0.1, [0.1], server_input_tokens=101)
    assert prompt_tokens_charged(r) == 101


def test_a_request_that_got_no_token_is_charged_no_prompt_work():
    failed = RequestResult(1, 4000, 0, 0.0, 0.5, error="HTTP 500")
    shares = work_rule(_samples(0.0, 0.5), [_decoder(0, 0.0, 0.5), failed], 0.0, 0.5, 50.0, 0.0, 0.001, 0.01)
    assert shares.raw_j[1] == 0.0 and shares.raw_j[0] == pytest.approx(50.0)


def test_an_idle_gap_is_split_over_every_request_under_the_work_rule():
    times = [0.75, 0.85, 0.95]
    late = RequestResult(1, 16, 3, 0.71, 1.0, times[0], times)  # nothing in service from 0.3 to 0.7
    results = [_decoder(0, 0.0, 0.3), late]
    shares = work_rule(_samples(0.0, 1.0), results, 0.0, 1.0, 100.0, 0.0, 0.001, 0.01)
    assert shares.raw_j == pytest.approx([30.0 + 20.0, 30.0 + 20.0])
    assert shares.prompt_adjusted_j[0] + shares.output_adjusted_j[0] == pytest.approx(30.0)


def test_output_work_without_token_times_is_spread_from_first_token_to_end():
    stamped, unstamped = _decoder(0, 0.0, 1.0), RequestResult(1, 16, 10, -0.5, 1.0, 0.0, None)
    shares = work_rule(_samples(0.0, 1.0), [stamped, unstamped], 0.0, 1.0, 100.0, 0.0, 0.001, 0.01)
    assert shares.raw_j[1] == pytest.approx(shares.raw_j[0])


def test_no_gpu_energy_gives_null_shares_with_the_reason():
    shares = work_rule([], [_decoder(0, 0.0, 1.0)], 0.0, 1.0, None, None, 0.001, 0.01)
    assert shares.raw_j == [None] and shares.null_reason == "no GPU energy"


def _costed(results, e_prompt, e_output, t1):
    """Samples of a GPU whose energy in each interval is exactly the work the requests did there."""
    counter, rows = 0.0, [{"t_s": 0.0, "gpu_index": 0, "energy_counter_mj": 0}]
    for k in range(round(t1 / STEP_S)):
        ta, tb = k * STEP_S, (k + 1) * STEP_S
        for r in results:
            span = r.first_token_s - r.start_s
            counter += r.input_tokens * e_prompt * max(0.0, min(tb, r.first_token_s) - max(ta, r.start_s)) / span
            counter += e_output * sum(1 for t in r.token_times_s if ta < t <= tb)
        rows.append({"t_s": tb, "gpu_index": 0, "energy_counter_mj": round(counter * 1e6)})
    return rows, counter


def test_a_class_s_cost_alone_is_recovered_in_a_mix_when_the_weights_are_its_costs():
    e_prompt, e_output = 0.002, 0.1
    long_prompts = [RequestResult(i, 3000, 1, 1.0 + 2 * i, 1.3 + 2 * i, 1.3 + 2 * i, [1.3 + 2 * i]) for i in range(4)]
    decoders = [RequestResult(10 + i, 32, 60, 0.5 + 2 * i, 0.5 + 2 * i + 3.0, 0.55 + 2 * i,
                              [0.55 + 2 * i + 0.05 * k for k in range(60)]) for i in range(4)]
    cost = {"prompt": 3000 * e_prompt + e_output, "decode": 32 * e_prompt + 60 * e_output}
    mixed = long_prompts + decoders
    rows, total = _costed(mixed, e_prompt, e_output, 12.0)
    shares = work_rule(rows, mixed, 0.0, 12.0, total, 0.0, e_prompt, e_output)
    assert sum(shares.adjusted_j[:4]) / 4 == pytest.approx(cost["prompt"], rel=0.02)
    assert sum(shares.adjusted_j[4:]) / 4 == pytest.approx(cost["decode"], rel=0.02)
    old = output_tokens_rule(rows, mixed, 0.0, 12.0, total, 0.0)
    assert sum(old.adjusted_j[:4]) / 4 < 0.5 * cost["prompt"]  # the prefill charged to the decoders beside it
