"""A burst against a server whose concurrency llem does not know: sized by what its short window showed."""

import pytest

from llem.measure import sizing
from llem.workload.records import RequestResult


def _done(spans, errors=()):
    """Requests in service over the (first token, end) ``spans``; the ids in ``errors`` failed."""
    return [RequestResult(i, 8, 4, 0.0, end, first, error="HTTP 500" if i in errors else None)
            for i, (first, end) in enumerate(spans)]


def _waves(n, held, wave_s):
    """``n`` requests a server ran ``held`` at a time, each wave ``wave_s`` long, the next admitted as one ends."""
    return _done([((i // held) * wave_s + 0.1 * wave_s, (i // held + 1) * wave_s) for i in range(n)])


def _burst(max_requests=10_000):
    return sizing.plan(None, waves=4, min_window_s=10.0, max_requests=max_requests, capacity=8, on_gpu=True,
                       burst_unknown=True)


def test_the_peak_is_the_most_requests_between_first_token_and_end_at_once():
    assert sizing.in_service_peak(_waves(10, held=4, wave_s=1.0)) == (4, None)
    assert sizing.in_service_peak(_done([(0.0, 1.0), (1.0, 2.0)])) == (1, None)  # one ends as the next starts


def test_failed_requests_are_not_in_service_and_none_succeeding_is_a_null_with_its_reason():
    assert sizing.in_service_peak(_done([(0.0, 1.0), (0.0, 1.0)], errors={1})) == (1, None)
    assert sizing.in_service_peak(_done([(0.0, 1.0)], errors={0})) == (None, "no request succeeded")
    untimed = [RequestResult(0, 8, 4, 0.0, 1.0)]
    assert sizing.in_service_peak(untimed) == (None, "no request reported its first token's time")


def test_a_burst_the_server_queued_is_sized_in_whole_waves_of_what_it_ran_at_once():
    p = _burst()
    peak, _ = sizing.in_service_peak(_waves(32, held=16, wave_s=2.0))  # two waves of 16, a 4 s window
    n = sizing.remeasure_count(p, window_s=4.0, peak=peak)
    assert n == 6 * 16 and p.capacity == 16 and p.passes == 2  # 11 s wanted at 2 s a wave
    assert p.estimate_s == pytest.approx(12.0)


def test_a_partial_last_wave_lasts_as_long_as_a_full_one():
    p = _burst()
    n = sizing.remeasure_count(p, window_s=4.0, peak=30)  # 32 requests: a wave of 30, one of 2, 2 s each
    assert n == 6 * 30  # not 11 s at the 32-in-4-s rate (88), which the server would run in ~6 s


def test_a_burst_the_server_held_all_at_once_grows_by_a_large_factor():
    p = _burst()
    n = sizing.remeasure_count(p, window_s=5.8, peak=32)  # every request in service at once: one life
    assert n == 32 * sizing.GROWTH and p.capacity == 32 and p.estimate_s is None


def test_growth_stays_within_max_requests_and_says_so():
    p = _burst(max_requests=100)
    assert sizing.remeasure_count(p, window_s=5.8, peak=32) == 100 and p.capped
    assert "measure.max_requests" in sizing.hint(p)


def test_a_long_enough_burst_records_the_peak_as_what_the_server_held():
    p = _burst()
    assert sizing.remeasure_count(p, window_s=12.0, peak=24) is None
    part = sizing.part(p, 32, (24, None))
    assert (part.num_in_flight, part.num_in_service_peak, part.num_waves) == (24, 24, pytest.approx(32 / 24))


def test_an_engine_of_known_concurrency_is_scaled_by_the_windows_rate_whatever_its_peak():
    p = sizing.plan(None, waves=4, min_window_s=10.0, max_requests=10_000, capacity=8, on_gpu=True)
    assert sizing.remeasure_count(p, window_s=4.0, peak=32) == 88 and p.capacity == 8


def test_a_dry_run_says_the_burst_starts_from_a_count_to_be_measured_again():
    said = sizing.describe(_burst())
    assert said.startswith("32 requests to start (4 waves of 8: the server's own concurrency is unknown")
    assert "most requests the server had in service at once" in said


class _Server:
    def __init__(self, held):
        self.held = held

    def max_in_flight(self):
        return self.held, None if self.held else "its own default"

    def sequences_in_flight(self):
        return self.held or 4


def test_only_a_burst_against_a_server_of_unknown_concurrency_is_sized_by_its_peak(compose_cfg):
    from llem.config import to_config

    def observed(held, *overrides):
        return sizing.for_job(to_config(compose_cfg(list(overrides))), _Server(held), on_gpu=True).observe

    assert observed(None)
    assert not observed(64)  # the server's flag, or batch, says what it holds
    assert not observed(None, "load.max_concurrency=8")  # a closed loop: the client's cap holds the rest
    assert not observed(None, "load.request_rate=4")  # an open loop: the rate sets the window


def test_a_burst_held_whole_twice_grows_as_its_two_windows_grew():
    p = sizing.plan(None, waves=4, min_window_s=10.0, max_requests=100_000, capacity=16, on_gpu=True,
                    burst_unknown=True)  # 64 requests to start (an H100's vLLM server at its default)
    assert sizing.remeasure_count(p, window_s=3.69, peak=64) == 64 * sizing.GROWTH
    n = sizing.remeasure_count(p, window_s=7.38, peak=512)  # 8× the count doubled the window: window ∝ count^(1/3)
    assert n == pytest.approx(512 * (11.0 / 7.38) ** 3, abs=1)  # not 4096, which ran a 55 s window there


def test_a_burst_whose_window_did_not_grow_grows_by_the_large_factor_again():
    p = _burst()
    sizing.remeasure_count(p, window_s=5.0, peak=32)
    assert sizing.remeasure_count(p, window_s=5.0, peak=256) == 256 * sizing.GROWTH
