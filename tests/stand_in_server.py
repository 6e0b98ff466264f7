"""A stand-in OpenAI-compatible server for the client's error paths (500s, dropped streams, timeouts,
text-only prompts, malformed replies, wrong token counts), in a thread of the test process, on both APIs:
``/v1/completions`` and ``/v1/chat/completions`` (chat chunks: a first one with ``delta.role`` alone, then
``delta.content``). Real serving is tested against transformers serve."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Optional


class StandIn:
    """``mode``: ok | fail500 | busy (HTTP 429, Retry-After) | denied (HTTP 401) | drop (two tokens, then the
    connection closes) | slow (a measured request is answered after 3 s; the one-token probe of how prompts go
    at once) | fail_endless (HTTP 500 whose body never ends) |
    moved (HTTP 307 to /elsewhere, which streams well).
    ``bad``: how every ``bad_every``-th request (by arrival, from the first) misbehaves, the others answered
    well: ``event`` (``bad_line`` sent as one line of its stream, after a token), ``json_body`` (a plain JSON
    completion, as a server ignoring stream=true answers), ``html`` (an HTML error page with status 200),
    ``trickle`` (keep-alive comments every ``delay_s``, never a token), ``endless`` (after a token, 1 MiB
    writes with no line break, without end), ``count`` (``usage.completion_tokens``
    = ``count``; with ``streamed``, that many tokens are streamed). ``models``: the /v1/models answer, as raw
    bytes (None: a well-formed list). ``split_s`` > 0: each token's event is written in two halves, cut
    mid-line, that far apart. A chat request's length is its ``max_completion_tokens``. ``cached``: the
    ``usage.prompt_tokens_details.cached_tokens`` sent (None: none).
    ``metrics``: what ``GET /metrics`` answers: None (no such route: 404), ``vllm`` (Prometheus text of vLLM's
    names, made by prometheus_client's own registry, that move with the load: requests running and waiting for
    one of ``max_running`` slots, KV-cache usage as the tokens held over ``kv_tokens``, prompt and generated token
    counters, prefix-cache queries and hits, and a histogram llem does not read) or ``html`` (a page that is not
    Prometheus text); ``metrics_delay_s``: each /metrics answer waits that long first, the check's probe (the
    first) excepted; ``extra_generated``: tokens the generation counter adds per request (another client's)."""

    def __init__(self, mode: str = "ok", tokens_only: bool = False, delay_s: float = 0.005, bad: str = "",
                 bad_every: int = 1, bad_line: bytes = b"", count=None, streamed: Optional[int] = None,
                 models: Optional[bytes] = None, split_s: float = 0.0, metrics: Optional[str] = None,
                 max_running: Optional[int] = None, kv_tokens: int = 256, metrics_delay_s: float = 0.0,
                 extra_generated: int = 0, cached: Optional[int] = None) -> None:
        self.mode, self.tokens_only, self.delay_s = mode, tokens_only, delay_s
        self.bad, self.bad_every, self.bad_line, self.count, self.streamed = bad, bad_every, bad_line, count, streamed
        self.models, self.split_s, self.cached = models, split_s, cached
        self.served = 0
        self.in_flight = self.most_in_flight = 0
        self.bodies = []
        self.paths = []  # the path every completion request was posted to
        self.authorization = []  # the Authorization header of every request (None: none sent)
        self.metrics, self.max_running, self.kv_tokens = metrics, max_running, kv_tokens
        self.metrics_delay_s, self.extra_generated = metrics_delay_s, extra_generated
        self.scrapes = 0
        self.held = {}  # tokens each running request holds in the KV cache
        self.waiting = 0
        self._prefixes = set()
        self._prom = _VllmMetrics() if metrics == "vllm" else None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._slots: Optional[asyncio.Semaphore] = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> StandIn:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        from aiohttp import web

        async def models(request):
            self.authorization.append(request.headers.get("Authorization"))
            if self.models is not None:
                return web.Response(body=self.models, content_type="text/html")
            return web.json_response({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

        async def completions(request):
            body = await request.json()
            self.bodies.append(body)
            self.authorization.append(request.headers.get("Authorization"))
            chat = request.path.endswith("/chat/completions")
            self.paths.append(request.path)
            if chat and not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in body["messages"]):
                return web.json_response({"detail": "a message's content must be a string."}, status=400)
            if isinstance(body.get("prompt"), list) and self.tokens_only:
                return web.json_response({"detail": "prompt must be a string."}, status=400)
            if self.mode == "fail500":
                return web.Response(status=500, text="internal error: out of blocks")
            if self.mode == "moved" and not request.path.startswith("/elsewhere/"):
                raise web.HTTPTemporaryRedirect("/elsewhere" + request.path)
            if self.mode == "fail_endless":
                resp = web.StreamResponse(status=500)
                await resp.prepare(request)
                while True:
                    await resp.write(b"e" * (1 << 20))
            if self.mode == "busy":
                return web.Response(status=429, headers={"Retry-After": "3600"}, text="rate limited")
            if self.mode == "denied":
                return web.json_response({"error": "invalid api key"}, status=401)
            asked = int(body["max_completion_tokens"] if chat else body["max_tokens"])
            bad = self.bad if asked > 1 and self.served % self.bad_every == 0 else ""
            self.served += asked > 1  # the one-token prompt-kind probe is not counted
            if bad == "json_body":
                reply = {"message": {"role": "assistant", "content": " t1 t2"}} if chat else {"text": " t1 t2"}
                return web.json_response({"choices": [{"index": 0, **reply, "finish_reason": "length"}],
                                          "usage": {"completion_tokens": 2}})
            if bad == "html":
                return web.Response(text="<html>\n<body>502 Bad Gateway</body>\n</html>\n", content_type="text/html")
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self._slots is None:
                self._slots = asyncio.Semaphore(self.max_running or 1 << 20)
            self.waiting += 1
            try:
                await self._slots.acquire()
            except asyncio.CancelledError:
                self.in_flight -= 1
                raise
            finally:
                self.waiting -= 1
            key = object()
            sent = body["messages"][-1]["content"] if chat else body["prompt"]
            prompt = sent if isinstance(sent, list) else str(sent).split()
            self.held[key] = len(prompt)
            self._counted_prompt(prompt)
            try:
                if self.mode == "slow" and asked > 1:
                    await asyncio.sleep(3)  # past the test's 1 s request timeout
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                if bad == "trickle":
                    while True:
                        await asyncio.sleep(self.delay_s)
                        await resp.write(b": keep-alive\n\n")
                count = self.count if bad == "count" else asked
                if chat:  # the role first, with no token
                    await resp.write(b'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}\n\n')
                for i in range(self.streamed if bad == "count" and self.streamed is not None else asked):
                    await asyncio.sleep(self.delay_s)
                    text = f" t{i + 10}"
                    chunk = {"choices": [{"index": 0, **({"delta": {"content": text}} if chat else {"text": text})}]}
                    event = f"data: {json.dumps(chunk)}\n\n".encode()
                    if self.split_s:
                        await resp.write(event[:12])
                        await asyncio.sleep(self.split_s)
                        event = event[12:]
                    await resp.write(event)
                    self.held[key] += 1
                    if self._prom is not None:
                        self._prom.generated.inc()
                    if self.mode == "drop" and i == 1:
                        request.transport.close()
                        return resp
                    while bad == "endless":
                        await resp.write(b"data: " + b"x" * (1 << 20))
                    if bad == "event" and i == 0:
                        await resp.write(self.bad_line + b"\n\n")
                last = {"index": 0, **({"delta": {}} if chat else {"text": ""}), "finish_reason": "length"}
                await resp.write(f"data: {json.dumps({'choices': [last]})}\n\n".encode())
                usage = {"choices": [], "usage": {"completion_tokens": count, "prompt_tokens": 3}}
                if self.cached is not None:
                    usage["usage"]["prompt_tokens_details"] = {"cached_tokens": self.cached}
                await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
                if self._prom is not None and self.extra_generated:
                    self._prom.generated.inc(self.extra_generated)
                return resp
            finally:
                self.in_flight -= 1
                self.held.pop(key, None)
                self._slots.release()

        async def metrics(request):
            self.scrapes += 1
            self.authorization.append(request.headers.get("Authorization"))
            if self.metrics_delay_s and self.scrapes > 1:
                await asyncio.sleep(self.metrics_delay_s)
            if self.metrics == "html":
                return web.Response(text="<html><body>metrics</body></html>", content_type="text/html")
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._prom.moved(len(self.held), self.waiting, sum(self.held.values()) / self.kv_tokens)
            return web.Response(body=generate_latest(self._prom.registry),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def main():
            self._stop = asyncio.Event()
            app = web.Application()
            app.router.add_get("/v1/models", models)
            app.router.add_get("/health", models)
            for path in ("/v1/completions", "/v1/chat/completions"):
                app.router.add_post(path, completions)
                app.router.add_post("/elsewhere" + path, completions)
            if self.metrics is not None:
                app.router.add_get("/metrics", metrics)
            runner = web.AppRunner(app, shutdown_timeout=0.2)  # at exit, a handler still asleep is cancelled
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(main())

    def _counted_prompt(self, prompt) -> None:
        """The prompt's tokens counted as vLLM counts them: all processed, each looked up in the prefix cache,
        those of its longest prefix seen before found there."""
        if self._prom is None:
            return
        prompt = tuple(prompt)
        hits = max((k for k in range(len(prompt) + 1) if prompt[:k] in self._prefixes), default=0)
        self._prefixes.update(prompt[:k] for k in range(1, len(prompt) + 1))
        self._prom.prompt.inc(len(prompt))
        self._prom.queries.inc(len(prompt))
        self._prom.hits.inc(hits)


class _VllmMetrics:
    """vLLM's metric names in a registry of their own (prometheus_client writes the text, counters' _total
    included)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = {"model_name": "stand-in", "engine": "0"}

        def made(kind, name, doc, **kw):
            return kind(name, doc, list(labels), registry=self.registry, **kw).labels(**labels)

        self.running = made(Gauge, "vllm:num_requests_running", "Requests running")
        self.waiting = made(Gauge, "vllm:num_requests_waiting", "Requests waiting")
        self.kv = made(Gauge, "vllm:kv_cache_usage_perc", "KV-cache usage, 1 is 100 percent")
        self.preemptions = made(Counter, "vllm:num_preemptions", "Preemptions")
        self.queries = made(Counter, "vllm:prefix_cache_queries", "Prefix cache queries, in tokens")
        self.hits = made(Counter, "vllm:prefix_cache_hits", "Prefix cache hits, in tokens")
        self.prompt = made(Counter, "vllm:prompt_tokens", "Prompt tokens")
        self.generated = made(Counter, "vllm:generation_tokens", "Generated tokens")
        self.ttft = made(Histogram, "vllm:time_to_first_token_seconds", "TTFT", buckets=(0.01, 0.1, 1.0))

    def moved(self, running: int, waiting: int, kv_fraction: float) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.kv.set(min(kv_fraction, 1.0))
        self.ttft.observe(0.05)
