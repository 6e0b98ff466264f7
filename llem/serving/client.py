"""The HTTP client that stands in for an engine when a server serves the requests (server=launch/external).

It is an :class:`Engine` to the measurement protocol: ``load`` finds the served model and how it takes
prompts, ``generate`` sends every request to ``POST /v1/completions`` at its due time (aiohttp,
streamed server-sent events, ``stream_options.include_usage``) with at most ``load.max_concurrency`` in
flight. Per request: its due time (``arrival_s``: t0 + its arrival offset; in a closed loop, when its slot
freed), when it was sent (``start_s``) and the client's lateness (sent − when it could have been), the time
the bytes of every streamed chunk that carried text were read, the end, and the server's ``usage``
(``completion_tokens`` checked against the length asked for). An HTTP error, a dropped stream, a
timeout or the end of ``measure.max_window_s`` is the request's ``error``: recorded, never dropped.

Prompts go as token ids where the server takes them (``server.prompt=auto`` asks once with a one-token
request), as text otherwise: the request's own text, or its ids as id-words when the server's tokenizer
is llem's (random weights; :mod:`llem.backends._served_model`), so the work is the same token for token.
Chunks are not always tokens: with the id-word tokenizer each word of a chunk is one token; elsewhere
each chunk is stamped once and the request's ``timing_note`` says so when their count differs from
the server's token count.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Dict, List, Optional, Sequence

from llem.backends._served_model import id_words, words_in
from llem.backends.base import Engine, EngineInfo, installed
from llem.config import BackendConfig, Config
from llem.errors import EngineUnavailable, ServerError, WorkloadError
from llem.load_metrics import load_mode
from llem.records import Progress, Request, RequestResult, now
from llem.serving.schedule import Slots, loop_time, sleep_until
from llem.serving.server import Endpoint, alive, last_lines

log = logging.getLogger(__name__)

ERROR_BODY_CHARS = 300
JSON = {"Content-Type": "application/json"}


class ServerEngine(Engine):
    """An OpenAI-compatible server measured over HTTP."""

    name = "server"
    config_class = BackendConfig
    no_arrivals = None
    no_natural_lengths = None

    def __init__(self, config: Config, device: str, endpoint: Endpoint, extras) -> None:
        super().__init__(config, device)
        self.endpoint = endpoint
        self.extras = extras  # output_len -> the JSON keys that make the server generate exactly that many
        self.model_name: Optional[str] = endpoint.model_name
        self.prompt = endpoint.prompt
        self._url = f"{endpoint.url}/v1/completions"

    def check(self) -> None:
        if not installed("aiohttp"):
            raise EngineUnavailable("server mode needs aiohttp: pip install 'llem[serving]'")

    def load(self) -> None:
        asyncio.run(self._discover())

    async def _discover(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            if self.model_name is None:
                async with session.get(f"{self.endpoint.url}/v1/models") as resp:
                    data = await resp.json(content_type=None)
                names = [m.get("id") for m in (data or {}).get("data", []) if isinstance(m, dict)]
                if not names:
                    raise ServerError(f"{self.endpoint.url}/v1/models lists no model: set server.model_name")
                self.model_name = names[0]
            if self.prompt == "auto":  # one token, asked as token ids: a 4xx means text only
                body = {"model": self.model_name, "prompt": [1, 2, 3], "max_tokens": 1}
                async with session.post(f"{self.endpoint.url}/v1/completions", json=body) as resp:
                    self.prompt = "token_ids" if resp.status == 200 else "text"
                    await resp.read()
        log.info("server %s serves %s; prompts sent as %s", self.endpoint.url, self.model_name, self.prompt)

    def _prompt(self, request: Request) -> Any:
        if self.prompt == "token_ids":
            return list(request.token_ids)
        if self.endpoint.id_words:
            return id_words(request.token_ids)
        if request.text is None:
            raise WorkloadError("this server takes text prompts only and the dataset gives token ids without text: "
                                "use a text dataset (dataset=builtin, file, hf …) or a server that takes token ids")
        return request.text

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
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            t0 = now()
            end = t0 + self.config.measure.max_window_s
            slots = Slots(self.config.load.max_concurrency, t0)
            closed = load_mode(self.config.load) == "closed"

            async def one(request: Request) -> RequestResult:
                due = t0 + (request.arrival_s or 0.0)
                if due < end:
                    await sleep_until(due)
                freed = await slots.take(end) if due < end else None
                if freed is None:
                    return self._unsent(request, output_len, due, end)
                ready = max(due, freed)
                return await self._one(session, request, bodies[request.request_id], ready if closed else due,
                                       ready, end, slots, output_len, progress)

            return list(await asyncio.gather(*(one(r) for r in requests)))

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
        body: Dict[str, Any] = {"model": self.model_name, "prompt": self._prompt(request), "max_tokens": length,
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
        line stamped with the time its bytes were read."""
        import aiohttp

        times: List[float] = []
        chunks = 0
        usage: Dict[str, Any] = {}
        error = None
        start = now()
        try:
            async with asyncio.timeout_at(loop_time(end)) as window:
                async with session.post(self._url, data=body, headers=JSON) as resp:
                    if resp.status != 200:
                        text = (await resp.text())[:ERROR_BODY_CHARS]
                        error = f"HTTP {resp.status}: {' '.join(text.split())}"
                    else:
                        done = finished = False
                        rest = b""
                        async for data in resp.content.iter_any():
                            t = now()
                            *lines, rest = (rest + data).split(b"\n")
                            for raw in lines:
                                line = raw.strip()
                                if not line.startswith(b"data:"):
                                    continue
                                data = line[5:].strip()
                                if data == b"[DONE]":
                                    done = finished = True
                                    break
                                event = json.loads(data)
                                if event.get("error"):
                                    error = f"server error in the stream: {event['error']}"
                                    finished = True
                                    break
                                usage = event.get("usage") or usage
                                for choice in event.get("choices") or []:
                                    text = choice.get("text") or ""
                                    if text:
                                        chunks += 1
                                        times.extend([t] * (words_in(text) if self.endpoint.id_words else 1))
                                    done = done or bool(choice.get("finish_reason"))
                                done = done or bool(usage)
                            if finished:
                                break
                        if error is None and not done:
                            error = "the stream ended before the server finished the request"
                        elif error is None and not times:
                            error = "the stream ended with no token"
        except aiohttp.ClientPayloadError as exc:
            error = f"the stream was cut off after {len(times)} tokens ({exc})"
        except asyncio.TimeoutError:
            if window.expired():
                error = (f"still in flight after {len(times)} tokens when measure.max_window_s="
                         f"{self.config.measure.max_window_s:g} s ran out")
            else:
                limit = self.config.server.request_timeout_s
                error = f"TimeoutError: no answer within server.request_timeout_s={limit:g} s"
        except (aiohttp.ClientError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        end_s = times[-1] if times else now()
        served = int(usage.get("completion_tokens") or 0) if usage else len(times)
        note = None
        if times and served != len(times):
            note = (f"the server streamed {chunks} chunks for {served} tokens: token times are chunk arrivals")
        return RequestResult(request_id=request.request_id, input_tokens=request.input_tokens,
                             output_tokens=served if error is None else len(times), start_s=start, end_s=end_s,
                             first_token_s=times[0] if times else None, token_times_s=times or None,
                             timing_note=note, output_len_requested=length, error=error)

    def info(self) -> EngineInfo:
        return EngineInfo()
