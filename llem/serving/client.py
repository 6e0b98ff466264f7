"""The HTTP client that stands in for an engine when a server serves the requests (server=launch/external).

It is an :class:`Engine` to the measurement protocol: ``load`` finds the served model and how it takes
prompts, ``generate`` sends every request to the API ``server.api`` names (``POST /v1/completions`` or
``/v1/chat/completions``: :mod:`llem.serving.apis`) at its due time (aiohttp, streamed server-sent events,
``stream_options.include_usage``) with at most ``load.max_concurrency`` in
flight. Per request: its due time (``arrival_s``: t0 + its arrival offset; in a closed loop, when its slot
freed), when it was sent (``start_s``) and the client's lateness (sent − when it could have been), the time
the bytes of every streamed chunk that carried text were read, the end, and the tokens credited: the server's
``usage.completion_tokens`` checked against the length asked for and the tokens streamed, never more than
asked (:mod:`llem.serving.stream` reads the stream and says how). An HTTP error, a malformed reply, a
dropped stream, a redirect (never followed: the server measured is server.url) or a wait past
``server.connect_timeout_s``, ``server.chunk_timeout_s``, ``server.request_timeout_s`` or the end of
``measure.max_window_s`` is the request's ``error``: recorded, never dropped, the other requests measured.

Prompts go as token ids where the API and the server take them (``server.prompt=auto`` asks once with a
one-token completions request; chat takes text only), as text otherwise: the request's own text, or its ids
as id-words when the server's tokenizer is llem's (random weights; :mod:`llem.backends._served_model`, whose
chat template is the message's text alone), so the work is the same token for token.
Chunks are not always tokens: with the id-word tokenizer each word of a chunk is one token; elsewhere
each chunk is stamped once and the request's ``timing_note`` says so when their count differs from
the tokens credited.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

from llem.backends._served_model import id_words
from llem.backends.base import Engine, EngineInfo, installed
from llem.config import BackendConfig, Config
from llem.config.load import load_mode
from llem.serving.apis import APIS
from llem.serving.schedule import Slots, sleep_until
from llem.serving.server import MODELS_MAX_BYTES, Endpoint, alive, auth_headers, last_lines, model_names
from llem.serving.stream import MAX_LINE_BYTES
from llem.support.errors import EngineUnavailable, ServerError, WorkloadError
from llem.support.install import install_hint
from llem.workload.records import Progress, Request, RequestResult, now

log = logging.getLogger(__name__)

ERROR_BODY_CHARS = 300
DISCOVER_TIMEOUT_S = 30.0  # the model list and the prompt-kind probe, each
JSON = {"Content-Type": "application/json"}
NOT_ABOUT_THE_PROMPT = (401, 403, 404, 405, 407, 408, 429)  # refusals of the request, not of its prompt's kind
WINDOW = "measure.max_window_s"  # the watch's key when the window's end comes before a request's own bounds


class ServerEngine(Engine):
    """An OpenAI-compatible server measured over HTTP."""

    name = "server"
    config_class = BackendConfig
    no_arrivals = None
    no_natural_lengths = None
    no_conversations = None  # a turn is sent when the reply before it ended

    def __init__(self, config: Config, device: str, endpoint: Endpoint, extras) -> None:
        super().__init__(config, device)
        self.endpoint = endpoint
        self.extras = extras  # output_len -> the JSON keys that make the server generate exactly that many
        self.model_name: Optional[str] = endpoint.model_name
        self.api = APIS[config.server.api]
        self.prompt = endpoint.prompt if self.api.takes_token_ids else "text"
        self.probe_note: Optional[str] = None  # server.prompt=auto: the probe's refusal that made prompts text
        self._url = f"{endpoint.url}{self.api.path}"

    def max_in_flight(self):
        """What the server runs at once: a launched one's batch or known default; an external one's is unknown."""
        return self.endpoint.max_in_flight, self.endpoint.max_in_flight_null_reason

    def check(self) -> None:
        if not installed("aiohttp"):
            raise EngineUnavailable(f"server mode needs aiohttp: {install_hint('serving')}")

    def load(self) -> None:
        asyncio.run(self._discover())

    async def _discover(self) -> None:
        import aiohttp

        url = self.endpoint.url
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DISCOVER_TIMEOUT_S),
                                             headers=auth_headers(self.config.server)) as session:
                if self.model_name is None:
                    async with session.get(f"{url}/v1/models") as resp:
                        body = await _head(resp, MODELS_MAX_BYTES)
                    try:
                        names = model_names(json.loads(body or b"null"), url)
                    except ValueError:
                        raise ServerError(f"server.url={url!r} answered GET /v1/models with something that is not "
                                          f"JSON (HTTP {resp.status}): is it an OpenAI-compatible server?") from None
                    if not names:
                        raise ServerError(f"server.url={url!r}: /v1/models lists no model: set server.model_name")
                    self.model_name = names[0]
                if self.prompt == "auto":  # one token, asked as token ids: a refusal of them means text only
                    body = {"model": self.model_name, "prompt": [1, 2, 3], "max_tokens": 1}
                    async with session.post(f"{url}/v1/completions", json=body, allow_redirects=False) as resp:
                        shown = _shown(await _head(resp, ERROR_BODY_CHARS))
                    self._probed(resp.status, shown)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ServerError(f"server.url={url!r} failed while llem asked for its model and how it takes prompts "
                              f"({DISCOVER_TIMEOUT_S:g} s per question): {type(exc).__name__}: {exc}") from None
        log.info("server %s serves %s; prompts sent as %s", url, self.model_name, self.prompt)

    def _probed(self, status: int, shown: str) -> None:
        """How prompts go, from the probe's answer: 200 takes token ids; an answer that says nothing of the
        prompt (no content, a redirect, an authentication or rate refusal) is the server's failure, named
        with its status, never read as "text only"; any other error means text only, and says so."""
        if status == 200:
            self.prompt = "token_ids"
            return
        if status < 200 or 200 < status < 400 or status in NOT_ABOUT_THE_PROMPT:
            raise ServerError(f"server.url={self.endpoint.url!r} answered the one-token request llem sends to learn "
                              f"how it takes prompts (POST /v1/completions) with HTTP {status}: {shown!r} "
                              "(redirects are not followed; check server.url and server.api_key_env)")
        self.prompt, self.probe_note = "text", f"HTTP {status}: {shown}"

    def _prompt(self, request: Request) -> Any:
        """The prompt as the API takes it: token ids, text, or (chat, a conversation's turn) its messages."""
        if self.prompt == "token_ids":
            return list(request.token_ids)
        if request.messages and self.api.takes_messages:
            return [{"role": m.role, "content": self._text(m.token_ids, m.text)} for m in request.messages]
        return self._text(request.token_ids, request.text)

    def _text(self, token_ids: Sequence[int], text: Optional[str]) -> str:
        if self.endpoint.id_words:
            return id_words(token_ids)
        if text is None:
            if not self.api.takes_token_ids:
                why = f"server.api={self.api.name} takes text prompts only"
            elif self.probe_note:
                why = f"this server takes text prompts only (it answered a prompt of token ids with {self.probe_note})"
            else:
                why = "prompts are sent as text here (server.prompt=text, or the launched server takes text only)"
            raise WorkloadError(f"{why} and the dataset gives token ids without text: use a text dataset "
                                "(dataset=builtin, file, hf …), server.api=completions with a server that takes "
                                "token ids, or a launched server on random weights (its id-word tokenizer)")
        return text

    def generate(self, requests: Sequence[Request], output_len: Optional[int], progress: Progress
                 ) -> List[RequestResult]:
        results = asyncio.run(self._send_all(list(requests), output_len, progress))
        if not alive(self.endpoint.pid):
            raise ServerError(f"the server (pid {self.endpoint.pid}) died while it was measured; its last log "
                              f"lines:\n{last_lines(self.endpoint.log_path)}")
        return results

    async def _send_all(self, requests: List[Request], output_len: Optional[int], progress: Progress
                        ) -> List[RequestResult]:
        """Every request is sent at its due time by a task of its own that sleeps until then: its timer wakes it
        and it sends in the same turn of the event loop (a single scheduler creating each task at its due time
        costs one more turn, behind the chunks of every open stream: benchmarks/client_load.py). Bodies are
        encoded before the first is due. Requests due past ``measure.max_window_s``, or still waiting for a
        slot then, are never sent; requests still in flight then end as errors."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.config.server.request_timeout_s)
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, force_close=False, keepalive_timeout=60)
        bodies = {r.request_id: json.dumps(self._body(r, self._length(r, output_len))).encode() for r in requests}
        async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                         headers=auth_headers(self.config.server)) as session:
            t0 = now()
            end = t0 + self.config.measure.max_window_s
            slots = Slots(self.config.load.max_concurrency, t0)
            closed = load_mode(self.config.load) == "closed"
            ended = {r.request_id: asyncio.get_running_loop().create_future() for r in requests}

            async def one(request: Request) -> RequestResult:
                result = None
                try:
                    result = await turn(request)
                    return result
                finally:
                    ended[request.request_id].set_result(result)

            async def turn(request: Request) -> RequestResult:
                due = t0 + (request.arrival_s or 0.0)
                if request.after in ended:  # a conversation's turn: due think_s after the turn before it ended
                    before = await _outcome(ended[request.after], end)
                    if before is None or before.error is not None:
                        return self._not_followed(request, output_len, before)
                    due = before.end_s + request.think_s
                if due < end:
                    await sleep_until(due)
                freed = await slots.take(end) if due < end else None
                if freed is None:
                    return self._unsent(request, output_len, due, end)
                ready = max(due, freed)
                return await self._one(session, request, bodies[request.request_id], ready if closed else due,
                                       ready, end, slots, output_len, progress)

            return list(await asyncio.gather(*(one(r) for r in requests)))

    def _not_followed(self, request: Request, output_len: Optional[int], before: Optional[RequestResult]
                      ) -> RequestResult:
        """A turn whose conversation broke off: the turn before it failed, or had not ended within the window."""
        why = (f"failed ({before.error[:ERROR_BODY_CHARS]})" if before is not None else
               f"had not ended within measure.max_window_s={self.config.measure.max_window_s:g} s")
        t = now()
        return RequestResult(request_id=request.request_id, input_tokens=request.input_tokens, output_tokens=0,
                             start_s=t, end_s=t, arrival_s=t, output_len_requested=self._length(request, output_len),
                             error=(f"never sent: turn {request.turn_index} of conversation "
                                    f"{request.conversation_index} follows request {request.after}, which {why}"))

    def _length(self, request: Request, output_len: Optional[int]) -> int:
        return output_len if output_len is not None else (request.output_len or self.config.output_len_max)

    def _unsent(self, request: Request, output_len: Optional[int], due: float, end: float) -> RequestResult:
        return RequestResult(request_id=request.request_id, input_tokens=request.input_tokens, output_tokens=0,
                             start_s=end, end_s=end, arrival_s=min(due, end),
                             output_len_requested=self._length(request, output_len),
                             error=(f"never sent: not due or no free slot within measure.max_window_s="
                                    f"{self.config.measure.max_window_s:g} s"))

    def _body(self, request: Request, length: int) -> Dict[str, Any]:
        d = self.config.decoding
        body: Dict[str, Any] = {"model": self.model_name, **self.api.keys(self._prompt(request), length),
                                "stream": True, "stream_options": {"include_usage": True},
                                "temperature": d.temperature}
        if not d.greedy:  # as the in-process engines do: greedy decoding sends no seed, top_p or top_k
            body.update(top_p=d.top_p, seed=self.config.seed)
            if d.top_k:
                body["top_k"] = d.top_k
        body.update(self.extras(length))
        body.update(self.config.server.extra_body)
        return body

    async def _one(self, session, request: Request, body: bytes, due: float, ready: float, end: float,
                   slots: Slots, output_len: Optional[int], progress: Progress) -> RequestResult:
        """Send one request; ``due`` is when it arrived (TTFT and e2e count from it), ``ready`` when the client
        could send it (its due time, or later when it waited for a slot): sent − ready is the client's lateness."""
        try:
            result = await self._stream(session, request, body, self._length(request, output_len), end)
        finally:
            slots.give_back()
            progress(1)
        result.arrival_s, result.lateness_s = due, result.start_s - ready
        return result

    async def _stream(self, session, request: Request, body: bytes, length: int, end: float) -> RequestResult:
        """Post one request and read its stream: bytes as they come (``iter_any``), split into lines here, each
        line stamped with the time its bytes were read. Its waits end at the sooner of its own bounds and the
        window's (``end``)."""
        import aiohttp

        bounds = self.config.server
        parser = self.api.parser(self.endpoint.id_words)
        error = None
        start = now()
        watch = _Watch(start + bounds.request_timeout_s, end)
        watch.arm("connect_timeout_s", start + bounds.connect_timeout_s)
        try:
            async with session.post(self._url, data=body, headers=JSON, allow_redirects=False) as resp:
                if 300 <= resp.status < 400:  # another server's answer would be measured as this one's
                    error = (f"HTTP {resp.status}: a redirect, not followed (set server.url to where the server "
                             "answers)")
                elif resp.status != 200:
                    error = f"HTTP {resp.status}: {_shown(await _head(resp, ERROR_BODY_CHARS))}"
                else:
                    last = now()  # the wait for the first event that carries text counts from the headers
                    watch.arm("chunk_timeout_s", last + bounds.chunk_timeout_s)
                    rest, finished = bytearray(), False
                    async for data in resp.content.iter_any():
                        t = now()
                        rest += data
                        if len(rest) > MAX_LINE_BYTES and b"\n" not in rest:
                            parser.overlong(len(rest))
                            break
                        if b"\n" not in data:
                            continue
                        *lines, tail = bytes(rest).split(b"\n")
                        rest = bytearray(tail)
                        for raw in lines:
                            if parser.line(raw, t):
                                finished = True
                                break
                        if finished:
                            break
                        if parser.last_token_s is not None and parser.last_token_s != last:
                            last = parser.last_token_s
                            watch.arm("chunk_timeout_s", last + bounds.chunk_timeout_s)
                    if not finished and rest and parser.error is None:
                        parser.line(bytes(rest), now())
        except asyncio.CancelledError:
            if watch.expired is None:
                raise
            watch.forget()
            if watch.expired == WINDOW:
                error = (f"still in flight after {len(parser.times)} tokens when measure.max_window_s="
                         f"{self.config.measure.max_window_s:g} s ran out")
            else:
                error = f"TimeoutError: past server.{watch.expired}={getattr(bounds, watch.expired):g} s"
        except aiohttp.ClientPayloadError as exc:
            error = f"the stream was cut off after {len(parser.times)} tokens ({exc})"
        except asyncio.TimeoutError:
            error = f"TimeoutError: past server.request_timeout_s={bounds.request_timeout_s:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finally:
            watch.disarm()
        outcome = parser.result(length)
        times = parser.times
        return RequestResult(request_id=request.request_id, input_tokens=request.input_tokens,
                             output_tokens=outcome.output_tokens, start_s=start,
                             end_s=times[-1] if times else now(), first_token_s=times[0] if times else None,
                             token_times_s=times or None, timing_note=outcome.timing_note,
                             output_len_requested=length, error=error or outcome.error,
                             token_count_note=outcome.token_note, server_input_tokens=outcome.server_input_tokens,
                             prompt_tokens_cached=outcome.cached_tokens)

    def prefix_cache(self) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
        return None, "the engine runs in the server: its prefix cache is server_prefix_cache_hit_pct (server.metrics)"

    def info(self) -> EngineInfo:
        return EngineInfo()


async def _outcome(ended: asyncio.Future, end: float) -> Optional[RequestResult]:
    """The result of the turn ``ended`` stands for, once it ends; None if it has not by ``end`` (the window's)."""
    try:
        return await asyncio.wait_for(asyncio.shield(ended), timeout=max(0.0, end - now()))
    except asyncio.TimeoutError:
        return None


async def _head(resp, limit: int) -> bytes:
    """At most ``limit`` bytes of a reply's body: an error body or a model list is read no further, so a server
    whose body never ends costs neither the memory nor, past the request's own bounds, the time."""
    data = b""
    while len(data) < limit:
        more = await resp.content.read(limit - len(data))
        if not more:
            break
        data += more
    return data


def _shown(body: bytes) -> str:
    return " ".join(body.decode("utf-8", "replace").split())


class _Watch:
    """The bound a request's current wait runs under, as one timer: when it runs out the request's task is
    cancelled and ``expired`` names the key. Arming only records the bound; the timer, set for the earliest
    bound armed, checks when it fires whether the bound has moved on and then sleeps again, so a stream's
    chunks cost no timer each. A bound past the request's deadline is that deadline's:
    server.request_timeout_s, or measure.max_window_s when the window ends first."""

    def __init__(self, deadline: float, window_end: float) -> None:
        self.deadline, self.deadline_key = deadline, "request_timeout_s"
        if window_end < deadline:
            self.deadline, self.deadline_key = window_end, WINDOW
        self.task = asyncio.current_task()
        self.loop = asyncio.get_running_loop()
        self.expired: Optional[str] = None
        self.key, self.at = self.deadline_key, self.deadline
        self._timer = None
        self._timer_at = float("inf")

    def arm(self, key: str, at: float) -> None:
        if at >= self.deadline:
            key, at = self.deadline_key, self.deadline
        self.key, self.at = key, at
        if at < self._timer_at:  # sooner than the timer set: set it sooner; later: it will look again
            self._set(at)

    def _set(self, at: float) -> None:
        self.disarm()
        self._timer_at = at
        self._timer = self.loop.call_later(max(at - now(), 0.0), self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        if now() < self.at:
            self._set(self.at)
            return
        self.expired = self.key
        self.task.cancel()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, float("inf")

    def forget(self) -> None:
        """The cancellation was this watch's own: the task is not being cancelled (Python >= 3.11 counts)."""
        if hasattr(self.task, "uncancel"):
            self.task.uncancel()
