"""The reading of a streamed completions reply: every malformed form is the request's error (never an
exception), and the tokens credited are what can be verified, never negative or more than asked, with a
note whenever the server's count disagrees."""

from __future__ import annotations

import json

import pytest

from llem.serving.stream import StreamParser


def _event(text=None, reason=None, usage=None) -> bytes:
    event = {"choices": [] if text is None else [{"index": 0, "text": text, "finish_reason": reason}]}
    if usage is not None:
        event["usage"] = usage
    return b"data: " + json.dumps(event).encode()


def _feed(lines, id_words=True, asked=3):
    parser = StreamParser(id_words)
    for i, raw in enumerate(lines):
        if parser.line(raw, float(i)):
            break
    return parser.result(asked)


def _good(count=3, id_words=True, words=(" t1", " t2", " t3")):
    return [*[_event(w) for w in words], _event("", "length"), _event(usage={"completion_tokens": count}),
            b"data: [DONE]"]


def test_a_well_formed_stream_credits_its_tokens():
    out = _feed(_good())
    assert (out.output_tokens, out.error, out.token_note, out.timing_note) == (3, None, None, None)


def test_each_token_is_stamped_when_its_line_arrived():
    parser = StreamParser(id_words=True)
    for raw, t in zip(_good(words=(" t1 t2", " t3")), (1.0, 2.0, 3.0, 3.0, 3.0)):
        parser.line(raw, t)
    assert parser.times == [1.0, 1.0, 2.0] and parser.last_token_s == 2.0


MALFORMED = {
    "data null": b"data: null",
    "data a list": b"data: [1,2]",
    "data a number": b"data: 7",
    "data not json": b"data: {not json",
    "data not utf-8": b"data: \xff\xfe",
    "data nested too deep": b"data: " + b"[" * 100_000,
    "choices a string": b'data: {"choices": "abc"}',
    "no choices": b'data: {"id": "x", "object": "text_completion"}',
    "a choice not an object": b'data: {"choices": [3]}',
    "text not a string": b'data: {"choices": [{"text": 5}]}',
    "text null": b'data: {"choices": [{"text": null}]}',
    "finish_reason a number": b'data: {"choices": [{"text": "", "finish_reason": 1}]}',
    "usage a list": b'data: {"choices": [], "usage": [1]}',
    "completion_tokens a string": b'data: {"choices": [], "usage": {"completion_tokens": "lots"}}',
    "completion_tokens a float": b'data: {"choices": [], "usage": {"completion_tokens": 3.5}}',
    "completion_tokens a bool": b'data: {"choices": [], "usage": {"completion_tokens": true}}',
    "prompt_tokens a dict": b'data: {"choices": [], "usage": {"prompt_tokens": {}, "completion_tokens": 3}}',
    "a plain JSON body": b'{"choices": [{"text": " t1 t2 t3", "finish_reason": "length"}]}',
    "an HTML body": b"<html><body>502 Bad Gateway</body></html>",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_line_is_the_request_error(raw):
    out = _feed([_event(" t1"), raw, *_good()[1:]])
    assert out.error and ("malformed event" in out.error or "not a server-sent event" in out.error), out.error
    assert out.output_tokens == 1  # the token streamed before it still counts


def test_an_error_event_is_the_request_error():
    out = _feed([_event(" t1"), b'data: {"error": {"message": "out of blocks"}}'])
    assert out.error.startswith("server error in the stream") and "out of blocks" in out.error


def test_keep_alive_and_comment_lines_carry_nothing():
    lines = _good()
    out = _feed([b": ping", b"", b"event: completion", b"id: 4", lines[0], b":", *lines[1:]])
    assert (out.output_tokens, out.error) == (3, None)


def test_a_stream_of_keep_alives_alone_is_not_finished():
    out = _feed([b": keep-alive"] * 5)
    assert out.error == "the stream ended before the server finished the request" and out.output_tokens == 0


def test_a_stream_cut_before_it_finished_is_an_error():
    assert _feed(_good()[:2]).error == "the stream ended before the server finished the request"


def test_a_finished_stream_without_a_token_is_an_error():
    assert _feed([_event("", "length"), b"data: [DONE]"]).error == "the stream ended with no token"


def test_a_usage_event_without_choices_key_is_malformed():
    out = _feed([_event(" t1"), b'data: {"usage": {"completion_tokens": 1}}'])
    assert "no 'choices' list" in out.error


COUNTS = {  # (server's count, words streamed, id_words) -> (tokens credited, note expected)
    "inflated count, id-words": (24, 3, True, 3, True),
    "short count, id-words": (2, 3, True, 3, True),
    "negative count, id-words": (-5, 3, True, 3, True),
    "more words than asked": (3, 5, True, 3, True),
    "fewer words than asked, no count": (None, 2, True, 2, True),
    "inflated count, chunks": (24, 3, False, 3, True),
    "count below the chunks": (2, 3, False, 3, True),
    "negative count, chunks": (-5, 3, False, 3, True),
    "count over few chunks, within asked": (3, 2, False, 3, False),
    "no count, chunks": (None, 3, False, 3, False),
}


@pytest.mark.parametrize("reported, streamed, id_words, credited, noted", COUNTS.values(), ids=COUNTS.keys())
def test_the_tokens_credited_are_verified_and_never_more_than_asked(reported, streamed, id_words, credited, noted):
    lines = [_event(f" t{i}") for i in range(streamed)] + [_event("", "length")]
    if reported is not None:
        lines.append(_event(usage={"completion_tokens": reported}))
    out = _feed([*lines, b"data: [DONE]"], id_words=id_words, asked=3)
    assert out.error is None and out.output_tokens == credited
    assert bool(out.token_note) == noted, out.token_note
    if noted:
        assert out.token_note.endswith(f"{credited} counted")


def test_chunks_that_are_not_tokens_say_so_in_the_timing_note():
    lines = [_event(" a b"), _event(" c"), _event("", "length"), _event(usage={"completion_tokens": 3})]
    out = _feed([*lines, b"data: [DONE]"], id_words=False)
    assert out.output_tokens == 3 and "2 chunks for 3 tokens" in out.timing_note


def test_the_prompt_tokens_and_cached_tokens_the_server_sent_are_kept():
    usage = {"prompt_tokens": 120, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 96}}
    lines = [*[_event(w) for w in (" t1", " t2", " t3")], _event("", "length"), _event(usage=usage), b"data: [DONE]"]
    out = _feed(lines)
    assert (out.error, out.server_input_tokens, out.cached_tokens) == (None, 120, 96)


@pytest.mark.parametrize("details", [None, "many", {"cached_tokens": "all"}, {"cached_tokens": -1}])
def test_cached_tokens_not_sent_as_a_count_are_read_as_not_sent(details):
    usage = {"prompt_tokens": 120, "completion_tokens": 3, "prompt_tokens_details": details}
    lines = [*[_event(w) for w in (" t1", " t2", " t3")], _event("", "length"), _event(usage=usage), b"data: [DONE]"]
    out = _feed(lines)
    assert (out.error, out.cached_tokens) == (None, None)
