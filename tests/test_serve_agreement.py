"""The rules benchmarks/serve_agreement.py compares llem's client and ``vllm bench serve`` by (pure functions:
no server, no GPU)."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_agreement.py"
_spec = importlib.util.spec_from_file_location("serve_agreement", _PATH)
sa = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sa)


def _request(start: float, tokens: int, gap_s: float = 0.1) -> np.ndarray:
    return start + gap_s * np.arange(tokens)


def test_runs_interleave_a_b_b_a_with_llem_first():
    assert sa.order(1) == ["llem", "bench"]
    assert sa.order(2) == ["llem", "bench", "bench", "llem"]
    assert sa.order(3)[:1] == ["llem"] and sa.order(3).count("bench") == 3


def test_tokens_before_the_drain_leave_out_the_tail_a_late_long_request_makes():
    # two slots: two short requests, then a long one admitted last runs alone (the drain)
    short = [_request(0.0, 10), _request(0.0, 10), _request(1.0, 10)]
    late_long = short + [_request(1.0, 50)]
    early_long = [_request(0.0, 50), _request(0.0, 10), _request(1.0, 10), _request(2.0, 10)]
    drain = sa.before_drain(late_long, 2)
    # up to the end of the 2nd-last request (t = 1.9 s): 10 + 10 + 10 + 10 tokens
    assert drain == pytest.approx(40 / 1.9)
    # the whole runs differ by admission order; the count up to the drain is the rule both clients share
    assert max(t[-1] for t in late_long) > max(t[-1] for t in early_long)
    assert math.isnan(sa.before_drain(short[:2], 2))  # no more requests than the batch: nothing before a drain


def test_pooled_medians_come_from_every_request_and_throughput_from_the_runs_mean():
    a = {"tok_s": 100.0, "req_s": 1.0, "drain_tok_s": 110.0, "ttft_ms": [1.0, 2.0, 3.0], "itl_ms": [5.0, 5.0]}
    b = {"tok_s": 120.0, "req_s": 1.2, "drain_tok_s": 130.0, "ttft_ms": [10.0, 20.0, 30.0], "itl_ms": [7.0]}
    both = sa.summary(sa.pooled([a, None, b]))
    assert both["output tok/s"] == pytest.approx(110.0)
    assert both["tok/s before drain"] == pytest.approx(120.0)
    assert both["TTFT p50 ms"] == pytest.approx(6.5)  # the median of all six, not the mean of two medians (11)
    assert both["requests"] == 6
    assert sa.spread([a, b], "output tok/s") == pytest.approx(1.2)
    assert sa.pooled([None]) is None and math.isnan(sa.summary(None)["TTFT p50 ms"])


def test_three_repeats_interleave_a_b_b_a_a_b():
    assert sa.order(3) == ["llem", "bench", "bench", "llem", "llem", "bench"]


def test_each_batch_size_sets_batch_for_its_server_and_llems_jobs():
    assert sa.with_batch(["backend=vllm", "batch=4"], 64) == ["backend=vllm", "batch=64"]
    assert sa.with_batch(["backend=vllm"], 256) == ["backend=vllm", "batch=256"]
    assert sa.with_batch(["batch=4"], None) == ["batch=4"]


def test_help_says_how_to_run_the_check_at_batch_64_and_256(capsys):
    with pytest.raises(SystemExit):
        sa.main(["--help"])
    text = capsys.readouterr().out
    assert "--batches 64,256" in text and "--repeats 3" in text and "A B B A A B" in text
