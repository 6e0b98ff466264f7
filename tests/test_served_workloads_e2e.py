"""The workloads against a real launched server: one llem sweep, one ``transformers serve`` on the tiny random
model (llem writes its checkpoint and id-word tokenizer), every job a different workload — chat and completions
over the same work, conversations, shared prefixes, a replayed trace, and ``server.metrics=on`` against a server
without ``/metrics``. Each test reads its own job; the sweep itself shows the server shared by all of them.

Each case is a config group option (``+case=NAME``, written by the fixture under ``hydra.searchpath``), so the
sweep runs them one after another as a user's heterogeneous sweep would."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from tests.conftest import run_llem, served_cache
from tests.test_serving_e2e import SERVE_CACHE, _servers_left
from tests.test_shared_prefix_e2e import KEYS as PREFIX_KEYS
from tests.test_shared_prefix_e2e import _check_groups, _rebuilt
from tests.test_trace_e2e import KEYS as TRACE_KEYS
from tests.test_trace_e2e import _check_replayed, write_trace

pytestmark = pytest.mark.slow
pytest.importorskip("aiohttp")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

JOB = ["dataset.num_requests=8", "input_len=32", "output_len=16", "load.request_rate=8"]
THINK_S = 0.3
CONVERSATIONS = ["dataset=conversations", "dataset.num_conversations=2", "dataset.turns=3", "dataset.user_len=8",
                 "dataset.assistant_len=6", f"dataset.think_time_s={THINK_S}", "input_len=64", "output_len=8",
                 "server.api=chat"]
CASES = {
    "chat": [*JOB, "server.api=chat"],
    "completions": [*JOB, "server.api=completions"],
    "conversations": CONVERSATIONS,
    "shared_prefix": PREFIX_KEYS,
    "trace": ["load.trace=TRACE", *TRACE_KEYS],
    "metrics_on": ["server.metrics='on'", "dataset.num_requests=4", "output_len=8"],
}
GROUPS = ("dataset",)  # the config groups a case chooses; every other override is a value


def _case_yaml(overrides, trace) -> str:
    """A ``# @package _global_`` config holding ``overrides``: group choices in its defaults list."""
    groups = [o for o in overrides if o.split("=")[0] in GROUPS]
    values = [o.replace("TRACE", str(trace)) for o in overrides if o not in groups]
    body = OmegaConf.to_yaml(OmegaConf.from_dotlist(values))
    defaults = "".join(f"  - override /{g.split('=')[0]}: {g.split('=')[1]}\n" for g in groups)
    return "# @package _global_\n" + (f"defaults:\n{defaults}" if defaults else "") + body


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(the sweep's process, {case: job dir}, the cache dir its server's checkpoint lived in)."""
    root = tmp_path_factory.mktemp("served")
    trace = write_trace(root / "two_class.jsonl")
    (root / "cases" / "case").mkdir(parents=True)
    for name, overrides in CASES.items():
        (root / "cases" / "case" / f"{name}.yaml").write_text(_case_yaml(overrides, trace))
    cache = served_cache(root, tmp_path_factory)
    proc = run_llem(["-m", "server=launch", SERVE_CACHE, f"hydra.searchpath=[file://{root / 'cases'}]",
                     f"+case={','.join(CASES)}", "baseline.settle_s=0", "baseline.loaded_idle_s=0",
                     "hydra.sweep.dir=sweep", f"cache_dir={cache}"], cwd=root, timeout=900)
    jobs = {name: next((root / "sweep").glob(f"*case={name},*")) for name in CASES}
    return proc, jobs, cache


def _results(job):
    return pd.read_parquet(job / "results.parquet").iloc[0], pd.read_parquet(job / "requests.parquet")


def test_one_server_serves_every_workload_of_the_sweep(served):
    proc, jobs, cache = served
    rows = pd.concat([pd.read_parquet(job / "results.parquet") for job in jobs.values()])
    assert proc.returncode == 1  # the metrics_on job failed (its own test), the others measured
    measured = rows[rows["status"] == "ok"]
    assert len(measured) == len(CASES) - 1 and measured["config_hash"].nunique() == len(measured)
    assert rows["num_server_starts"].max() == 1 and measured["server_reused"].sum() == len(measured) - 1
    assert not _servers_left(cache)


def test_launch_chat_generates_every_token_asked(served):
    r, req = _results(served[1]["chat"])
    assert r["status"] == "ok" and r["server_api"] == "chat" and r["server_prompt"] == "text"
    assert len(req) == 8 and req["error"].isna().all() and (req["output_tokens"] == 16).all()
    assert req["token_count_note"].isna().all()  # the server streamed and reported every token asked
    assert (req["server_input_tokens"] == req["input_tokens"]).all()  # the id-word chat template adds no token
    assert (req["ttft_ms"] > 0).all() and r["output_tokens_total"] == r["output_tokens_expected"] == 8 * 16
    assert "POST /v1/chat/completions" in (served[1]["chat"] / "server.log").read_text()


def test_one_launched_server_serves_both_apis_with_the_same_work(served):
    rows = {api: _results(served[1][api]) for api in ("completions", "chat")}
    assert {api: r["server_api"] for api, (r, _) in rows.items()} == {"completions": "completions", "chat": "chat"}
    assert all(r["status"] == "ok" for r, _ in rows.values())
    assert rows["completions"][0]["workload_sha256"] == rows["chat"][0]["workload_sha256"]
    for _, req in rows.values():
        assert (req["server_input_tokens"] == 32).all() and (req["output_tokens"] == 16).all()


def test_every_turn_is_measured(served):
    row, req = _results(served[1]["conversations"])
    assert row["status"] == "ok" and len(req) == 6 and req["error"].isna().all()
    assert sorted(zip(req["conversation_index"], req["turn_index"])) == [(c, t) for c in range(2) for t in range(3)]


def test_turns_are_sent_in_order_each_think_time_after_the_previous_reply_ended(served):
    _, req = _results(served[1]["conversations"])
    for _, turns in req.sort_values("turn_index").groupby("conversation_index"):
        ended = (turns["arrival_offset_s"] + turns["e2e_ms"] / 1000).to_numpy()
        due, sent = turns["arrival_offset_s"].to_numpy(), turns["start_offset_s"].to_numpy()
        assert due[1:] == pytest.approx(ended[:-1] + THINK_S, abs=1e-6)
        assert (sent[1:] >= ended[:-1] + THINK_S).all()


def test_the_prompt_grows_turn_by_turn_by_the_recorded_reply_and_the_new_message(served):
    _, req = _results(served[1]["conversations"])
    for _, turns in req.sort_values("turn_index").groupby("conversation_index"):
        assert turns["server_input_tokens"].tolist() == [8, 22, 36]  # the id-word chat template adds no token
        assert turns["prefix_reusable_tokens"].tolist() == [0, 14, 28]


def test_a_shared_prefix_job_against_a_launched_server(served, compose_cfg):
    r, req = _check_groups(served[1]["shared_prefix"], _rebuilt(compose_cfg, PREFIX_KEYS))
    assert r["server_prompt"] == "text" and req["token_count_note"].isna().all()  # its tokenizer read our ids back
    assert "server_prefix_cache_hit_pct" in r["engine_prefix_cache_null_reason"]


def test_a_trace_replayed_against_a_launched_server(served):
    r, req = _check_replayed(served[1]["trace"])
    sent = (req["start_offset_s"] - req["arrival_offset_s"]).to_numpy() * 1000.0
    assert sent == pytest.approx(req["lateness_ms"].to_numpy(), abs=1e-6)  # sent when due, but for its lateness
    assert np.max(sent) < 100.0 and r["server_mode"] == "launch"


def test_transformers_serve_has_no_metrics_null_under_auto(served):
    auto, _ = _results(served[1]["completions"])  # server.metrics=auto, the default
    assert auto["status"] == "ok", (auto["error"], served[0].stderr[-2000:])
    assert pd.isna(auto["num_server_running_mean"]) and pd.isna(auto["server_generated_tokens"])
    assert "has no Prometheus metrics llem reads" in auto["server_metrics_null_reason"]
    assert "(HTTP 404)" in auto["server_metrics_null_reason"]


def test_transformers_serve_fails_the_check_under_metrics_on(served):
    on = pd.read_parquet(served[1]["metrics_on"] / "results.parquet").iloc[0]
    assert on["status"] == "failed" and on["error_stage"] == "check" and "server.metrics=on" in on["error"]
    assert "(HTTP 404)" in on["error"]
