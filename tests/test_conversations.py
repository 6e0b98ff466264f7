"""dataset=conversations: one request per user turn, its prompt the history (earlier user messages and the
recorded replies) then the new message; later turns follow earlier ones; bad input is refused before load."""

from __future__ import annotations

import json

import pytest

from llem import workload
from llem.config import to_config
from llem.measure.warmup import at_once
from llem.support.errors import ConfigError
from llem.workload.arrivals import shape
from llem.workload.conversations import check_config as check_conversations

SERVER = ["server=external", "server.url=http://127.0.0.1:9"]
BASE = [*SERVER, "dataset=conversations", "seed=3"]
SMALL = ["dataset.num_conversations=2", "dataset.turns=3", "dataset.user_len=4", "dataset.assistant_len=5"]


def _config(compose_cfg, *overrides):
    return to_config(compose_cfg([*BASE, *overrides]))


def _requests(compose_cfg, *overrides):
    return workload.build(_config(compose_cfg, *overrides)).requests


def test_each_turns_prompt_is_the_history_then_the_new_user_message(compose_cfg):
    reqs = _requests(compose_cfg, *SMALL)
    assert [(r.conversation_index, r.turn_index) for r in reqs] == [(c, t) for c in range(2) for t in range(3)]
    for before, after in zip(reqs, reqs[1:]):
        if after.conversation_index == before.conversation_index:
            assert after.token_ids[:before.input_tokens] == before.token_ids  # the history is kept whole
            assert after.input_tokens == before.input_tokens + 5 + 4  # the recorded reply, then the new message
            assert [m.role for m in after.messages] == ["user", "assistant"] * after.turn_index + ["user"]


def test_the_history_is_what_a_prefix_cache_could_serve(compose_cfg):
    reqs = _requests(compose_cfg, *SMALL)
    assert [r.prefix_reusable_tokens for r in reqs] == [0, 9, 18] * 2


def test_a_later_turn_follows_the_turn_before_it_after_the_think_time(compose_cfg):
    reqs = _requests(compose_cfg, *SMALL, "dataset.think_time_s=0.25")
    assert [r.after for r in reqs] == [None, 0, 1, None, 3, 4]
    assert [r.think_s for r in reqs] == [0.0, 0.25, 0.25] * 2


def test_only_first_turns_get_arrival_times(compose_cfg):
    config = _config(compose_cfg, *SMALL, "load.request_rate=10")
    reqs = workload.build(config).requests
    shape(reqs, config)
    assert reqs[0].arrival_s == 0.0 and reqs[3].arrival_s > 0
    assert all(r.arrival_s is None for r in reqs if r.turn_index > 0)


def test_each_turn_asks_for_its_recorded_replys_length_or_the_jobs_output_len(compose_cfg):
    assert {r.output_len for r in _requests(compose_cfg, *SMALL, "output_len=null")} == {5}
    assert {r.output_len for r in _requests(compose_cfg, *SMALL, "output_len=7")} == {None}


def test_the_same_seed_gives_the_same_prompts(compose_cfg):
    first, again = (workload.build(_config(compose_cfg, *SMALL)) for _ in range(2))
    other = workload.build(to_config(compose_cfg([*BASE[:-1], "seed=4", *SMALL])))
    assert first.counts().workload_sha256 == again.counts().workload_sha256 != other.counts().workload_sha256


def test_a_warm_up_request_follows_no_turn():
    from llem.workload.records import Request

    assert at_once(Request(1, [4], after=0, think_s=1.0, arrival_s=None)).after is None


def _write(tmp_path, items, suffix=".jsonl"):
    path = tmp_path / f"conv{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(items))
    else:
        path.write_text("".join(json.dumps(x) + "\n" for x in items))
    return path


def _turns(*pairs):
    return {"conversations": [{"from": who, "value": text} for who, text in pairs]}


