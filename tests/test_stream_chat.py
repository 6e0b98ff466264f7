"""The reading of a streamed chat reply: a chunk's text is its ``delta`` (content, or a reasoning model's
reasoning), the role-only first chunk is no token, and the rules of the completions stream hold: malformed
chunks are the request's error, the tokens credited are verified against the server's count."""

from __future__ import annotations

import json

import pytest

from llem.serving.stream import ChatStreamParser

ROLE = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}'


def _chunk(delta=None, reason=None, usage=None) -> bytes:
    event = {"choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": reason}]}
    if usage is not None:
        event["usage"] = usage
    return b"data: " + json.dumps(event).encode()


def _good(count=3, words=(" t1", " t2", " t3")):
    return [ROLE, *[_chunk({"content": w}) for w in words], _chunk({}, "length"),
            _chunk(usage={"completion_tokens": count}), b"data: [DONE]"]


def _feed(lines, id_words=True, asked=3, times=None):
    parser = ChatStreamParser(id_words)
    for i, raw in enumerate(lines):
        if parser.line(raw, float(times[i] if times else i)):
            break
    return parser, parser.result(asked)


def test_a_well_formed_chat_stream_credits_its_tokens():
    _, out = _feed(_good())
    assert (out.output_tokens, out.error, out.token_note, out.timing_note) == (3, None, None, None)


def test_the_role_chunk_is_no_token():
    parser, _ = _feed(_good(), times=[1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0])
    assert parser.times == [2.0, 3.0, 4.0]  # the first token is the first content, not the role


def test_a_stream_ended_by_finish_reason_and_usage_without_done_is_finished():
    """transformers serve ends a chat stream with its usage chunk, no [DONE]."""
    _, out = _feed(_good()[:-1])
    assert (out.output_tokens, out.error) == (3, None)


def test_reasoning_deltas_are_generated_tokens():
    lines = [ROLE, _chunk({"reasoning_content": " t1 t2"}), _chunk({"content": " t3"}), _chunk({}, "length"),
             _chunk(usage={"completion_tokens": 3})]
    _, out = _feed(lines)
    assert (out.output_tokens, out.error, out.token_note) == (3, None, None)


def test_a_reasoning_delta_sent_under_both_names_counts_once():
    lines = [ROLE, _chunk({"reasoning_content": " t1", "reasoning": " t1"}), _chunk({"content": " t2 t3"}),
             _chunk({}, "length"), _chunk(usage={"completion_tokens": 3})]
    _, out = _feed(lines)
    assert (out.output_tokens, out.token_note) == (3, None)


MALFORMED = {
    "a completions choice (no delta)": b'data: {"choices": [{"index": 0, "text": " t2"}]}',
    "delta a string": b'data: {"choices": [{"index": 0, "delta": "t2"}]}',
    "content a number": b'data: {"choices": [{"index": 0, "delta": {"content": 7}}]}',
    "reasoning a list": b'data: {"choices": [{"index": 0, "delta": {"reasoning_content": ["t2"]}}]}',
    "finish_reason a number": b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": 1}]}',
    "no choices": b'data: {"id": "x", "object": "chat.completion.chunk"}',
    "a plain JSON chat completion": b'{"choices": [{"message": {"content": " t1"}, "finish_reason": "length"}]}',
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_chat_chunk_is_the_request_error(raw):
    good = _good()
    _, out = _feed([ROLE, good[1], raw, *good[2:]])
    assert out.error and ("malformed event" in out.error or "not a server-sent event" in out.error), out.error
    assert out.output_tokens == 1  # the token streamed before it still counts


def test_a_chat_server_count_that_disagrees_is_noted():
    _, out = _feed(_good(count=9))
    assert out.output_tokens == 3 and "the server reported 9 tokens" in out.token_note


def test_the_servers_prompt_count_is_kept_as_sent():
    lines = _good()
    lines[-2] = _chunk(usage={"completion_tokens": 3, "prompt_tokens": 41})
    _, out = _feed(lines)
    assert out.server_input_tokens == 41


@pytest.mark.parametrize("usage", [{"completion_tokens": 3}, {"completion_tokens": 3, "prompt_tokens": -1}])
def test_no_or_a_negative_prompt_count_is_none(usage):
    lines = _good()
    lines[-2] = _chunk(usage=usage)
    _, out = _feed(lines)
    assert out.server_input_tokens is None
