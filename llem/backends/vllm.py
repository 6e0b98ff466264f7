"""vLLM engine: the offline V1 ``LLM`` with every request submitted at once (throughput mode).

llem's shared keys map onto vLLM's engine arguments (``batch`` → ``max_num_seqs``, dtype,
parallelism, seed); everything else passes through ``backend.engine_args`` untouched, its keys
checked before load against the arguments of the installed ``LLM`` (read from vllm's source). Synthetic
workloads go in as token ids with no tokenizer; ``model.weights=random`` loads vLLM's dummy
weights for a ``config.json`` written from the model group's architecture (no download).

Timing: ``LLM.generate`` only returns finished requests, so the engine is stepped here with
``RequestOutputKind.DELTA`` outputs (the same loop generate runs), ``batch`` requests added first
and each of the rest as a slot frees (as vLLM's scheduler admits its waiting queue: in the next step); a
conversation's turn is added once the turn before it has finished and its think time has passed.
An engine kept for the next jobs of a sweep (``reuse_engine``) is built for the largest batch among
them; each job still holds at most its own ``batch`` in flight.
Each token is stamped with the engine's own time of the step that produced it: V1's
``RequestStateStats.last_token_ts`` (``disable_log_stats=False`` attaches it), a CLOCK_MONOTONIC
stamp taken in the engine-core process — the clock ``time.perf_counter`` reads on Linux, so it
compares with the submission time taken here. A request's service starts when the scheduler
first scheduled it (``scheduled_ts``; preemptions are not tracked). TTFT and e2e count from the
request's due time (:mod:`llem.backends._due`), so the wait before service (requests beyond ``batch``
wait in llem's queue for a free slot) is in them, and is the request's ``queue_ms``. ITL are
the gaps between steps. Where the engine gives no stamps (or they do not fit the host clock),
the host times are used and ``timing_note`` says so. With ``backend.enable_prefix_caching`` the engine's own
prefix-cache counters (``LLM.get_metrics()``: ``vllm:prefix_cache_queries`` and ``_hits``, in tokens) are read at
the end of each ``generate``; their rise over it is the window's hit rate.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from llem.backends._engine_args import check_engine_args, package_dir
from llem.backends._hf_model import count_parameters, shared_dummy_model
from llem.backends._metric_names import VLLM
from llem.backends._vllm_args import RESERVED, cli_flags, llm_arguments, llm_kwargs
from llem.backends.base import CompileCache, Engine, EngineInfo, ServerLaunch, Serving, build_text, installed
from llem.config import BackendConfig, Config, Weights
from llem.results.environment import package_version
from llem.support.errors import ConfigError, DeviceError, EngineUnavailable
from llem.support.install import install_hint
from llem.workload.records import Progress, Request, RequestResult, now

log = logging.getLogger(__name__)


@dataclass
class VllmConfig(BackendConfig):
    """vLLM offline engine. ``engine_args`` go to ``vllm.LLM(...)`` untouched (quantization,
    kv_cache_dtype, speculative_config, compilation_config, …)."""

    name: str = "vllm"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: Optional[int] = None  # None: input_len + output_len
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False  # true: no CUDA graphs / torch.compile (starts faster, runs slower)
    enable_prefix_caching: bool = False  # off: every request does its full prefill, as on other engines

    def __post_init__(self) -> None:
        for key in ("tensor_parallel_size", "pipeline_parallel_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"backend.{key}={getattr(self, key)} is invalid: allowed an integer >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"backend.gpu_memory_utilization={self.gpu_memory_utilization} is invalid: "
                              "allowed a fraction in (0, 1]")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError(f"backend.max_model_len={self.max_model_len} is invalid: allowed null or >= 2")


@dataclass
class VllmResolved:
    """vLLM's resolved settings (``engine.*`` columns)."""

    llm_args: Optional[str] = field(default=None, metadata={
        "meaning": "the arguments vllm.LLM was built with, engine_args included (JSON; the model path left out)"})
    max_num_seqs: Optional[int] = field(default=None, metadata={"meaning": "sequences in flight (from batch)"})
    max_model_len: Optional[int] = field(default=None, metadata={"meaning": "the context length vLLM resolved"})
    num_gpu_blocks: Optional[int] = field(default=None, metadata={"meaning": "KV-cache blocks vLLM allocated"})


