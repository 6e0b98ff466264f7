"""TensorRT-LLM engine: the ``tensorrt_llm.LLM`` high-level API of the 1.x line, every request
submitted at once (throughput mode). NOT verified on hardware by this project: written to the
documented API and tested against a fake of it (``tests/test_tensorrt_engine.py``).

API used (TensorRT-LLM 1.2.x; source files of NVIDIA/TensorRT-LLM and the LLM API reference,
https://nvidia.github.io/TensorRT-LLM/llm-api/reference.html):

- ``tensorrt_llm.LLM`` (PyTorch backend, the 1.x default) and ``tensorrt_llm._tensorrt_engine.LLM``
  (TensorRT engine build), ``LLM.save(dir)`` for a built engine (tensorrt_llm/llmapi/llm.py);
- their arguments (tensorrt_llm/llmapi/llm_args.py): ``model``, ``skip_tokenizer_init``, ``dtype``,
  ``tensor_parallel_size``, ``pipeline_parallel_size``, ``max_batch_size``, ``max_num_tokens``,
  ``max_seq_len``, ``kv_cache_config=KvCacheConfig(free_gpu_memory_fraction, enable_block_reuse)``,
  ``quant_config=QuantConfig(quant_algo, kv_cache_quant_algo)`` with ``QuantAlgo`` members,
  ``return_perf_metrics`` (prototype), and, on the PyTorch backend only, ``load_format="dummy"``
  (random weights; the TensorRT backend has no such argument, so it needs pretrained weights);
- ``SamplingParams(max_tokens, min_tokens, ignore_eos, end_id, pad_id, temperature, top_p, top_k,
  seed, detokenize)`` (tensorrt_llm/sampling_params.py);
- ``LLM.generate_async(inputs, sampling_params, streaming=True)``: an async iterator of
  ``RequestOutput``; ``outputs[0].token_ids`` grows with each chunk, and with
  ``return_perf_metrics`` ``outputs[0].request_perf_metrics.timing_metrics`` carries
  ``first_scheduled_time`` etc. as timedeltas on the executor's steady clock (CLOCK_MONOTONIC, the
  clock ``time.perf_counter`` reads on Linux) (tensorrt_llm/executor/result.py).

Timing: every token is stamped with the host time its chunk arrived (streaming, one chunk per
iteration); a request's service starts at the executor's ``first_scheduled_time`` when it fits
between submission and the first token, else at submission (``timing_note`` says so); TTFT and e2e
count from its due time (:mod:`llem.backends._due`).

Engine cache: with ``llm_backend=trt`` the built engine is saved under ``engine_cache_dir`` in a
directory named by a hash of every build setting, and later jobs of a sweep with the same
settings load it instead of building again (``engine.engine_cache`` = hit or built).

``python -m llem backend=tensorrt --cfg job`` shows the llem keys; ``python -m llem.backends.tensorrt
[overrides]`` prints the ``LLM(...)`` arguments they resolve to (no tensorrt_llm needed).

Several GPUs: TensorRT-LLM runs its ranks through MPI. On one node the LLM API spawns them itself
(MPI_COMM_SPAWN, needs an MPI with spawn support, as in NVIDIA's release image); on SLURM or where
spawning is not allowed, launch llem under ``trtllm-llmapi-launch``, e.g.
``srun --mpi=pmix -n 1 trtllm-llmapi-launch python -m llem backend=tensorrt
backend.tensor_parallel_size=2`` or ``mpirun -n 1 --oversubscribe --allow-run-as-root
trtllm-llmapi-launch python -m llem …``; the job uses tp × pp GPUs (``gpus_required``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from llem.backends._hf_model import count_parameters, shared_dummy_model
from llem.backends._trt_args import (
    KV_CACHE_ALGOS,
    QUANT_ALGOS,
    RESERVED,
    cache_key,
    llm_kwargs,
    to_api,
)
from llem.backends._trt_serve import TensorRTServing, caches, check_setup
from llem.backends.base import CompileCache, Engine, EngineInfo
from llem.config import BackendConfig, Config, Weights
from llem.support.errors import ConfigError
from llem.workload import special_token_ids
from llem.workload.records import Progress, Request, RequestResult, now

log = logging.getLogger(__name__)

WEIGHT_PRECISION = {"fp8": "fp8", "fp8_block": "fp8", "nvfp4": "nvfp4", "w8a16": "int8", "w4a16": "int4",
                    "w4a16_awq": "int4", "w8a8_sq": "int8"}


@dataclass
class TensorRTConfig(BackendConfig):
    """TensorRT-LLM's LLM API. ``engine_args`` go to ``LLM(...)`` untouched (cuda_graph_config,
    scheduler_config, speculative_config, …), their keys checked before load against its args class."""

    name: str = "tensorrt"
    llm_backend: str = "pytorch"  # pytorch (1.x default, no build) | trt (TensorRT engine build)
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_seq_len: Optional[int] = None  # None: input_len + output_len
    max_num_tokens: Optional[int] = None  # None: TensorRT-LLM's default (8192)
    kv_cache_free_gpu_memory_fraction: float = 0.9
    enable_block_reuse: bool = False  # off: every request does its full prefill, as on other engines
    quantization: str = "none"  # see QUANT_ALGOS
    kv_cache_dtype: str = "auto"  # auto | fp8 | int8
    engine_cache_dir: Optional[str] = None  # llm_backend=trt: built engines kept here; None: <cache_dir>/trt

    def __post_init__(self) -> None:
        def bad(key: str, allowed: str) -> ConfigError:
            return ConfigError(f"backend.{key}={getattr(self, key)!r} is invalid: allowed {allowed}")

        if self.llm_backend not in ("pytorch", "trt"):
            raise bad("llm_backend", "pytorch, trt")
        for key in ("tensor_parallel_size", "pipeline_parallel_size"):
            if getattr(self, key) < 1:
                raise bad(key, "an integer >= 1")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise bad("max_seq_len", "null or an integer >= 2")
        if self.max_num_tokens is not None and self.max_num_tokens < 1:
            raise bad("max_num_tokens", "null or an integer >= 1")
        if not 0 < self.kv_cache_free_gpu_memory_fraction <= 1:
            raise bad("kv_cache_free_gpu_memory_fraction", "a fraction in (0, 1]")
        if self.quantization not in QUANT_ALGOS:
            raise bad("quantization", ", ".join(QUANT_ALGOS))
        if self.kv_cache_dtype not in KV_CACHE_ALGOS:
            raise bad("kv_cache_dtype", ", ".join(KV_CACHE_ALGOS))


@dataclass
class TensorRTResolved:
    """TensorRT-LLM's resolved settings (``engine.*`` columns)."""

    llm_args: Optional[str] = field(default=None, metadata={
        "meaning": "the arguments tensorrt_llm.LLM was built with, engine_args included (JSON; objects as text)"})
    engine_cache: Optional[str] = field(default=None, metadata={
        "meaning": "llm_backend=trt: hit (a saved engine was loaded) or built; none otherwise"})


