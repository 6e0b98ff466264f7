"""server.api=chat against a stand-in server: each request is one user message posted to
/v1/chat/completions, its length and exact-length keys as completions sends them, its timing, token
checks and errors by the same rules; a job records the API in its row."""

from __future__ import annotations

import pandas as pd
import pytest

from llem.support.errors import WorkloadError
from llem.workload.records import Request
from tests.stand_in_server import StandIn
from tests.test_serving_client import _client, _requests

pytest.importorskip("aiohttp")

CHAT = ["server.api=chat"]


def test_a_chat_request_is_one_user_message_with_the_prompt_as_text(compose_cfg):
    with StandIn() as server:
        engine, config = _client(compose_cfg, server.url, [*CHAT, "output_len=4"], prompt="token_ids")
        out = engine.generate(_requests(config, 2), None, lambda n: None)
    body = server.bodies[-1]
    assert server.paths == ["/v1/chat/completions"] * 2  # no prompt-kind probe: chat takes text only
    assert body["messages"] == [{"role": "user", "content": "t5 t6 t7"}] and "prompt" not in body
    assert engine.prompt == "text" and all(r.error is None and r.output_tokens == 4 for r in out)


def test_a_chat_request_asks_its_length_by_both_names_with_the_engine_keys(compose_cfg):
    with StandIn() as server:
        engine, config = _client(compose_cfg, server.url, [*CHAT, "output_len=4"])
        engine.generate(_requests(config, 1), None, lambda n: None)
    body = server.bodies[-1]
    assert body["max_completion_tokens"] == body["max_tokens"] == 4
    assert body["ignore_eos"] is True and body["min_tokens"] == 4 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True} and body["temperature"] == 0


def test_chat_tokens_are_timed_from_the_due_time_and_the_role_chunk_is_none(compose_cfg):
    with StandIn(delay_s=0.02) as server:
        engine, config = _client(compose_cfg, server.url, [*CHAT, "output_len=5", "load.request_rate=40"])
        out = engine.generate(_requests(config, 6), None, lambda n: None)
    assert all(len(r.token_times_s) == 5 and r.first_token_s > r.start_s >= r.arrival_s for r in out)
    assert all(r.token_times_s[0] - r.start_s >= 0.02 for r in out)  # the first token came after one delay


def test_a_malformed_chat_chunk_fails_its_request_only(compose_cfg):
    completions_chunk = b'data: {"choices": [{"index": 0, "text": " t1"}]}'
    with StandIn(bad="event", bad_every=2, bad_line=completions_chunk) as server:
        engine, config = _client(compose_cfg, server.url, [*CHAT, "output_len=4", "load.max_concurrency=1"])
        out = engine.generate(_requests(config, 4), None, lambda n: None)
    assert ["delta is missing" in (r.error or "") for r in out] == [True, False, True, False]
    assert [r.output_tokens for r in out] == [1, 4, 1, 4]


def test_a_chat_reply_that_ignored_stream_true_is_the_request_error(compose_cfg):
    with StandIn(bad="json_body") as server:
        engine, config = _client(compose_cfg, server.url, [*CHAT, "output_len=4"])
        out = engine.generate(_requests(config, 2), None, lambda n: None)
    assert all("not a server-sent event" in r.error for r in out)


def test_a_wrong_chat_token_count_is_noted_and_flagged(compose_cfg):
    from llem.measure.load_metrics import load_part
    from llem.measure.metrics import request_rows

    with StandIn(bad="count", count=24) as server:
        engine, config = _client(compose_cfg, server.url, [*CHAT, "output_len=8"])
        out = engine.generate(_requests(config, 2), None, lambda n: None)
    rows = request_rows(out, min(r.start_s for r in out))
    _, flags = load_part(out, rows, 1.0, config)
    assert [r.output_tokens for r in out] == [8, 8] and all("reported 24 tokens" in r.token_count_note for r in out)
    assert [f.code for f in flags] == ["token_count_mismatch"]


def test_a_chat_http_error_is_the_request_error(compose_cfg):
    with StandIn(mode="fail500") as server:
        engine, config = _client(compose_cfg, server.url, [*CHAT, "output_len=4"])
        out = engine.generate(_requests(config, 3), None, lambda n: None)
    assert all(r.error == "HTTP 500: internal error: out of blocks" for r in out)


def test_chat_requests_carry_the_api_key(compose_cfg, monkeypatch):
    monkeypatch.setenv("LLEM_TEST_CHAT_KEY", "sk-chat-0123456789")
    with StandIn() as server:
        engine, config = _client(compose_cfg, server.url, [*CHAT, "output_len=2",
                                                           "server.api_key_env=LLEM_TEST_CHAT_KEY"])
        engine.generate(_requests(config, 1), None, lambda n: None)
    assert server.authorization[-1] == "Bearer sk-chat-0123456789"


def test_chat_with_token_ids_and_no_text_is_refused_naming_the_api(compose_cfg):
    with StandIn() as server:
        engine, config = _client(compose_cfg, server.url, [*CHAT, "output_len=2"], id_words=False)
        with pytest.raises(WorkloadError, match="server.api=chat takes text prompts only"):
            engine.generate(_requests(config, 1), None, lambda n: None)
    assert server.bodies == []  # refused before any request was sent


def test_chat_sends_a_text_prompt_as_it_is(compose_cfg):
    with StandIn() as server:
        engine, config = _client(compose_cfg, server.url, [*CHAT, "output_len=2"], id_words=False)
        engine.generate([Request(0, [5, 6], "Why is the sky blue?")], 2, lambda n: None)
    assert server.bodies[-1]["messages"][0]["content"] == "Why is the sky blue?"


def test_a_chat_job_records_the_api_in_its_row(compose_cfg, tmp_path):
    from tests.conftest import run_in_process

    with StandIn() as server:
        row = run_in_process(compose_cfg, ["server=external", f"server.url={server.url}", *CHAT,
                                           "dataset=builtin"], tmp_path / "job")
    assert row["status"] == "ok", row["error"]
    assert row["server_api"] == "chat" and row["server_prompt"] == "text" and row["cfg.server.api"] == "chat"
    assert row["output_tokens_total"] == row["output_tokens_expected"] == 4 * 8 and row["num_requests_failed"] == 0
    assert set(server.paths) == {"/v1/chat/completions"}
    requests = pd.read_parquet(tmp_path / "job" / "requests.parquet")
    assert (requests["server_input_tokens"] == 3).all()  # the stand-in's usage.prompt_tokens


def test_a_completions_job_records_its_api(compose_cfg, tmp_path):
    from tests.conftest import run_in_process

    with StandIn() as server:
        row = run_in_process(compose_cfg, ["server=external", f"server.url={server.url}"], tmp_path / "job")
    assert row["status"] == "ok" and row["server_api"] == "completions"
    assert set(server.paths) == {"/v1/completions"}
