"""The work rule's weights (llem.energy.work_weights) and the rule a job falls back to without them
(llem.measure.request_energy)."""

from __future__ import annotations

import pytest

from llem.energy import work_weights
from llem.energy.work_weights import Weights
from llem.measure.request_energy import into_rows
from llem.results.tables import RequestRow
from llem.workload.records import RequestResult

KEY = work_weights.calibration_key("vllm", {"vllm": "0.11.0", "torch": "2.8.0"}, "llama3", "bfloat16",
                                   "NVIDIA H100 80GB HBM3")


def test_the_prefill_pass_gives_both_weights():
    w = work_weights.from_prefill_pass(0.002, window_adjusted_j=500.0, prompt_tokens_charged=50_000,
                                       output_tokens=8_000)
    assert (w.j_per_prompt_token, w.source) == (0.002, "prefill_pass")
    assert w.j_per_output_token == pytest.approx((500.0 - 100.0) / 8_000)


def test_a_prefill_pass_that_takes_the_whole_window_gives_no_weights_and_says_why():
    w = work_weights.from_prefill_pass(0.02, window_adjusted_j=500.0, prompt_tokens_charged=50_000,
                                       output_tokens=8_000)
    assert not w.usable and "no energy is left for the output tokens" in w.null_reason


def test_a_calibration_recorded_is_read_back_for_the_same_key(tmp_path):
    work_weights.record(tmp_path, KEY, Weights(0.002, 0.05, "prefill_pass"), "job-1")
    w = work_weights.recorded(tmp_path, KEY)
    assert (w.j_per_prompt_token, w.j_per_output_token, w.source) == (0.002, 0.05, "calibration")


def test_a_calibration_of_another_gpu_is_not_used(tmp_path):
    work_weights.record(tmp_path, KEY, Weights(0.002, 0.05, "prefill_pass"), "job-1")
    other = dict(KEY, gpu_name="NVIDIA A100-SXM4-80GB")
    w = work_weights.recorded(tmp_path, other)
    assert not w.usable and "no calibration for vllm llama3 bfloat16 on NVIDIA A100" in w.null_reason


def test_without_measured_or_calibrated_weights_the_output_token_rule_is_named_with_both_reasons():
    w = work_weights.choose("work", Weights(null_reason="measure.prefill=false: no prefill pass in this job"),
                            Weights(null_reason="no calibration for this build"))
    assert not w.usable
    assert w.null_reason == ("measure.prefill=false: no prefill pass in this job; no calibration for this build: "
                             "the output-token rule is used")


def test_the_job_s_own_weights_win_over_a_calibration():
    own, kept = Weights(0.001, 0.04, "prefill_pass"), Weights(0.002, 0.05, "calibration")
    assert work_weights.choose("work", own, kept) is own
    assert work_weights.choose("work", Weights(null_reason="none"), kept) is kept


def _job():
    samples = [{"t_s": k * 0.1, "gpu_index": 0, "energy_counter_mj": k * 10_000} for k in range(11)]
    times = [0.05 + 0.1 * k for k in range(10)]
    results = [RequestResult(0, 16, 10, 0.0, 1.0, times[0], times), RequestResult(1, 2000, 1, 0.0, 0.5, 0.5, [0.5])]
    return samples, results, [RequestRow(request_id=0), RequestRow(request_id=1)]


def test_a_fallback_writes_the_output_token_rule_and_its_reason():
    samples, results, rows = _job()
    part = into_rows(rows, results, samples, 0.0, 1.0, 100.0, 20.0, Weights(null_reason="no prefill pass"))
    assert (part.energy_attribution, part.attribution_null_reason) == ("output_tokens", "no prefill pass")
    assert rows[1].energy_j == rows[1].energy_output_tokens_rule_j and rows[1].energy_prompt_adjusted_j is None


def test_the_work_rule_writes_both_rules_and_the_terms_per_request():
    samples, results, rows = _job()
    part = into_rows(rows, results, samples, 0.0, 1.0, 100.0, 20.0, Weights(0.001, 0.05, "prefill_pass"))
    assert (part.energy_attribution, part.attribution_weights_source) == ("work", "prefill_pass")
    assert rows[1].energy_adjusted_j > rows[1].energy_output_tokens_rule_adjusted_j  # its prefill is charged
    assert rows[0].energy_adjusted_j + rows[1].energy_adjusted_j == pytest.approx(100.0 - 20.0)