def test_a_sharegpt_file_gives_one_request_per_human_turn_with_the_recorded_replies(compose_cfg, tmp_path):
    path = _write(tmp_path, [_turns(("human", "hi"), ("gpt", "hello there"), ("human", "and?")),
                             _turns(("human", "one"))], ".json")
    reqs = _requests(compose_cfg, f"dataset.path={path}", "model.tokenizer=bytes", "input_len=64", "output_len=null")
    assert [(r.conversation_index, r.turn_index) for r in reqs] == [(0, 0), (0, 1), (1, 0)]
    assert [m.text for m in reqs[1].messages] == ["hi", "hello there", "and?"]
    assert reqs[1].prefix_reusable_tokens == len("hi") + len("hello there")  # one byte a token
    assert reqs[0].output_len == len("hello there")  # natural lengths: the recorded reply's
    assert reqs[1].output_len is None  # no reply recorded: a natural length is drawn (arrivals.shape)


def test_a_turn_past_input_len_ends_its_conversation_and_is_counted(compose_cfg, tmp_path):
    path = _write(tmp_path, [_turns(("human", "a" * 10), ("gpt", "b" * 10), ("human", "c" * 10))])
    work = workload.build(_config(compose_cfg, f"dataset.path={path}", "model.tokenizer=bytes", "input_len=20"))
    assert len(work.requests) == 1 and work.counts().prompts_dropped_long == 1


@pytest.mark.parametrize("item, expected", [
    ({"conversations": []}, r"conv\.jsonl:1: field 'conversations' must be a non-empty list"),
    ({"turns": []}, r"conv\.jsonl:1: field 'conversations'"),
    (_turns(("gpt", "hello")), r"conversations\[0\]\.from='gpt': expected a user message \(a conversation starts"),
    (_turns(("human", "hi"), ("bard", "x")), r"conversations\[1\]\.from='bard' is not a known role: allowed"),
    (_turns(("human", "hi"), ("human", "again")), r"conversations\[1\]\.from='human': expected an assistant message"),
    ({"conversations": [{"from": "human", "value": 3}]}, r"conversations\[0\]\.value is int, not text"),
])
def test_a_bad_conversation_is_refused_before_load_naming_the_line_and_field(compose_cfg, tmp_path, item, expected):
    path = _write(tmp_path, [_turns(("human", "fine")), item])
    with pytest.raises(ConfigError, match=expected.replace("conv\\.jsonl:1", "conv\\.jsonl:2")):
        check_conversations(_config(compose_cfg, f"dataset.path={path}", "model.tokenizer=bytes"))


@pytest.mark.parametrize("override, key", [
    ("dataset.think_time_s=-1", "dataset.think_time_s=-1"),
    ("dataset.turns=0", "dataset.turns=0"),
    ("dataset.num_conversations=0", "dataset.num_conversations=0"),
    ("dataset.user_len=0", "dataset.user_len=0"),
    ("dataset.num_requests=4", "dataset.num_requests=4"),
    ("dataset.turns=20", "dataset.turns=20"),  # the last prompt would pass input_len
])
def test_impossible_settings_are_refused_naming_the_key(compose_cfg, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _config(compose_cfg, override)


def test_in_process_configs_pass_the_config_check(compose_cfg):
    assert to_config(compose_cfg(["dataset=conversations"])).server.mode == "none"  # the engine says if it can


def test_a_json_file_names_the_item_that_is_wrong(compose_cfg, tmp_path):
    path = _write(tmp_path, [_turns(("human", "fine")), _turns(("gpt", "no"))], ".json")
    with pytest.raises(ConfigError, match=r"conv\.json item 1: conversations\[0\]\.from='gpt'"):
        check_conversations(_config(compose_cfg, f"dataset.path={path}", "model.tokenizer=bytes"))


def test_a_file_that_is_neither_json_nor_jsonl_is_refused(compose_cfg, tmp_path):
    path = tmp_path / "conv.txt"
    path.write_text("hello\n")
    with pytest.raises(ConfigError, match=r"must be \.json \(a list\) or \.jsonl"):
        check_conversations(_config(compose_cfg, f"dataset.path={path}", "model.tokenizer=bytes"))


def test_synthetic_conversations_as_text_need_the_id_word_tokenizer(compose_cfg):
    from llem.config.validate import check_prompts

    config = to_config(compose_cfg([*BASE, "server.api=chat"]))
    with pytest.raises(ConfigError, match=r"dataset=conversations with dataset\.path=null is invalid with server\.api"):
        check_prompts(config)