class TensorRTEngine(Engine):
    name = "tensorrt"
    config_class = TensorRTConfig
    resolved_class = TensorRTResolved
    package = "tensorrt_llm"
    reserved_args = RESERVED
    no_arrivals = None  # generate_async at each request's arrival time
    no_natural_lengths = None  # SamplingParams per request
    no_conversations = None  # a turn is submitted think_s after the turn before it finished
    serving_class = TensorRTServing

    @classmethod
    def validate_config(cls, config: Config) -> None:
        super().validate_config(config)
        if config.backend.llm_backend == "trt" and config.model.weights == Weights.random:
            raise ConfigError("model.weights=random is invalid with backend.llm_backend=trt: TensorRT-LLM's engine "
                              "build has no dummy-weight loading; allowed pretrained, or backend.llm_backend=pytorch")

    @classmethod
    def gpus_required(cls, backend: Any) -> int:
        return int(backend.tensor_parallel_size) * int(backend.pipeline_parallel_size)

    def check(self) -> None:
        check_setup(self.backend, self.device)

    def load(self) -> None:
        import tensorrt_llm
        from tensorrt_llm import llmapi

        cfg = self.config
        self.cache = None
        path = cfg.model.hf_id
        if cfg.model.weights == Weights.random:  # one path per architecture: the engine cache keys on it
            path = str(shared_dummy_model(cfg.model.architecture, cfg.model.dtype.value, Path(cfg.cache_dir)))
        # llem hands over token ids; without a tokenizer TensorRT-LLM needs the end id from the architecture
        self.kwargs = llm_kwargs(cfg, path, token_ids_only=bool(self._end_ids()))
        self.version = getattr(tensorrt_llm, "__version__", "unknown")
        self._params = count_parameters(cfg)
        if cfg.backend.llm_backend == "trt":
            from tensorrt_llm._tensorrt_engine import LLM

            self.llm = self._cached_build(LLM, llmapi)
        else:
            self.llm = tensorrt_llm.LLM(**to_api(self.kwargs, llmapi))

    def compile_cache(self, root: Path) -> CompileCache:
        return caches(self.backend, root)

    def _cached_build(self, llm_class, llmapi):
        """The TensorRT backend's engine: from the cache when built before with the same settings,
        else built now and saved there (atomically, so concurrent jobs never see half an engine)."""
        root = Path(self.backend.engine_cache_dir or Path(self.config.cache_dir) / "trt").expanduser()
        built = root / cache_key({k: v for k, v in self.kwargs.items() if k != "return_perf_metrics"}, self.version)
        args = to_api(self.kwargs, llmapi)
        if (built / "config.json").is_file():
            self.cache = "hit"
            log.info("TensorRT engine from the cache: %s", built)
            args["model"] = str(built)
            args.pop("quant_config", None)  # applied when it was built
            return llm_class(**args)
        llm = llm_class(**args)
        self.cache = "built"
        try:
            root.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(prefix=".building-", dir=str(root)))
            llm.save(str(partial))
            try:
                os.replace(partial, built)
            except OSError:  # another job of the sweep saved the same engine first
                shutil.rmtree(partial, ignore_errors=True)
        except OSError as exc:
            log.warning("built engine not cached (%s): the next job builds it again", exc)
            self.cache = "built, not cached"
        return llm

    def _end_ids(self) -> List[int]:
        arch = self.config.model.architecture or {}
        return sorted(special_token_ids({"eos_token_id": arch.get("eos_token_id")}))

    def sampling_params(self, output_len: int):
        from tensorrt_llm import SamplingParams

        d = self.config.decoding
        ends = self._end_ids()
        sampling = {"top_k": 1} if d.greedy else {"temperature": d.temperature, "top_p": d.top_p,
                                                  "top_k": d.top_k or None, "seed": self.config.seed}
        ids = {"end_id": ends[0], "pad_id": ends[0]} if ends else {}
        return SamplingParams(max_tokens=output_len, min_tokens=output_len, ignore_eos=True, detokenize=False,
                              **ids, **sampling)

    def generate(self, requests: Sequence[Request], output_len: Optional[int], progress: Progress
                 ) -> List[RequestResult]:
        """Every request submitted before any is drained, or each at its arrival time (a conversation's turn:
        ``think_s`` after the turn before it finished), at most ``load.max_concurrency`` in flight. Each is due
        as :mod:`llem.backends._due` says (a burst: at the call's start; a closed loop: when a slot frees)."""
        from llem.backends._due import DueTimes, closed_loop

        params: Dict[int, Any] = {}
        tracks = [_Track(r) for r in requests]
        cap = self.config.load.max_concurrency
        ids = {r.request_id for r in requests}
        timed = any(r.arrival_s or r.after in ids for r in requests) or cap is not None
        ended_at: Dict[int, Any] = {}  # request_id -> a future of its finish time (host clock)

        def submit(track: _Track) -> None:
            length = output_len if output_len is not None else (track.request.output_len or self.config.output_len)
            if length not in params:
                params[length] = self.sampling_params(length)
            track.start = now()
            prompt = {"prompt_token_ids": list(track.request.token_ids)}
            track.stream = self.llm.generate_async(prompt, params[length], streaming=True)

        async def drain(track: _Track) -> None:
            async for out in track.stream:
                track.add(out, now())
            progress(1)

        async def arrive(track: _Track, due: DueTimes, slots) -> None:
            r, follows = track.request, None
            if r.after in ended_at:  # a turn: due think_s after the turn before it finished
                follows = await ended_at[r.after] + r.think_s
            await asyncio.sleep(max(0.0, (due.t0 + (r.arrival_s or 0.0) if follows is None else follows) - now()))
            if slots is not None:
                await slots.acquire()  # waiters wake in turn: slots are taken in the order they freed
            try:
                track.arrival = due.admit(r, follows)
                submit(track)
                await drain(track)
            finally:
                t = now()
                due.finished(t)
                ended_at[r.request_id].set_result(t)
                if slots is not None:
                    slots.release()

        async def run() -> None:
            due = DueTimes(now(), closed_loop(self.config.load))
            if not timed:
                for track in tracks:
                    track.arrival = due.admit(track.request)
                    submit(track)
                await asyncio.gather(*(drain(t) for t in tracks))
                return
            slots = asyncio.Semaphore(cap) if cap else None
            ended_at.update((i, asyncio.get_running_loop().create_future()) for i in ids)
            await asyncio.gather(*(arrive(t, due, slots) for t in tracks))

        asyncio.run(run())
        return [t.result() for t in tracks]

    def synchronize(self) -> None:
        pass  # generate returns when every request's last token is on the host

    def info(self) -> EngineInfo:
        versions = {"tensorrt_llm": self.version}
        args = {k: v for k, v in self.kwargs.items() if k != "model"}
        resolved = TensorRTResolved(llm_args=json.dumps(args, sort_keys=True, default=str), engine_cache=self.cache)
        q = self.backend.quantization
        bits = {"fp8": 8, "int8": 8, "int4": 4, "nvfp4": 4}.get(WEIGHT_PRECISION.get(q, ""), 16)
        bits = 32 if bits == 16 and self.config.model.dtype.value == "float32" else bits
        return EngineInfo(versions=versions, resolved=resolved, num_parameters=self._params,
                          weight_bytes=self._params * bits // 8 if self._params else None,
                          weight_precision=WEIGHT_PRECISION.get(q), compute_precision=None)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None and hasattr(llm, "shutdown"):
            llm.shutdown()
        self.llm = None