def _check(backend: Any, device: str) -> None:
    """The engine's (and ``vllm serve``'s) cheap check: vLLM installed, a GPU, engine_args it takes."""
    if not installed("vllm"):  # no import: that is start-up, timed in load
        raise EngineUnavailable(f"backend=vllm needs vLLM, which is not installed: {install_hint('vllm')} "
                                "(GPUs only)")
    if device != "cuda":
        raise DeviceError("backend=vllm runs on GPUs only: use device=cuda (or auto on a GPU machine)")
    if not backend.engine_args:
        return
    # an engine_args key vllm.LLM does not take fails here, named as llem's key, instead of in load inside
    # vLLM (its argument set is read from vllm's source: importing vllm is start-up)
    package = package_dir("vllm")
    known = llm_arguments(package) if package is not None else frozenset()
    version = package_version("vllm") or "version unknown"
    check_engine_args(backend.engine_args, known, f"vllm.LLM (vLLM {version})", package)


def _compile_cache(backend: Any, root: Path) -> CompileCache:
    """vLLM's torch.compile cache (its AOT artifacts and Inductor graphs: the hit/miss signal), Triton's
    kernels, Inductor's and FlashInfer's JIT caches, all under the root; none with enforce_eager."""
    env = {"VLLM_CACHE_ROOT": str(root / "vllm"), "TRITON_CACHE_DIR": str(root / "triton"),
           "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"), "FLASHINFER_WORKSPACE_BASE": str(root / "flashinfer")}
    if backend.enforce_eager:
        return CompileCache(env=env)
    vllm_root = Path(os.environ.get("VLLM_CACHE_ROOT") or env["VLLM_CACHE_ROOT"]).expanduser()
    compiled = vllm_root / "torch_compile_cache"
    return CompileCache(env=env, artifacts=[
        str(compiled / "torch_aot_compile" / "*" / "rank_*" / "model"),
        str(compiled / "*" / "rank_*" / "*" / "artifact_compile_range_*"),
        str(compiled / "*" / "rank_*" / "*" / "vllm_compile_cache.py")])


class VllmServing(Serving):
    """``vllm serve``: what the engine needs, its engine arguments as flags."""

    apis = ("completions", "chat")

    def check(self) -> None:
        _check(self.backend, self.device)  # vllm serve needs what the engine needs

    def served_model(self, root: Path) -> Optional[Path]:
        """Random weights: the dummy model dir (config.json) with llem's id-word tokenizer beside it."""
        from llem.backends._served_model import dummy_model_dir

        return dummy_model_dir(self.config.model, root)

    def request_extras(self, output_len: int) -> Dict[str, Any]:
        """EOS ignored, and special tokens kept in the text: a random model emits special ids too (pad, EOS),
        which vLLM would drop from the streamed text, so the id-word stream would show fewer tokens than were
        generated and the server's count would look wrong."""
        return {**super().request_extras(output_len), "skip_special_tokens": False}

    def command(self, model_dir: Optional[Path], host: str, port: int) -> ServerLaunch:
        """``vllm serve`` with the job's engine arguments as its flags (``engine_args`` keys in kebab case);
        with ``batch`` null no ``--max-num-seqs``: the server runs at its own default."""
        import shutil
        import sys

        cfg = self.config
        kwargs = llm_kwargs(cfg, str(model_dir) if model_dir else cfg.model.hf_id, token_ids_only=False)
        model = kwargs.pop("model")
        for key in ("skip_tokenizer_init", "disable_log_stats"):
            kwargs.pop(key, None)
        exe = shutil.which("vllm")
        argv = ([exe] if exe else [sys.executable, "-m", "vllm.entrypoints.cli.main"]) + ["serve", model]
        argv += ["--host", host, "--port", str(port)] + cli_flags(kwargs)
        env = dict(_compile_cache(self.backend, Path(cfg.cache_dir).expanduser()).env)
        return ServerLaunch(argv=argv, env=env, prompt="token_ids", id_words=model_dir is not None,
                            max_in_flight=cfg.batch, in_flight_flag="--max-num-seqs",
                            max_in_flight_null_reason=None if cfg.batch else (
                                "batch is null: vllm serve chose its own max_num_seqs (by its usage context and "
                                "the GPU's memory), which llem does not read back"))

    def metric_table(self):
        """vLLM's Prometheus names (running and waiting requests, KV-cache usage, preemptions, prefix cache, tokens)."""
        return VLLM


