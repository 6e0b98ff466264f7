"""The reading of one streamed reply (``/v1/completions`` or ``/v1/chat/completions``), fed one
server-sent-event line at a time with the time it arrived, and the token count the request is credited with.

The two APIs differ only in where a chunk's text is: a completions choice's ``text``
(:class:`StreamParser`), a chat choice's ``delta.content``, or its ``delta.reasoning_content`` /
``delta.reasoning`` (a reasoning model's generated tokens, counted as output) (:class:`ChatStreamParser`);
a chat stream's first chunk carries only ``delta.role`` and no token. Everything else is the same.

A reply is *malformed* — that request's ``error``, never the job's — when a line is not a server-sent-event
line (a JSON or HTML body from a server that ignored ``stream=true``), an event's data is not JSON or not
a JSON object, an event has no ``choices`` list, a choice is not an object, a choice's text is not a
string (a chat choice: no ``delta`` object), a ``finish_reason`` is not a string, ``usage`` is not an
object or one of its token counts is not an integer, a line runs past ``MAX_LINE_BYTES`` without a line
break, or the stream ends before the server finished (no ``[DONE]``, ``finish_reason`` or ``usage``).
Keep-alive and comment lines are skipped; they carry no token.

The token count (:meth:`StreamParser.result`): what can be verified, never more than was asked. With the
id-word tokenizer each streamed word is one token, so the streamed tokens are counted. Elsewhere a chunk
holds one token or more, so the server's ``usage.completion_tokens`` is taken when it is an integer
between the chunks streamed and the length asked; otherwise the chunks are counted. Either way the count
is capped at the length asked. A server count that is negative, disagrees with the tokens streamed, or
differs from the length asked is the request's ``token_note`` (and the job's ``token_count_mismatch`` flag).

``usage.prompt_tokens`` and ``usage.prompt_tokens_details.cached_tokens`` (vLLM's prefix-cache hits, where
sent) are kept as the server said them, for the energy a request's prompt is charged; they never make a
reply malformed (a ``prompt_tokens_details`` or ``cached_tokens`` that is not an object or an integer is
read as not sent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from llem.backends._served_model import words_in

SHOWN_CHARS = 120  # how much of an offending line an error quotes
MAX_LINE_BYTES = 16 << 20  # a line longer than this without a line break is malformed, read no further
SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:")
USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
REASONING_KEYS = ("reasoning_content", "reasoning")  # servers name a reasoning delta either way (some send both)


class Malformed(ValueError):
    """A reply that is not a well-formed OpenAI stream of its API."""


@dataclass
class Outcome:
    """What one streamed reply gave: the tokens credited, its error and notes."""

    output_tokens: int
    error: Optional[str]
    timing_note: Optional[str]
    token_note: Optional[str]
    server_input_tokens: Optional[int] = None  # the server's usage.prompt_tokens, where it sent one (>= 0)
    cached_tokens: Optional[int] = None  # usage.prompt_tokens_details.cached_tokens, as the server sent it


def _shown(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    return " ".join(text.split())[:SHOWN_CHARS]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class StreamParser:
    """One request's ``/v1/completions`` stream: :meth:`line` per line received, then :meth:`result`."""

    def __init__(self, id_words: bool) -> None:
        self.id_words = id_words
        self.times: List[float] = []  # one per token (id-words) or per chunk that carried text
        self.chunks = 0
        self.reported: Optional[int] = None  # the server's usage.completion_tokens, as sent
        self.prompt_reported: Optional[int] = None  # its usage.prompt_tokens (chat: the chat template's included)
        self.cached_tokens: Optional[int] = None  # its usage.prompt_tokens_details.cached_tokens, where sent
        self.error: Optional[str] = None
        self.done = False  # the server said it finished: [DONE], a finish_reason or usage
        self.last_token_s: Optional[float] = None  # when the last event that carried text arrived

    def line(self, raw: bytes, t: float) -> bool:
        """Read one line that arrived at ``t``; True when the stream is over ([DONE] or an error)."""
        line = raw.strip()
        if not line or line.startswith(b":"):
            return False  # a blank separator, a comment or keep-alive
        if not line.startswith(SSE_FIELDS):
            return self._fail(f"not a server-sent event (did the server ignore stream=true?): {_shown(line)!r}")
        if not line.startswith(b"data:"):
            return False  # event:, id:, retry: carry nothing the client uses
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return True
        try:
            self._event(json.loads(data), t)
        except Malformed as exc:
            return self._fail(f"malformed event: {exc}: {_shown(data)!r}")
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
            return self._fail(f"malformed event (not JSON): {_shown(data)!r}")
        return self.error is not None

    def overlong(self, size: int) -> bool:
        """A line grew past ``MAX_LINE_BYTES`` without a line break: the reply is malformed, read no further."""
        return self._fail(f"malformed reply: {size} bytes without a line break (a line may hold at most "
                          f"{MAX_LINE_BYTES} bytes)")

    def _fail(self, message: str) -> bool:
        self.error = message
        return True

    def _event(self, event: Any, t: float) -> None:
        if not isinstance(event, dict):
            raise Malformed(f"a JSON {type(event).__name__}, not an object")
        if event.get("error"):
            self.error = f"server error in the stream: {_shown(json.dumps(event['error']).encode())}"
            return
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise Malformed("no 'choices' list")
        usage = event.get("usage")
        if usage is not None:
            self._usage(usage)
        for choice in choices:
            if not isinstance(choice, dict):
                raise Malformed(f"a choice is a {type(choice).__name__}, not an object")
            text = self._text(choice)
            reason = choice.get("finish_reason")
            if reason is not None and not isinstance(reason, str):
                raise Malformed(f"finish_reason is a {type(reason).__name__}, not a string")
            if text:
                self.chunks += 1
                self.last_token_s = t
                self.times.extend([t] * (words_in(text) if self.id_words else 1))
            self.done = self.done or bool(reason)

    def _text(self, choice: Dict[str, Any]) -> str:
        """The text a completions choice carries (its ``text``)."""
        text = choice.get("text", "")
        if not isinstance(text, str):
            raise Malformed(f"a choice's text is a {type(text).__name__}, not a string")
        return text

    def _usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            raise Malformed(f"usage is a {type(usage).__name__}, not an object")
        for key in USAGE_COUNTS:
            value = usage.get(key)
            if value is not None and not _is_count(value):
                raise Malformed(f"usage.{key} is a {type(value).__name__}, not an integer")
        if usage.get("completion_tokens") is not None:
            self.reported = usage["completion_tokens"]
        if usage.get("prompt_tokens") is not None and usage["prompt_tokens"] >= 0:
            self.prompt_reported = usage["prompt_tokens"]
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        if _is_count(cached) and cached >= 0:
            self.cached_tokens = cached
        self.done = True

    def result(self, asked: int) -> Outcome:
        """The tokens credited (see the module's rule), the error and the notes, once the stream is over."""
        error = self.error
        if error is None and not self.done:
            error = "the stream ended before the server finished the request"
        elif error is None and not self.times:
            error = "the stream ended with no token"
        streamed = len(self.times)
        unit = "tokens" if self.id_words else "chunks"
        counted, note = self._count(asked, streamed, unit, error is None)
        timing = None
        if self.times and not self.id_words and counted != self.chunks:
            timing = f"the server streamed {self.chunks} chunks for {counted} tokens: token times are chunk arrivals"
        return Outcome(output_tokens=counted, error=error, timing_note=timing, token_note=note,
                       server_input_tokens=self.prompt_reported, cached_tokens=self.cached_tokens)

    def _count(self, asked: int, streamed: int, unit: str, finished: bool):
        counted = min(streamed, asked)
        reported = self.reported
        problems = []
        if streamed > asked:
            problems.append(f"{streamed} {unit} streamed for {asked} asked")
        if reported is not None and reported < 0:
            problems.append(f"the server reported completion_tokens={reported}")
        elif reported is not None:
            if self.id_words and reported != streamed:
                problems.append(f"the server reported {reported} tokens, {streamed} were streamed")
            elif not self.id_words and reported < streamed:
                problems.append(f"the server reported {reported} tokens for {streamed} chunks streamed")
            elif not self.id_words and reported <= asked:
                counted = reported
            if finished and reported != asked:
                problems.append(f"the server reported {reported} tokens for {asked} asked")
        elif finished and self.id_words and streamed != asked:
            problems.append(f"{streamed} tokens streamed for {asked} asked")
        if not problems:
            return counted, None
        return counted, "; ".join(problems) + f": {counted} counted"


class ChatStreamParser(StreamParser):
    """One request's ``/v1/chat/completions`` stream: the text of a choice is in its ``delta``."""

    def _text(self, choice: Dict[str, Any]) -> str:
        """``delta.content`` and the reasoning delta (the first of ``REASONING_KEYS`` present: a server that
        sends both sends the same text twice); ``delta.role`` and ``delta.tool_calls`` carry no text."""
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            raise Malformed(f"a chat choice's delta is {'missing' if delta is None else type(delta).__name__}, "
                            "not an object (is this a completions reply?)")
        parts = []
        for key in ("content", *REASONING_KEYS):
            value = delta.get(key)
            if value is not None and not isinstance(value, str):
                raise Malformed(f"delta.{key} is a {type(value).__name__}, not a string")
            parts.append(value or "")
        content, *reasoning = parts
        return content + next((r for r in reasoning if r), "")
