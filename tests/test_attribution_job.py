"""Energy per request in a whole job on CPU with a GPU replayed from the real H100 trace (tests/fake_nvml):
the work rule's weights measured by the job's own prefill pass, kept as the calibration of its engine build,
model and card, and read back by a job without a prefill pass."""

from __future__ import annotations

import pandas as pd
import pytest

from llem.config import to_config
from llem.energy.nvml import GpuReader
from llem.measure import experiment
from tests.fake_nvml import FakeNVML
from tests.replay import looped
from tests.test_experiment_energy import WallClock

pytest.importorskip("transformers")


def _job(compose_cfg, trace, job_dir, cache_dir, monkeypatch, prefill: bool):
    # the trace 50× faster than recorded: the tiny model's ~10 ms prefill pass spans several counter updates
    nvml = FakeNVML(looped(trace, "heavy", 6000.0), WallClock(0.0, speed=50.0), 1)
    nvml.nvmlInit()
    gpus = [GpuReader(nvml, 0)]
    monkeypatch.setattr(experiment, "metered_gpus", lambda cfg, cls, device: (gpus, [], None))
    config = to_config(compose_cfg(["device=cpu", "dataset.num_requests=8", "batch=4", "input_len=32",
                                    "output_len=32", f"measure.prefill={str(prefill).lower()}", "baseline.kind=none",
                                    "baseline.loaded_idle_s=0", "baseline.loaded_settle_s=0",
                                    f"cache_dir={cache_dir}"]))
    job_dir.mkdir(parents=True)
    row = experiment.Experiment(config, job_dir, "cpu", experiment.DeviceIdle()).run()
    return row, pd.read_parquet(job_dir / "requests.parquet")


@pytest.mark.slow
def test_a_prefill_pass_gives_the_weights_and_a_later_job_reads_them_back(compose_cfg, trace, tmp_path,
                                                                           monkeypatch):
    cache = tmp_path / "cache"
    row, req = _job(compose_cfg, trace, tmp_path / "one", cache, monkeypatch, prefill=True)
    assert row["status"] == "ok", row["error"]
    assert (row["energy_attribution"], row["attribution_weights_source"]) == ("work", "prefill_pass")
    assert req["energy_adjusted_j"].sum() == pytest.approx(row["gpu_energy_adjusted_j"], rel=1e-6)
    assert req["energy_output_tokens_rule_adjusted_j"].sum() == pytest.approx(row["gpu_energy_adjusted_j"], rel=1e-6)
    assert (req["prompt_tokens_charged"] == req["input_tokens"]).all()  # the PyTorch engine caches no prefix
    assert len(list((cache / "energy_attribution").glob("*.json"))) == 1

    again, _ = _job(compose_cfg, trace, tmp_path / "two", cache, monkeypatch, prefill=False)
    assert (again["energy_attribution"], again["attribution_weights_source"]) == ("work", "calibration")
    assert again["attribution_j_per_output_token"] == row["attribution_j_per_output_token"]