class VllmEngine(Engine):
    name = "vllm"
    config_class = VllmConfig
    resolved_class = VllmResolved
    package = "vllm"
    reserved_args = RESERVED
    no_arrivals = None  # each request is added to the engine at its arrival, between steps
    no_natural_lengths = None  # each request has its own SamplingParams
    no_conversations = None  # a turn is added when the turn before it finished, plus its think time
    serving_class = VllmServing

    @classmethod
    def gpus_required(cls, backend: Any) -> int:
        return int(backend.tensor_parallel_size) * int(backend.pipeline_parallel_size)

    @classmethod
    def build_key(cls, config: Config) -> Optional[str]:
        """The engine's arguments less ``max_num_seqs`` (a build for a larger batch holds a smaller one: the job
        keeps only ``batch`` in flight) and ``seed`` (requests carry their own), the model, the cache root."""
        kwargs = llm_kwargs(config, "", token_ids_only=True)
        for key in ("max_num_seqs", "seed", "model"):
            kwargs.pop(key, None)
        return build_text(engine=cls.name, model=config.model, kwargs=kwargs, cache_dir=config.cache_dir)

    @classmethod
    def build_capacity(cls, config: Config) -> Optional[int]:
        return config.batch

    def check(self) -> None:
        _check(self.backend, self.device)

    def compile_cache(self, root: Path) -> CompileCache:
        return _compile_cache(self.backend, root)

    @classmethod
    def preload(cls) -> None:
        import vllm  # noqa: F401  (~10 s; vLLM initialises no CUDA at import: its platform comes from NVML)
        from vllm import LLM, SamplingParams  # noqa: F401

    def load(self) -> None:
        from vllm import LLM

        cfg = self.config
        if cfg.model.weights == Weights.random:  # one path per architecture: vLLM's compile cache keys on it
            path = str(shared_dummy_model(cfg.model.architecture, cfg.model.dtype.value, Path(cfg.cache_dir)))
        else:
            path = cfg.model.hf_id
        self.kwargs = llm_kwargs(cfg, path, token_ids_only=True)
        if self.build_for and self.build_for > cfg.batch and "max_num_seqs" not in cfg.backend.engine_args:
            self.kwargs["max_num_seqs"] = self.build_for  # later jobs of the sweep measure larger batches on it
        self.llm = LLM(**self.kwargs)
        self._params = count_parameters(cfg)
        self._prefix_seen = self._prefix_counters()  # since the engine was built: each generate takes its rise
        self._prefix_last: Optional[Tuple[int, int]] = None

    def sampling_params(self, output_len: int):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        d = self.config.decoding
        sampling = {} if d.greedy else {"top_p": d.top_p, "top_k": d.top_k, "seed": self.config.seed}
        return SamplingParams(max_tokens=output_len, min_tokens=output_len, ignore_eos=True,
                              temperature=d.temperature, detokenize=False, output_kind=RequestOutputKind.DELTA,
                              **sampling)

    def generate(self, requests: Sequence[Request], output_len: Optional[int], progress: Progress
                 ) -> List[RequestResult]:
        """Every request added before the first step, or each when it is due (between steps; the engine sleeps
        only while nothing is in flight, until the next is due), at most ``batch`` (and
        ``load.max_concurrency``) in flight: a request waiting for a slot is added as one frees, in time for the
        next step. :class:`llem.backends._due.Schedule` says which are due and when (a burst: at the call's
        start; a closed loop: when a slot frees; a conversation's turn: its predecessor's finish + think time)."""
        from vllm.inputs import TokensPrompt

        from llem.backends._due import Schedule, closed_loop

        engine = self.llm.llm_engine
        cap = min(c for c in (self.config.load.max_concurrency, self.config.batch) if c)  # the build may hold more
        params: Dict[int, Any] = {}
        tracks = {f"llem-{r.request_id}": _Track(r) for r in requests}
        schedule = Schedule(requests, now(), closed_loop(self.config.load), cap)
        while schedule.waiting or engine.has_unfinished_requests():
            for request, due in schedule.admit(now()):
                track = tracks[f"llem-{request.request_id}"]
                length = output_len if output_len is not None else (request.output_len or self.config.output_len)
                if length not in params:
                    params[length] = self.sampling_params(length)
                track.arrival, track.start = due, now()
                engine.add_request(f"llem-{request.request_id}", TokensPrompt(prompt_token_ids=list(request.token_ids)),
                                   params[length])
            if not engine.has_unfinished_requests():
                ready = schedule.next_ready()
                if ready is None:  # cannot happen: a held turn's predecessor is in flight or finished
                    raise RuntimeError("vLLM generate: requests wait on turns that never ran")
                time.sleep(max(0.0, ready - now()))
                continue
            outputs = engine.step()
            host = now()
            for out in outputs:
                track = tracks[out.request_id]
                track.add(len(out.outputs[0].token_ids) if out.outputs else 0, host, out.metrics,
                          getattr(out, "num_cached_tokens", None))
                if out.finished:
                    schedule.finished(track.request.request_id, host)
                    progress(1)
        self._take_prefix_counts()
        return [t.result() for t in tracks.values()]

    def _prefix_counters(self) -> Optional[Tuple[int, int]]:
        """The engine's prefix-cache counters (tokens queried, hit) since it was built; None when the cache is
        off (nothing read: no cost) or the engine gives none."""
        if not self.kwargs.get("enable_prefix_caching"):
            return None
        return prefix_cache_counters(self.llm.get_metrics())

    def _take_prefix_counts(self) -> None:
        now_seen = self._prefix_counters()
        before, self._prefix_seen = self._prefix_seen, now_seen
        self._prefix_last = None if now_seen is None or before is None else (
            now_seen[0] - before[0], now_seen[1] - before[1])

    def prefix_cache(self) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
        if not self.kwargs.get("enable_prefix_caching"):
            return None, "backend.enable_prefix_caching is false: vLLM kept no prefix cache"
        if self._prefix_last is None:
            return None, ("vLLM's LLM.get_metrics() gave no vllm:prefix_cache_queries / vllm:prefix_cache_hits "
                          "counters")
        return self._prefix_last, None

    def info(self) -> EngineInfo:
        import vllm

        versions = {"vllm": vllm.__version__}
        try:
            import torch

            versions["torch"] = torch.__version__
        except ImportError:
            pass
        args = {k: v for k, v in self.kwargs.items() if k != "model"}
        vllm_config = getattr(self.llm.llm_engine, "vllm_config", None)
        resolved = VllmResolved(
            llm_args=json.dumps(args, sort_keys=True, default=str), max_num_seqs=args.get("max_num_seqs"),
            max_model_len=getattr(getattr(vllm_config, "model_config", None), "max_model_len", None),
            num_gpu_blocks=getattr(getattr(vllm_config, "cache_config", None), "num_gpu_blocks", None))
        bytes_per = {"float32": 4, "float16": 2, "bfloat16": 2}[self.config.model.dtype.value]
        return EngineInfo(versions=versions, resolved=resolved, num_parameters=self._params,
                          weight_bytes=self._params * bytes_per if self._params else None)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if hasattr(core, "shutdown"):
                core.shutdown()
            self.llm = None