class _Track:
    """One request's stream: host arrival time of every token, and the executor's timing metrics."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.start = 0.0
        self.arrival: Optional[float] = None  # when it was due (host clock)
        self.stream = None
        self.times: List[float] = []
        self.scheduled: Optional[float] = None

    def add(self, out, host: float) -> None:
        completion = out.outputs[0]
        new = len(completion.token_ids) - len(self.times)
        self.times.extend([host] * max(new, 0))
        perf = getattr(completion, "request_perf_metrics", None)
        timing = getattr(perf, "timing_metrics", None)
        stamp = getattr(timing, "first_scheduled_time", None)
        if stamp is not None and hasattr(stamp, "total_seconds"):
            self.scheduled = stamp.total_seconds()

    def result(self) -> RequestResult:
        start, note = self.start, None
        first = self.times[0] if self.times else None
        if self.scheduled and self.start <= self.scheduled <= (first if first is not None else self.scheduled):
            start = self.scheduled
        else:
            note = "TensorRT-LLM gave no usable first_scheduled_time: service counts from submission"
        end = self.times[-1] if self.times else start
        return RequestResult(request_id=self.request.request_id, input_tokens=self.request.input_tokens,
                             output_tokens=len(self.times), start_s=start, end_s=end, first_token_s=first,
                             token_times_s=list(self.times) or None, timing_note=note, arrival_s=self.arrival,
                             output_len_requested=self.request.output_len)


ENGINE = TensorRTEngine


def main(overrides: List[str]) -> None:
    """``python -m llem.backends.tensorrt [overrides]``: the ``LLM(...)`` arguments a job would pass
    (model path as given; no tensorrt_llm needed), after the same validation a job runs."""
    from hydra import compose, initialize_config_dir

    from llem.backends import register_all
    from llem.config import conf_dir, to_config

    register_all()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = to_config(compose(config_name="config", overrides=["backend=tensorrt", *overrides]))
    TensorRTEngine.validate_config(cfg)
    engine = TensorRTEngine(cfg, "cuda")
    path = "<config.json written from model.architecture>" if cfg.model.weights == Weights.random else cfg.model.hf_id
    print(json.dumps(llm_kwargs(cfg, path, token_ids_only=bool(engine._end_ids())), indent=1, sort_keys=True))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
