"""load.trace in a job: the keys it cannot be set with are refused, a trace the job cannot replay is refused
before anything loads, and its requests carry the trace's lengths, scaled times and classes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from llem.config import to_config
from llem.config.load import load_mode
from llem.measure import sizing
from llem.measure.load_metrics import load_part
from llem.measure.metrics import label_rows, request_rows
from llem.support.errors import ConfigError
from llem.workload import build
from llem.workload.arrivals import lengths_part, shape
from llem.workload.records import RequestResult
from llem.workload.trace import check_config

NATURAL = ["output_len=null", "dataset.output_lengths.max=64", "dataset.output_lengths.mean=16"]


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "two_class.jsonl"
    records = [{"timestamp_s": 10.0, "input_tokens": 4, "output_tokens": 3, "class": "short"},
               {"timestamp_s": 10.5, "input_tokens": 12, "class": "long"},
               {"timestamp_s": 12.0, "input_tokens": 6, "output_tokens": 5, "class": "short"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _config(compose_cfg, trace_file, *more):
    return to_config(compose_cfg([f"load.trace={trace_file}", "input_len=16", *NATURAL, *more]))


def _refused(compose_cfg, overrides):
    with pytest.raises(ConfigError) as err:
        to_config(compose_cfg(overrides))
    return str(err.value)


@pytest.mark.parametrize("key", ["load.request_rate=4", "load.burstiness=0.5"])
def test_a_trace_with_a_drawn_arrival_process_is_refused_naming_both_keys(compose_cfg, trace_file, key):
    message = _refused(compose_cfg, [f"load.trace={trace_file}", *NATURAL, key])
    assert key.split("=")[0] in message and "load.trace" in message


@pytest.mark.parametrize("scale", ["0", "-1"])
def test_a_time_scale_must_be_positive(compose_cfg, trace_file, scale):
    message = _refused(compose_cfg, [f"load.trace={trace_file}", *NATURAL, f"load.trace_time_scale={scale}"])
    assert "load.trace_time_scale" in message and "> 0" in message


def test_a_time_scale_without_a_trace_is_refused(compose_cfg):
    assert "without load.trace" in _refused(compose_cfg, ["load.trace_time_scale=2"])


def test_a_trace_needs_natural_output_lengths(compose_cfg, trace_file):
    message = _refused(compose_cfg, [f"load.trace={trace_file}", "output_len=8"])
    assert "output_len=8" in message and "null with load.trace" in message


def test_a_trace_needs_random_prompts(compose_cfg, trace_file):
    message = _refused(compose_cfg, [f"load.trace={trace_file}", "dataset=builtin", *NATURAL])
    assert "dataset='builtin'" in message and "random with load.trace" in message


def test_a_trace_replays_as_an_open_loop(compose_cfg, trace_file):
    config = _config(compose_cfg, trace_file)
    assert config.load.timed and load_mode(config.load) == "open"


def test_a_bad_trace_fails_the_check_naming_file_line_and_field(compose_cfg, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp_s": 0, "input_tokens": 3}\n{"timestamp_s": 1, "input_tokens": 3.5}\n')
    config = to_config(compose_cfg([f"load.trace={path}", *NATURAL]))
    with pytest.raises(ConfigError, match=r"bad.jsonl.*line 2, field 'input_tokens'"):
        check_config(config)


def test_more_requests_than_the_trace_holds_are_refused(compose_cfg, trace_file):
    with pytest.raises(ConfigError, match="dataset.num_requests=4 .*holds 3 requests"):
        check_config(_config(compose_cfg, trace_file, "dataset.num_requests=4"))


def test_a_prompt_longer_than_input_len_is_refused_with_the_length_needed(compose_cfg, trace_file):
    with pytest.raises(ConfigError, match="input_len=8 .*allowed input_len >= 12"):
        check_config(_config(compose_cfg, trace_file, "input_len=8"))


def test_an_output_longer_than_the_natural_maximum_is_refused(compose_cfg, trace_file):
    with pytest.raises(ConfigError, match="dataset.output_lengths.max=4 .*>= 5"):
        check_config(_config(compose_cfg, trace_file, "dataset.output_lengths.max=4", "dataset.output_lengths.mean=2"))


def test_a_trace_longer_than_the_window_is_refused_naming_the_keys(compose_cfg, trace_file):
    config = _config(compose_cfg, trace_file, "load.trace_time_scale=10", "measure.max_window_s=15",
                     "measure.min_window_s=1")
    with pytest.raises(ConfigError, match="load.trace_time_scale=10 .*20 s .*measure.max_window_s=15"):
        check_config(config)
    check_config(_config(compose_cfg, trace_file, "dataset.num_requests=2", "load.trace_time_scale=10",
                        "measure.max_window_s=15", "measure.min_window_s=1"))  # the first two arrive within 5 s


def test_the_requests_carry_the_traces_lengths_scaled_times_and_classes(compose_cfg, trace_file):
    config = _config(compose_cfg, trace_file, "load.trace_time_scale=0.5")
    work = build(config)
    shaped = shape(work.requests, config)
    assert [r.input_tokens for r in work.requests] == [4, 12, 6]
    assert [r.arrival_s for r in work.requests] == [0.0, 0.25, 1.0]
    assert [r.request_class for r in work.requests] == ["short", "long", "short"]
    assert work.requests[0].output_len == 3 and work.requests[2].output_len == 5
    assert 1 <= work.requests[1].output_len <= 64  # no output_tokens: a natural length
    assert shaped.source == "trace+distribution"
    assert lengths_part(work.requests, config, shaped).output_len_distribution is not None


def test_num_requests_takes_the_first_lines_of_the_trace(compose_cfg, trace_file):
    work = build(_config(compose_cfg, trace_file, "dataset.num_requests=2"))
    assert [r.input_tokens for r in work.requests] == [4, 12]


def test_a_trace_is_measured_as_recorded_never_resized(compose_cfg, trace_file):
    engine = SimpleNamespace(max_in_flight=lambda: (4, None), sequences_in_flight=lambda: 4)
    plan = sizing.for_job(_config(compose_cfg, trace_file), engine, on_gpu=True)
    assert plan.num_requests == 3 and not plan.auto and sizing.part(plan, 3).requests_sizing == "trace"
    assert "load.trace" in sizing.hint(plan)  # a short window's flag says what to change


def test_the_prompts_are_the_same_for_the_same_seed_and_differ_between_requests(compose_cfg, trace_file):
    first, again = build(_config(compose_cfg, trace_file)), build(_config(compose_cfg, trace_file))
    assert [r.token_ids for r in first.requests] == [r.token_ids for r in again.requests]
    assert first.requests[0].token_ids != first.requests[2].token_ids[:4]


def test_the_row_names_the_trace_and_its_rate_and_each_request_its_class(compose_cfg, trace_file):
    config = _config(compose_cfg, trace_file)
    work = build(config)
    shape(work.requests, config)
    results = [RequestResult(request_id=r.request_id, input_tokens=r.input_tokens, output_tokens=2, start_s=r.arrival_s,
                             end_s=r.arrival_s + 0.1, first_token_s=r.arrival_s + 0.05, arrival_s=r.arrival_s)
               for r in work.requests]
    rows = request_rows(results, 0.0)
    label_rows(rows, work.requests)
    out, _ = load_part(results, rows, 2.5, config)
    assert out.load_trace == "two_class.jsonl" and len(out.load_trace_sha256) == 64
    assert out.target_requests_per_s == pytest.approx(2 / 2.0)  # 3 requests over 2 s
    assert [r.request_class for r in rows] == ["short", "long", "short"]


def test_every_engine_replays_a_trace_in_process(compose_cfg, trace_file):
    from llem.backends import engine_class

    for backend in ("vllm", "tensorrt", "pytorch"):
        engine_class(backend).validate_config(_config(compose_cfg, trace_file, f"backend={backend}"))


def test_an_engine_without_arrivals_refuses_a_trace_naming_it(compose_cfg, trace_file):
    from tests.test_arrivals import BatchOnly

    with pytest.raises(ConfigError, match="load.trace=.*is not honoured by backend=batchonly"):
        BatchOnly.validate_config(_config(compose_cfg, trace_file))
