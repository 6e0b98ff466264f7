"""The rules of benchmarks/attribution.py (pure functions: traces, overrides, the recovery report), on fake
job results; the jobs themselves run on a GPU elsewhere."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "attribution.py"
_spec = importlib.util.spec_from_file_location("bench_attribution", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _args(**kw):
    base = dict(a_input=2048, a_output=8, a_rate=0.5, b_input=64, b_output=256, b_rate=1.0, duration_s=30.0, seed=3)
    return argparse.Namespace(**{**base, **kw})


def test_the_mixed_trace_is_the_two_alone_traces_merged_in_time():
    t = bench.traces(_args())
    assert sorted(t["mixed"], key=lambda x: (x["class"], x["timestamp_s"])) == t["alone_A"] + t["alone_B"]
    times = [x["timestamp_s"] for x in t["mixed"]]
    assert times == sorted(times)
    assert {(x["input_tokens"], x["output_tokens"]) for x in t["alone_A"]} == {(2048, 8)}


def test_each_class_arrives_at_its_own_rate():
    t = bench.traces(_args(duration_s=2000.0))
    assert len(t["alone_A"]) / 2000.0 == pytest.approx(0.5, rel=0.1)
    assert len(t["alone_B"]) / 2000.0 == pytest.approx(1.0, rel=0.1)


def test_the_user_s_overrides_win_over_the_script_s_own():
    got = bench.overrides_for(Path("t.jsonl"), Path("job"), 2048, ["baseline.kind=device_idle", "backend=vllm"])
    assert "baseline.kind=loaded_idle" not in got and "baseline.kind=device_idle" in got
    assert {"load.trace=t.jsonl", "input_len=2048", "measure.prefill=true", "output_len=null"} <= set(got)


def _job(adjusted_j, classes_j, rule="work", old_j=None):
    row = {"status": "ok", "gpu_energy_adjusted_j": adjusted_j, "energy_attribution": rule,
           "attribution_weights_source": "prefill_pass", "attribution_j_per_prompt_token": 0.001,
           "attribution_j_per_output_token": 0.05, "energy_null_reason": None, "attribution_null_reason": None}
    req = pd.DataFrame({"request_class": [c for c, _ in classes_j], "energy_adjusted_j": [j for _, j in classes_j],
                        "energy_output_tokens_rule_adjusted_j": old_j or [j for _, j in classes_j],
                        "error": [None] * len(classes_j)})
    return row, req


def test_the_recovery_ratio_divides_the_mixed_mean_by_the_alone_mean_under_each_rule():
    jobs = {"alone_A": _job(20.0, [("A", 10.0), ("A", 10.0)]), "alone_B": _job(12.0, [("B", 6.0), ("B", 6.0)]),
            "mixed": _job(32.0, [("A", 9.5), ("B", 6.5), ("A", 10.5), ("B", 5.5)],
                          old_j=[2.0, 14.0, 2.0, 14.0])}
    lines, numbers = bench.report(jobs)
    a = numbers["classes"]["A"]
    assert a["work"]["recovery"] == pytest.approx(1.0) and a["work"]["within_target"]
    assert a["output_tokens"]["recovery"] == pytest.approx(0.2) and not a["output_tokens"]["within_target"]
    assert numbers["mixed_over_alone_sum"] == pytest.approx(1.0)


def test_a_mixed_job_that_fell_back_reports_no_work_rule_figure():
    jobs = {"alone_A": _job(20.0, [("A", 10.0)]), "alone_B": _job(12.0, [("B", 6.0)]),
            "mixed": _job(32.0, [("A", 2.0), ("B", 30.0)], rule="output_tokens")}
    _, numbers = bench.report(jobs)
    assert numbers["classes"]["A"]["work"]["recovery"] is None


def test_without_energy_it_says_so_and_still_counts_the_classes():
    row, req = _job(None, [("A", None), ("B", None), ("B", None)])
    row["energy_null_reason"] = "device=cpu: no GPU is used"
    lines, numbers = bench.report({"alone_A": (row, req), "alone_B": (row, req), "mixed": (row, req)})
    assert numbers["null_reason"] == "device=cpu: no GPU is used"
    assert "no recovery ratio: energy is null (device=cpu: no GPU is used); the pipeline ran end to end" in lines
    assert "  class B: 2 requests in the mixed job" in lines
