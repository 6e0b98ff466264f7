"""Doubt flags where aggregated numbers are read: the printed table, summary.parquet, the plots and
--slo, on result files written by llem's own writer (numbers chosen, no model run), older files
without flags included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llem.config import config_hash, to_config
from llem.results import REQUESTS, RESULTS, write_result, write_rows
from llem.results.row import EnergySummary, Notes, Outcome, Throughput, assemble
from llem.results.tables import RequestRow

# batch → (J/token, tok/s, TTFT ms, flags of each of its 3 repeats)
CONFIGS = {
    1: (3.0, 40.0, 30.0, [[], [], []]),
    8: (0.5, 300.0, 60.0, [[], [], []]),
    16: (0.4, 350.0, 100.0, [["short_window"], [], []]),
    32: (0.2, 900.0, 400.0, [["batch_not_filled", "short_window"]] * 3),
}
MESSAGE = {"short_window": "measure window lasted 0.75 s, under 10 energy-counter updates",
           "batch_not_filled": "12 requests for an engine that holds 32 sequences at once"}


def _write_job(job: Path, cfg, j_per_token: float, tok_s: float, ttft_ms: float, flags) -> None:
    job.mkdir(parents=True)
    row = assemble({
        Outcome: Outcome(status="ok", config_hash=config_hash(cfg)),
        Throughput: Throughput(output_tok_per_s=tok_s, window_s=2.0),
        EnergySummary: EnergySummary(j_per_output_token=j_per_token),
        Notes: Notes(flags=list(flags), warnings=[MESSAGE[f] for f in flags] + ["engine returned 8 tokens"]),
    }, config=cfg)
    write_result(row, job)
    write_rows([RequestRow(request_id=i, ttft_ms=ttft_ms * (0.5 + i / 10)) for i in range(6)], job / REQUESTS,
               RequestRow)


def _as_older_llem(job: Path, flags_as_text: bool) -> None:
    """The job as llem wrote it before doubt flags: no flags/warnings columns, or (another version)
    every null column typed as text, the list columns included."""
    table = pq.read_table(job / RESULTS).drop_columns(["schema_version"])
    if flags_as_text:
        for name in ("flags", "warnings"):
            i = table.column_names.index(name)
            table = table.set_column(i, name, pa.nulls(1, pa.string()))
    else:
        table = table.drop_columns(["flags", "warnings"])
    pq.write_table(table, job / RESULTS)


@pytest.fixture(scope="module")
def sweep(compose_cfg, tmp_path_factory):
    root = tmp_path_factory.mktemp("flags") / "sweep"
    root.mkdir()
    (root / "multirun.yaml").write_text("{}\n")
    for batch, (j, tok_s, ttft, per_repeat) in CONFIGS.items():
        for repeat, flags in enumerate(per_repeat):
            cfg = to_config(compose_cfg([f"batch={batch}", f"repeat={repeat}"]))
            _write_job(root / f"b{batch}-r{repeat}", cfg, j, tok_s, ttft, flags)
    cfg = to_config(compose_cfg(["batch=1", "repeat=3"]))
    for name, as_text in (("b1-older", False), ("b1-older-text", True)):
        _write_job(root / name, cfg, 3.0, 40.0, 30.0, ["short_window"])  # flags the older llem could not write
        _as_older_llem(root / name, as_text)
    return root


def _aggregate(sweep: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "llem.aggregate", str(sweep), *args], cwd=sweep.parent,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def out(sweep):
    text = _aggregate(sweep, "-o", "out", "--slo", "ttft_ms_p99<=500", "--warnings", "--plots")
    return sweep.parent / "out", text


def _table_lines(text: str):
    """batch → its line of the printed table."""
    lines = text.split("mean [bootstrap")[0].splitlines()
    header = next(i for i, line in enumerate(lines) if "batch" in line and "J/token" in line)
    found = {}
    for line in lines[header + 1:]:
        for batch in CONFIGS:
            if f" {batch} " in f" {line} " and line.split()[0] in ("!", "pytorch"):
                found.setdefault(batch, line)
    return lines[header], found


def test_table_marks_flagged_configurations_with_their_codes(out):
    _, text = out
    header, lines = _table_lines(text)
    assert header.rstrip().endswith("flags") and set(lines) == set(CONFIGS)
    assert lines[32].lstrip().startswith("!") and lines[32].rstrip().endswith("batch_not_filled, short_window")
    assert lines[16].lstrip().startswith("!") and lines[16].rstrip().endswith("short_window 1/3")
    for batch in (1, 8):  # the older jobs of batch 1 carry no flags: counted unflagged
        assert not lines[batch].lstrip().startswith("!") and "short_window" not in lines[batch]
    legend = text.split("pooled over all request rows")[1].splitlines()[1:3]
    assert legend[0].startswith("! doubt-flagged") and "--warnings" in legend[1] and "runs.parquet" in legend[1]


def test_warnings_lists_each_flagged_job_with_its_messages(out):
    _, text = out
    assert "! " in text and "b32-r0 [batch_not_filled, short_window]" in text
    part = text.split("b16-r0 [short_window]")[1].splitlines()
    assert MESSAGE["short_window"] in part[1] and "engine returned 8 tokens" in part[2]
    assert "b16-r1 [" not in text and "b8-r0 [" not in text  # unflagged jobs are not listed


def test_summary_parquet_carries_typed_flag_columns(out):
    root, _ = out
    table = pq.read_table(root / "summary.parquet")
    assert table.schema.field("flags").type == pa.list_(pa.string())
    assert table.schema.field("flagged").type == pa.bool_()
    assert table.schema.field("n_flagged").type == pa.int64()
    summary = table.to_pandas().set_index("cfg.batch")
    assert summary["flagged"].to_dict() == {1: False, 8: False, 16: True, 32: True}
    assert list(summary.loc[32, "flags"]) == ["batch_not_filled", "short_window"]
    assert list(summary.loc[1, "flags"]) == []
    assert json.loads(summary.loc[16, "flag_repeats"]) == {"short_window": 1}
    assert json.loads(summary.loc[32, "flag_repeats"]) == {"batch_not_filled": 3, "short_window": 3}
    assert summary.loc[32, "n_flagged"] == 3 and summary.loc[1, "n_ok"] == 5  # the two older jobs counted


def test_runs_of_older_llem_aggregate_as_unflagged(out):
    root, text = out
    runs = pd.read_parquet(root / "runs.parquet").set_index("job_id")
    assert runs.loc["b1-older", "status"] == "ok" and runs.loc["b1-older-text", "status"] == "ok"
    assert runs.loc["b1-older", "flags"] is None and runs.loc["b1-older-text", "flags"] is None
    assert list(runs.loc["b32-r1", "flags"]) == ["batch_not_filled", "short_window"]
    assert "combined as text" not in text  # the text-typed null flags of the older file were conformed


def test_slo_recommends_the_lowest_and_spells_out_its_flags(out):
    _, text = out
    advice = text.split("== recommendation")[1]
    recommended = advice.split("recommended: ")[1].splitlines()
    assert "batch=32" in recommended[0] and "0.2 J/token" in recommended[0]
    assert recommended[1].strip().startswith("! doubt-flagged: 3 of 3 repeats")
    assert recommended[2].strip().startswith("batch_not_filled (3 of 3 repeats): fewer requests")
    assert recommended[3].strip().startswith("short_window (3 of 3 repeats): the measured window")
    assert "best unflagged meeting every bound (+150 % J/token): backend.name=pytorch batch=8:" in recommended[4]
    front = [line for line in advice.splitlines() if line.startswith("    0.4 J/token")]
    assert front and front[0].endswith("! flags: short_window 1/3")


def test_slo_unflagged_recommends_only_unflagged(sweep):
    text = _aggregate(sweep, "-o", "out-unflagged", "--slo", "ttft_ms_p99<=500", "--unflagged")
    advice = text.split("== recommendation")[1]
    assert "unflagged configurations) ==" in advice.splitlines()[0]
    recommended = advice.split("recommended: ")[1].splitlines()
    assert "batch=8" in recommended[0] and "0.5 J/token" in recommended[0]
    assert "a doubt-flagged configuration reads lower (-60 % J/token), not recommended:" in recommended[1]
    assert "batch=32: 0.2 J/token" in recommended[2] and "3 of 3 repeats" in recommended[3]
    assert "batch_not_filled (3 of 3 repeats)" in recommended[4]


def test_unflagged_without_slo_is_refused(sweep):
    proc = subprocess.run([sys.executable, "-m", "llem.aggregate", str(sweep), "--unflagged"], cwd=sweep.parent,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--unflagged" in proc.stderr and "--slo" in proc.stderr


def test_plots_draw_flagged_configurations_hollow(out):
    root, _ = out
    for name in ("j_per_token_vs_batch.png", "throughput_vs_j_per_token.png", "latency_distributions.png"):
        assert (root / "figures" / name).read_bytes()[:4] == b"\x89PNG"
