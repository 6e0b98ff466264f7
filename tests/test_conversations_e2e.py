"""dataset=conversations against real transformers serve (server=launch, server.api=chat) on the tiny random
model: each conversation's turns are sent in order, each think time after the previous reply ended, and the
prompts the server took grow turn by turn by the recorded reply and the new message."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import run_llem
from tests.test_serving_e2e import SERVE_CACHE, _servers_left

pytestmark = pytest.mark.slow
pytest.importorskip("aiohttp")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

THINK_S = 0.3
JOB = ["dataset=conversations", "dataset.num_conversations=2", "dataset.turns=3", "dataset.user_len=8",
       "dataset.assistant_len=6", f"dataset.think_time_s={THINK_S}", "input_len=64", "output_len=8",
       "hydra.run.dir=run"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("conversations")
    cache = tmp_path / "cache"
    run_llem(["server=launch", SERVE_CACHE, "server.api=chat", *JOB, f"cache_dir={cache}"], cwd=tmp_path,
             check=True, timeout=600)
    job = tmp_path / "run"
    assert not _servers_left(cache)
    return pd.read_parquet(job / "results.parquet").iloc[0], pd.read_parquet(job / "requests.parquet")


def test_every_turn_is_measured(measured):
    row, req = measured
    assert row["status"] == "ok" and len(req) == 6 and req["error"].isna().all()
    assert sorted(zip(req["conversation_index"], req["turn_index"])) == [(c, t) for c in range(2) for t in range(3)]


def test_turns_are_sent_in_order_each_think_time_after_the_previous_reply_ended(measured):
    _, req = measured
    for _, turns in req.sort_values("turn_index").groupby("conversation_index"):
        ended = (turns["arrival_offset_s"] + turns["e2e_ms"] / 1000).to_numpy()
        due, sent = turns["arrival_offset_s"].to_numpy(), turns["start_offset_s"].to_numpy()
        assert due[1:] == pytest.approx(ended[:-1] + THINK_S, abs=1e-6)
        assert (sent[1:] >= ended[:-1] + THINK_S).all()


def test_the_prompt_grows_turn_by_turn_by_the_recorded_reply_and_the_new_message(measured):
    _, req = measured
    for _, turns in req.sort_values("turn_index").groupby("conversation_index"):
        assert turns["server_input_tokens"].tolist() == [8, 22, 36]  # the id-word chat template adds no token
        assert turns["prefix_reusable_tokens"].tolist() == [0, 14, 28]
