"""How many requests a job measures: whole waves of the engine's capacity, extended for the window."""

import time

import pytest

from llem.config import to_config
from llem.measure import sizing
from llem.support.errors import ConfigError


def test_auto_count_is_whole_waves_of_the_capacity():
    p = sizing.plan(None, waves=4, min_window_s=10.0, max_requests=10_000, capacity=32, on_gpu=False)
    assert p.auto and p.num_requests == 128 and p.min_window_s is None  # no window minimum on the CPU
    assert sizing.extend_for_window(p, wave_s=0.5) == 128  # nothing to extend without a minimum
    part = sizing.part(p, 128)
    assert (part.requests_sizing, part.num_in_flight, part.num_waves, part.measure_passes_run) == ("auto", 32, 4.0, 1)


def test_the_warmup_wave_predicts_whole_waves_for_the_window():
    p = sizing.plan(None, waves=4, min_window_s=10.0, max_requests=10_000, capacity=32, on_gpu=True)
    assert p.num_requests == 128 and p.min_window_s == 10.0
    n = sizing.extend_for_window(p, wave_s=0.8)  # 11 s wanted (10 % margin) → 14 waves of 0.8 s
    assert n == 14 * 32 and n % 32 == 0 and p.estimate_s == pytest.approx(14 * 0.8)
    assert p.estimate_s >= 10.0
    slow = sizing.plan(None, waves=4, min_window_s=10.0, max_requests=10_000, capacity=1, on_gpu=True)
    assert sizing.extend_for_window(slow, wave_s=5.0) == 4  # 4 waves already last 20 s: never fewer


def test_a_short_window_is_measured_again_scaled_by_its_rate_twice_at_most():
    p = sizing.plan(None, waves=4, min_window_s=10.0, max_requests=10_000, capacity=8, on_gpu=True)
    n = sizing.remeasure_count(p, window_s=4.0)  # 32 requests in 4 s → 88 wanted → 11 waves
    assert n == 88 and p.passes == 2 and p.estimate_s == pytest.approx(11.0)
    # a server of unknown concurrency ran the 88 faster than the 32: a third pass, and no fourth
    assert sizing.remeasure_count(p, window_s=5.0) > 88 and p.passes == 3
    assert sizing.remeasure_count(p, window_s=5.0) is None
    fine = sizing.plan(None, waves=4, min_window_s=10.0, max_requests=10_000, capacity=8, on_gpu=True)
    assert sizing.remeasure_count(fine, window_s=10.5) is None


def test_the_users_count_is_honoured_and_flagged_when_it_cannot_fill_the_batch():
    p = sizing.plan(16, waves=4, min_window_s=10.0, max_requests=10_000, capacity=32, on_gpu=True)
    assert not p.auto and p.num_requests == 16
    assert sizing.extend_for_window(p, wave_s=0.1) == 16 and sizing.remeasure_count(p, 0.75) is None
    found = {f.code: f.message for f in sizing.flags(p, 16, True, "needs more requests than the 32 sequences")}
    assert set(found) == {"batch_not_filled", "no_steady_state"}
    assert "16 requests for an engine that holds 32" in found["batch_not_filled"]
    assert "dataset.num_requests unset" in found["batch_not_filled"]
    full = sizing.plan(64, waves=4, min_window_s=10.0, max_requests=10_000, capacity=32, on_gpu=True)
    assert sizing.flags(full, 64, True, None) == []


def test_max_requests_caps_the_count_and_says_so():
    p = sizing.plan(None, waves=4, min_window_s=10.0, max_requests=100, capacity=8, on_gpu=True)
    n = sizing.extend_for_window(p, wave_s=0.01)  # the window would need 8,800 requests
    assert n == 96 and p.capped  # whole waves within the cap
    assert "measure.max_requests" in sizing.hint(p)