def _counter_names(scraped: Tuple[str, ...]) -> Tuple[str, ...]:
    """A counter's names as ``LLM.get_metrics()`` gives them: its Prometheus names without ``_total``."""
    return tuple(n.removesuffix("_total") for n in scraped)


PREFIX_QUERIES = _counter_names(VLLM.prefix_cache_queries)  # counters, in tokens
PREFIX_HITS = _counter_names(VLLM.prefix_cache_hits)


def prefix_cache_counters(metrics: Sequence[Any]) -> Optional[Tuple[int, int]]:
    """(tokens queried, tokens hit) summed over the engines of ``LLM.get_metrics()`` (its Counter objects have a
    ``name`` and a ``value``); None when it has neither counter."""
    queries = [m.value for m in metrics if getattr(m, "name", None) in PREFIX_QUERIES]
    hits = [m.value for m in metrics if getattr(m, "name", None) in PREFIX_HITS]
    if not queries or not hits:
        return None
    return int(sum(queries)), int(sum(hits))


class _Track:
    """One request's tokens as they arrive: engine step stamps and host receive times."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.start = 0.0  # submitted (host clock)
        self.arrival: Optional[float] = None  # when it was due (host clock)
        self.scheduled = 0.0  # first scheduled (engine clock)
        self.engine: List[float] = []
        self.host: List[float] = []
        self.cached: Optional[int] = None  # prompt tokens served from its prefix cache (num_cached_tokens)

    def add(self, n: int, host: float, metrics, cached: Optional[int] = None) -> None:
        if isinstance(cached, int) and cached >= 0:
            self.cached = cached
        if metrics is not None and not self.scheduled:
            self.scheduled = getattr(metrics, "scheduled_ts", 0.0) or 0.0
        if n <= 0:
            return
        stamp = getattr(metrics, "last_token_ts", 0.0) if metrics is not None else 0.0
        self.engine.extend([stamp] * n)  # tokens of one step share the step's stamp
        self.host.extend([host] * n)

    def result(self) -> RequestResult:
        n = len(self.host)
        note = None
        times, start = self.engine, self.scheduled
        if not n:
            times = []
        elif not all(times) or times[0] < self.start or times[-1] > self.host[-1] + 1e-3:
            times = self.host
            note = "vLLM gave no usable per-step timestamps: token times are host receive times"
        if not (self.start <= start <= (times[0] if times else start)) or note:
            start = self.start
            note = note or "vLLM gave no scheduling timestamp: service counts from submission"
        return RequestResult(request_id=self.request.request_id, input_tokens=self.request.input_tokens,
                             output_tokens=n, start_s=start, end_s=times[-1] if times else start,
                             first_token_s=times[0] if times else None, token_times_s=list(times) or None,
                             timing_note=note, arrival_s=self.arrival, output_len_requested=self.request.output_len,
                             prompt_tokens_cached=self.cached)


ENGINE = VllmEngine
