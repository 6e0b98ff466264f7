"""How late requests are sent, and when they are due: the load mode a config names, the slots of a
concurrency cap, the lateness columns and the ``client_late`` bound, and the whole-window bound
``measure.max_window_s`` (pure logic; the client against a server is in test_serving_client.py)."""

from __future__ import annotations

import asyncio
import math
import time
from types import SimpleNamespace

import pytest

from llem.config import to_config
from llem.config.load import LoadConfig, load_mode
from llem.config.measure import MeasureConfig
from llem.config.validate import check_schedule
from llem.measure.load_metrics import CLIENT_LATE_MS, load_part
from llem.measure.metrics import request_rows
from llem.serving.schedule import Slots
from llem.support.errors import ConfigError
from llem.workload.records import RequestResult


def _result(i: int, due: float, late_s=None) -> RequestResult:
    sent = due + (late_s or 0.0)
    return RequestResult(request_id=i, input_tokens=3, output_tokens=2, start_s=sent, end_s=sent + 0.2,
                         first_token_s=sent + 0.1, token_times_s=[sent + 0.1, sent + 0.2], arrival_s=due,
                         lateness_s=late_s)


def _config(rate=8.0, cap=None):
    return SimpleNamespace(load=LoadConfig(request_rate=rate, max_concurrency=cap),
                           objective=SimpleNamespace(bounds={}))


def test_load_mode_is_burst_closed_or_open():
    assert load_mode(LoadConfig()) == "burst"
    assert load_mode(LoadConfig(max_concurrency=4)) == "closed"
    assert load_mode(LoadConfig(request_rate=2.0)) == "open"
    assert load_mode(LoadConfig(request_rate=2.0, max_concurrency=4)) == "open"


def test_a_slot_is_due_when_it_freed_and_the_first_ones_at_t0():
    async def scenario():
        slots = Slots(2, t0=100.0)
        end = time.perf_counter() + 5
        first, second = await slots.take(end), await slots.take(end)
        slots.give_back()
        third = await slots.take(end)
        return first, second, third

    first, second, third = asyncio.run(scenario())
    assert first == second == 100.0 and third > 100.0  # the freed slot's time, on now()'s clock


def test_waiting_for_a_slot_ends_at_the_window_bound():
    async def scenario():
        slots = Slots(1, t0=0.0)
        end = time.perf_counter() + 0.2
        await slots.take(end)
        return await slots.take(end)  # nobody gives the slot back

    t = time.monotonic()
    assert asyncio.run(scenario()) is None and time.monotonic() - t < 1.0


def test_no_cap_gives_every_request_a_slot_free_from_t0():
    assert asyncio.run(Slots(None, t0=7.0).take(0.0)) == 7.0


def test_lateness_columns_come_from_each_requests_lateness():
    results = [_result(i, i * 0.1, late_s=0.001 * i) for i in range(10)]
    part, flags = load_part(results, request_rows(results, 0.0), 1.0, _config())
    assert part.client_lateness_ms_max == pytest.approx(9.0) and part.client_lateness_ms_p50 == pytest.approx(4.5)
    assert part.load_mode == "open" and part.client_lateness_null_reason is None
    assert [r.lateness_ms for r in request_rows(results, 0.0)][3] == pytest.approx(3.0)


def test_p99_lateness_over_the_bound_is_flagged_client_late():
    late = [_result(i, i * 0.1, late_s=(CLIENT_LATE_MS + 5) / 1000) for i in range(10)]
    on_time = [_result(i, i * 0.1, late_s=(CLIENT_LATE_MS - 1) / 1000) for i in range(10)]
    _, flagged = load_part(late, request_rows(late, 0.0), 1.0, _config())
    _, clean = load_part(on_time, request_rows(on_time, 0.0), 1.0, _config())
    assert [f.code for f in flagged] == ["client_late"] and "p99" in flagged[0].message
    assert clean == []


def test_a_burst_sent_within_one_percent_of_its_window_is_not_late():
    """A burst's requests are all due at t0 and go out one after another: 20 ms late in a 10 s window is not."""
    results = [_result(i, 0.0, late_s=0.020) for i in range(10)]
    part, flags = load_part(results, request_rows(results, 0.0), 10.0, _config(rate=math.inf))
    assert part.load_mode == "burst" and part.client_lateness_ms_p99 == pytest.approx(20.0) and flags == []


def test_a_burst_sent_later_than_one_percent_of_its_window_is_late():
    results = [_result(i, 0.0, late_s=0.2) for i in range(10)]
    _, flags = load_part(results, request_rows(results, 0.0), 10.0, _config(rate=math.inf))
    assert [f.code for f in flags] == ["client_late"] and "burst" in flags[0].message


def test_no_lateness_known_is_null_with_a_reason():
    results = [_result(i, 0.0) for i in range(3)]
    part, flags = load_part(results, request_rows(results, 0.0), 1.0, _config(rate=math.inf))
    assert part.client_lateness_ms_p99 is None and "in llem's process" in part.client_lateness_null_reason
    assert part.load_mode == "burst" and flags == []


@pytest.mark.parametrize("value", [0, -1, math.inf])
def test_max_window_must_be_a_finite_positive_time(value):
    with pytest.raises(ConfigError, match="measure.max_window_s"):
        MeasureConfig(max_window_s=value)


def test_max_window_is_no_shorter_than_the_min_window():
    with pytest.raises(ConfigError, match="measure.max_window_s.*min_window_s"):
        MeasureConfig(min_window_s=20, max_window_s=10)


def test_an_arrival_schedule_longer_than_the_window_is_refused_before_load(compose_cfg):
    config = to_config(compose_cfg(["load.request_rate=0.01", "dataset.num_requests=100"]))  # the last at 9,900 s
    with pytest.raises(ConfigError, match="load.request_rate.*measure.max_window_s"):
        check_schedule(config)
    check_schedule(to_config(compose_cfg(["load.request_rate=1", "dataset.num_requests=3601"])))  # 3600 s fits


def test_a_sleep_never_ends_before_its_time():
    from llem.serving.schedule import sleep_until
    from llem.workload.records import now

    async def scenario():
        woke = []
        for _ in range(20):
            t = now() + 0.003
            await sleep_until(t)
            woke.append(now() - t)
        return woke

    woke = asyncio.run(scenario())
    assert min(woke) >= 0  # how soon after: benchmarks/client_load.py (a timing, not a unit test's business)
