"""The server client on a conversation's turns, against the stand-in server: a turn is sent only after the turn
before it ended, due think time later (TTFT counts from then); a failed turn's later turns are errors that say
why; chat gets the history as alternating messages."""

from __future__ import annotations

import pytest

from llem import workload
from llem.config import to_config
from llem.serving.client import ServerEngine
from llem.serving.server import Endpoint
from llem.workload.arrivals import shape
from tests.stand_in_server import StandIn

pytest.importorskip("aiohttp")

CONV = ["dataset=conversations", "dataset.num_conversations=2", "dataset.turns=3", "dataset.user_len=3",
        "dataset.assistant_len=2", "output_len=4"]


def _run(compose_cfg, server, *overrides):
    config = to_config(compose_cfg(["server=external", f"server.url={server.url}", *CONV, *overrides]))
    engine = ServerEngine(config, "cpu", Endpoint(url=server.url, mode="external", prompt="auto", id_words=True),
                          lambda n: {"ignore_eos": True, "min_tokens": n})
    engine.load()
    reqs = workload.build(config).requests
    shape(reqs, config)
    return reqs, engine.generate(reqs, None, lambda n: None)


def test_a_turn_is_due_think_time_after_the_turn_before_it_ended(compose_cfg):
    with StandIn(delay_s=0.02) as server:
        reqs, out = _run(compose_cfg, server, "dataset.think_time_s=0.2")
    assert all(r.error is None for r in out)
    for req, res in zip(reqs, out):
        if req.after is not None:
            before = out[req.after]
            assert res.arrival_s == pytest.approx(before.end_s + 0.2, abs=1e-9)  # its due time
            assert res.start_s >= before.end_s + 0.2 and 0 <= res.lateness_s < 0.05


def test_conversations_run_side_by_side(compose_cfg):
    with StandIn(delay_s=0.02) as server:
        _, out = _run(compose_cfg, server, "dataset.think_time_s=0.05")
    assert out[0].arrival_s == out[3].arrival_s  # a burst: every conversation starts at once
    assert server.most_in_flight == 2


def test_a_failed_turn_leaves_its_later_turns_unsent_with_the_reason(compose_cfg):
    with StandIn(mode="fail500") as server:
        reqs, out = _run(compose_cfg, server, "dataset.think_time_s=0")
    assert len([b for b in server.bodies if b["max_tokens"] > 1]) == 2  # the first turns only (not the probe)
    assert out[0].error.startswith("HTTP 500")
    assert out[1].error.startswith("never sent: turn 1 of conversation 0 follows request 0, which failed (HTTP 500")
    assert out[2].error.startswith("never sent: turn 2 of conversation 0 follows request 1, which failed (never sent")
    assert all(r.output_tokens == 0 for r in out)


def test_chat_gets_the_history_as_alternating_messages_the_new_user_message_last(compose_cfg):
    with StandIn() as server:
        reqs, _ = _run(compose_cfg, server, "server.api=chat", "dataset.think_time_s=0")
    last = max(server.bodies, key=lambda b: len(b["messages"]))["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
    third = next(r for r in reqs if r.turn_index == 2)
    assert " ".join(m["content"] for m in last) == " ".join(f"t{i}" for i in third.token_ids)


def test_completions_get_the_history_joined_as_one_prompt(compose_cfg):
    with StandIn() as server:
        reqs, _ = _run(compose_cfg, server, "dataset.think_time_s=0")
    prompts = sorted((b["prompt"] for b in server.bodies if b.get("max_tokens", 0) > 1), key=len)
    assert [len(p) for p in prompts] == sorted(r.input_tokens for r in reqs) == [3, 3, 8, 8, 13, 13]