def test_measure_keys_are_checked(compose_cfg):
    for override, key in (("measure.waves=1", "measure.waves"), ("measure.min_window_s=-1", "measure.min_window_s"),
                          ("measure.max_requests=0", "measure.max_requests"),
                          ("dataset.num_requests=0", "dataset.num_requests")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            to_config(compose_cfg([override]))


def test_a_dry_run_says_the_count():
    set_ = sizing.plan(16, waves=4, min_window_s=10.0, max_requests=10_000, capacity=32, on_gpu=True)
    assert "16 requests as set" in sizing.describe(set_) and "batch_not_filled" in sizing.describe(set_)
    auto = sizing.plan(None, waves=4, min_window_s=10.0, max_requests=10_000, capacity=8, on_gpu=True)
    assert sizing.describe(auto) == "32 requests (4 waves of 8, more whole waves until the window lasts 10 s)"
    cpu = sizing.plan(None, waves=4, min_window_s=10.0, max_requests=10_000, capacity=8, on_gpu=False)
    assert sizing.describe(cpu) == "32 requests (4 waves of 8)"


# --- the protocol around it: an engine whose waves take a known time --------------------------------


class _Waves:
    """An engine whose every wave of ``batch`` requests takes ``wave_s`` (the first call ``first_s``): the
    sizing logic is about time, so here time is what is fixed (the real engines are measured elsewhere)."""

    def __new__(cls, wave_s: float, first_s: float):
        from llem.backends.base import Engine
        from llem.workload.records import RequestResult, now

        class Waves(Engine):
            name = "waves"
            config_class = None
            calls = 0

            def load(self):
                pass

            def generate(self, requests, output_len, progress):
                out = []
                for first in range(0, len(requests), self.config.batch):
                    wave = requests[first:first + self.config.batch]
                    t0 = now()
                    time.sleep(first_s if Waves.calls == 0 else wave_s)
                    Waves.calls += 1
                    t1 = now()
                    times = [t0 + (t1 - t0) * (k + 1) / output_len for k in range(output_len)]
                    out += [RequestResult(r.request_id, r.input_tokens, output_len, t0, t1, times[0], times)
                            for r in wave]
                    progress(len(wave))
                return out

        return Waves


def _measure(compose_cfg, tmp_path, monkeypatch, engine, overrides):
    from llem.measure import experiment

    monkeypatch.setattr(experiment, "engine_class", lambda name: engine)
    monkeypatch.setattr(experiment, "metered_gpus", lambda cfg, cls, device: ([], [], "no GPU here"))
    monkeypatch.setattr(experiment.sizing, "plan", _on_gpu(experiment.sizing.plan))
    config = to_config(compose_cfg(["device=cpu", "batch=4", "input_len=8", "output_len=4", "baseline.kind=none",
                                    "baseline.loaded_idle_s=0", *overrides]))
    return experiment.Experiment(config, tmp_path, "cpu", experiment.DeviceIdle()).run()


def _on_gpu(plan):
    """The window minimum applies where a GPU is metered: here, as if one were."""
    return lambda *a, on_gpu, **kw: plan(*a, on_gpu=True, **kw)


def test_the_warmup_wave_sizes_the_measured_window(compose_cfg, tmp_path, monkeypatch):
    row = _measure(compose_cfg, tmp_path, monkeypatch, _Waves(wave_s=0.05, first_s=0.05),
                   ["measure.min_window_s=0.6"])
    assert row["status"] == "ok", row["error"]
    # 0.66 s wanted at ~0.05 s a wave → ~14 whole waves of 4, not the 4 waves it starts with
    assert (row["requests_sizing"], row["num_in_flight"]) == ("auto", 4) and row["num_requests"] % 4 == 0
    assert row["num_waves"] == row["num_requests"] / 4 and row["num_waves"] > 4
    assert row["measure_passes_run"] == 2 or 0.66 <= row["window_estimate_s"] < 1.0  # (2: a loaded machine)
    assert row["steady_state_s"] is not None and set(row["flags"]) <= {"host_busy"}  # other test workers may run


def test_a_cold_first_call_does_not_mislead_the_prediction(compose_cfg, tmp_path, monkeypatch):
    # alone, a cold first batch (0.5 s) would predict 4 waves last 2 s; the second warm-up batch says 0.05 s a wave
    row = _measure(compose_cfg, tmp_path, monkeypatch, _Waves(wave_s=0.05, first_s=0.5), ["measure.min_window_s=0.6"])
    assert row["status"] == "ok", row["error"]
    assert row["warmup_batches_run"] == 2 and row["window_estimate_s"] < 1.5 and row["num_waves"] > 4


def test_a_window_that_comes_out_short_is_measured_again(compose_cfg, tmp_path, monkeypatch):
    # warm-up batches of another output length predict nothing: the first window (4 waves, ~0.2 s) is the probe
    row = _measure(compose_cfg, tmp_path, monkeypatch, _Waves(wave_s=0.05, first_s=0.05),
                   ["measure.min_window_s=0.6", "warmup.output_len=1"])
    assert row["status"] == "ok", row["error"]
    assert row["measure_passes_run"] >= 2 and row["num_requests"] % 4 == 0 and row["num_requests"] > 16


def test_a_set_count_that_cannot_fill_the_batch_is_measured_as_set_and_flagged(compose_cfg, tmp_path, monkeypatch):
    row = _measure(compose_cfg, tmp_path, monkeypatch, _Waves(wave_s=0.01, first_s=0.01),
                   ["dataset.num_requests=3", "measure.min_window_s=0.6"])
    assert row["status"] == "ok", row["error"]
    assert (row["requests_sizing"], row["num_requests"], row["measure_passes_run"]) == ("set", 3, 1)
    assert {"batch_not_filled", "no_steady_state"} <= set(row["flags"])
    assert any("leave dataset.num_requests unset" in w for w in row["warnings"])


def test_natural_lengths_scale_the_warmup_wave_to_the_workloads_mean_length():
    from llem.workload.records import Request

    short = [Request(i, [1], output_len=n) for i, n in enumerate((10, 20))]
    assert sizing.asked_mean(short, None, longest=99) == 15.0 and sizing.asked_mean(short, 7, longest=99) == 7.0
    # the warm-up's fastest wave asked for 15 tokens on average, the workload asks for 60: a wave takes 4× as long
    assert sizing.wave_for_lengths(0.5, 15.0, 60.0) == pytest.approx(2.0)
    p = sizing.plan(None, waves=4, min_window_s=10.0, max_requests=10_000, capacity=8, on_gpu=True)
    assert sizing.extend_for_window(p, sizing.wave_for_lengths(0.5, 15.0, 60.0)) == 6 * 8  # 11 s at 2 s a wave


class _Tokens:
    """An engine whose every wave takes ``token_s`` per output token its requests ask for on average: time is
    what the window's prediction is about, and with natural lengths a wave's time follows its lengths."""

    def __new__(cls, token_s: float):
        from llem.backends.base import Engine
        from llem.workload.records import RequestResult, now

        class Tokens(Engine):
            name = "tokens"
            config_class = None

            def load(self):
                pass

            def generate(self, requests, output_len, progress):
                out = []
                for first in range(0, len(requests), self.config.batch):
                    wave = requests[first:first + self.config.batch]
                    lengths = [output_len or r.output_len for r in wave]
                    t0 = now()
                    time.sleep(token_s * sum(lengths) / len(lengths))
                    t1 = now()
                    out += [RequestResult(r.request_id, r.input_tokens, n, t0, t1, t1, [t1] * n,
                                          output_len_requested=n) for r, n in zip(wave, lengths)]
                    progress(len(wave))
                return out

        return Tokens


def test_natural_lengths_predict_the_window_from_the_mean_length_asked(compose_cfg, tmp_path, monkeypatch):
    token_s = 0.008  # waves of ~0.2 s: a loaded host oversleeps by a few ms, a small share of that
    row = _measure(compose_cfg, tmp_path, monkeypatch, _Tokens(token_s),
                   ["measure.min_window_s=2.4", "output_len=null", "dataset.output_lengths.mean=24",
                    "dataset.output_lengths.max=96", "warmup.batches=2"])
    assert row["status"] == "ok", row["error"]
    expected_s = row["num_waves"] * token_s * row["output_tokens_requested_mean"]
    assert row["window_estimate_s"] == pytest.approx(expected_s, rel=0.1)
    assert row["measure_passes_run"] == 1 and row["window_s"] >= 2.4


class _Holds:
    """A server that runs up to ``held`` requests at once, each wave ``wave_s``, and does not say how many it
    holds (its concurrency is unknown to llem, as a server launched at its own default)."""

    def __new__(cls, held: int, wave_s: float):
        from llem.backends.base import Engine
        from llem.workload.records import RequestResult, now

        class Holds(Engine):
            name = "holds"
            config_class = None

            def load(self):
                pass

            def max_in_flight(self):
                return None, "the server's own default"

            def generate(self, requests, output_len, progress):
                out = []
                for first in range(0, len(requests), held):
                    wave = requests[first:first + held]
                    t0 = now()
                    time.sleep(wave_s)
                    t1 = now()
                    out += [RequestResult(r.request_id, r.input_tokens, output_len, t0, t1, t0 + wave_s / 4, [t1])
                            for r in wave]
                    progress(len(wave))
                return out

        return Holds


def test_a_burst_against_a_server_of_unknown_concurrency_reaches_the_window(compose_cfg, tmp_path, monkeypatch):
    # every count up to 96 takes one 0.35 s wave: scaled by its rate (16, 32, 64) the window stays short
    row = _measure(compose_cfg, tmp_path, monkeypatch, _Holds(held=96, wave_s=0.35), ["measure.min_window_s=0.6"])
    assert row["status"] == "ok", row["error"]
    assert row["window_s"] >= 0.6 and "short_window" not in row["flags"]
    assert row["num_in_service_peak"] == 96 and row["num_in_flight"] == 96 and row["num_waves"] > 1
