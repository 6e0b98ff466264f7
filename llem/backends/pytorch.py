"""PyTorch engine: transformers ``generate`` over static batches, with accelerate for scale.

- one process, one GPU (the default) or, with ``device_map``, one model sharded over
  ``gpus_per_process`` GPUs by accelerate;
- ``num_processes=N``: data parallel, N replicas in N processes (one GPU each) started here and
  joined into a process group by accelerate — see ``_torch_workers``;
- attention kernel, ``torch.compile`` mode, static KV cache and bitsandbytes quantisation are
  options, each passed to transformers as it documents them; compilation happens while loading;
- ``decode_loop=llem`` replaces ``generate`` with llem's own loop (``_torch_decode``): static cache,
  one CUDA graph per decoding step, no host work between steps.

The model itself lives in ``_torch_runner.Runner``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from llem.backends._serve_cache import cache_args
from llem.backends._torch_runner import PyTorchResolved
from llem.backends.base import (
    CompileCache,
    Engine,
    EngineInfo,
    ServerLaunch,
    Serving,
    WorkCounts,
    build_text,
    installed,
)
from llem.config import BackendConfig, Config, _require
from llem.results.environment import package_version
from llem.support.errors import ConfigError, EngineUnavailable
from llem.support.install import install_hint
from llem.workload.records import Progress, Request, RequestResult, now

log = logging.getLogger(__name__)

ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
CACHES = ("dynamic", "static")
DECODE_LOOPS = ("generate", "llem")
QUANT_METHODS = ("none", "bnb_8bit", "bnb_nf4", "bnb_fp4")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass
class QuantizationConfig:
    """bitsandbytes weight quantisation, applied as the weights load."""

    method: str = "none"  # none | bnb_8bit (LLM.int8) | bnb_nf4 | bnb_fp4
    compute_dtype: Optional[str] = None  # 4-bit matmul dtype; null: model.dtype
    double_quant: bool = False  # 4-bit: also quantise the quantisation constants

    def __post_init__(self) -> None:
        _require(self.method in QUANT_METHODS, "backend.quantization.method", self.method, ", ".join(QUANT_METHODS))
        if self.compute_dtype is not None:
            _require(self.compute_dtype in ("float16", "bfloat16", "float32"), "backend.quantization.compute_dtype",
                     self.compute_dtype, "null, float16, bfloat16, float32")


@dataclass
class PyTorchConfig(BackendConfig):
    """transformers + accelerate. ``engine_args`` go to from_pretrained/from_config."""

    name: str = "pytorch"
    num_processes: int = 1  # data-parallel replicas, one process and one GPU each
    gpus_per_process: int = 1  # > 1 needs device_map: one model sharded over these GPUs
    device_map: Optional[Any] = None  # null: the process's GPU; auto | balanced | sequential | {module: gpu}
    attn_implementation: str = "sdpa"
    torch_compile: str = "off"
    cache_implementation: str = "dynamic"
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    sort_by_length: bool = False  # batch prompts of similar length together (less padding)
    decode_loop: str = "generate"  # generate: transformers' generate | llem: llem's own loop (CUDA graph per step)
    generate_args: Dict[str, Any] = field(default_factory=dict)  # extra GenerationConfig fields

    def __post_init__(self) -> None:
        _require(self.num_processes >= 1, "backend.num_processes", self.num_processes, "an integer >= 1")
        _require(self.gpus_per_process >= 1, "backend.gpus_per_process", self.gpus_per_process, "an integer >= 1")
        _require(self.attn_implementation in ATTENTION, "backend.attn_implementation", self.attn_implementation,
                 ", ".join(ATTENTION))
        _require(self.torch_compile in COMPILE_MODES, "backend.torch_compile", self.torch_compile,
                 ", ".join(COMPILE_MODES))
        _require(self.cache_implementation in CACHES, "backend.cache_implementation", self.cache_implementation,
                 ", ".join(CACHES))
        _require(self.decode_loop in DECODE_LOOPS, "backend.decode_loop", self.decode_loop, ", ".join(DECODE_LOOPS))
        if self.decode_loop == "llem":
            llem_loop = "with backend.decode_loop=llem"
            _require(self.cache_implementation == "static", "backend.cache_implementation", self.cache_implementation,
                     f"static {llem_loop} (its KV cache is static)")
            _require(self.quantization.method == "none", "backend.quantization.method", self.quantization.method,
                     f"none {llem_loop}")
            _require(self.device_map is None, "backend.device_map", self.device_map, f"null {llem_loop}")
            _require(not self.generate_args, "backend.generate_args", dict(self.generate_args),
                     f"empty {llem_loop} (generate is not called)")
        dm = self.device_map
        if dm is not None and not hasattr(dm, "items"):
            _require(dm in DEVICE_MAPS, "backend.device_map", dm,
                     f"null, {', '.join(DEVICE_MAPS)}, or a mapping of module names to GPU indices")
        if self.gpus_per_process > 1:
            _require(dm is not None, "backend.device_map", dm,
                     "auto (or another map) when backend.gpus_per_process > 1, to shard the model")
        if self.num_processes > 1:
            _require(self.gpus_per_process == 1, "backend.gpus_per_process", self.gpus_per_process,
                     "1 with backend.num_processes > 1 (data parallel: one GPU per replica)")
            _require(dm is None, "backend.device_map", dm, "null with backend.num_processes > 1")


_RESERVED = {
    "dtype": "model.dtype",
    "torch_dtype": "model.dtype",
    "revision": "model.revision",
    "trust_remote_code": "model.trust_remote_code",
    "attn_implementation": "backend.attn_implementation",
    "use_flash_attention_2": "backend.attn_implementation",
    "device_map": "backend.device_map",
    "quantization_config": "backend.quantization",
    "load_in_8bit": "backend.quantization.method=bnb_8bit",
    "load_in_4bit": "backend.quantization.method=bnb_nf4",
}
_RESERVED_GENERATE = {
    "max_new_tokens": "output_len",
    "min_new_tokens": "output_len",
    "max_length": "output_len",
    "min_length": "output_len",
    "do_sample": "decoding.temperature",
    "temperature": "decoding.temperature",
    "top_p": "decoding.top_p",
    "top_k": "decoding.top_k",
    "num_beams": "nothing (beam search is not measured)",
    "cache_implementation": "backend.cache_implementation",
    "compile_config": "backend.torch_compile",
    "disable_compile": "backend.torch_compile",
}


def _compile_cache(backend: Any, root: Path) -> CompileCache:
    """With backend.torch_compile: Inductor's FX-graph and AOTAutograd caches (the hit/miss signal) and
    Triton's kernels under the root; nothing is compiled otherwise."""
    if backend.torch_compile == "off":
        return CompileCache()
    inductor = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or root / "inductor").expanduser()
    env = {"TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"), "TRITON_CACHE_DIR": str(root / "triton")}
    return CompileCache(env=env, artifacts=[str(inductor / "fxgraph" / "**" / "*"),
                                            str(inductor / "aotautograd" / "**" / "*")])


class PyTorchServing(Serving):
    """``transformers serve --continuous-batching``: text prompts only, no maximum batch size."""

    apis = ("completions", "chat")

    def check(self) -> None:
        missing = [name for name in ("transformers", "fastapi", "uvicorn") if not installed(name)]
        if missing:
            raise EngineUnavailable(f"transformers serve needs {', '.join(missing)}: "
                                    + install_hint("serving-pytorch"))

    def served_model(self, root: Path) -> Optional[Path]:
        """Random weights: a seeded random checkpoint with llem's id-word tokenizer (written once)."""
        from llem.config import Weights

        m = self.config.model
        if m.weights != Weights.random:
            return None
        from llem.backends._served_model import random_checkpoint

        return random_checkpoint(m.architecture, m.dtype.value, self.config.seed, root)

    def command(self, model_dir: Optional[Path], host: str, port: int) -> ServerLaunch:
        """``transformers serve MODEL --continuous-batching`` on the job's device (it takes text prompts only;
        it has no maximum batch size: ``batch`` sizes its KV cache, ``llem/backends/_serve_cache.py``)."""
        import sys

        b, cfg = self.backend, self.config
        argv = [sys.executable, "-m", "transformers.cli.transformers", "serve",
                str(model_dir) if model_dir else cfg.model.hf_id, "--continuous-batching",
                "--device", "cuda:0" if self.device == "cuda" else "cpu", "--dtype", cfg.model.dtype.value,
                "--attn-implementation", b.attn_implementation, "--host", host, "--port", str(port)]
        if b.torch_compile != "off":
            argv.append("--compile")
        if cfg.model.trust_remote_code:
            argv.append("--trust-remote-code")
        cache, sized = cache_args(cfg)  # its KV cache sized to the workload, not to the host's free memory
        argv += cache
        env = dict(_compile_cache(b, Path(cfg.cache_dir).expanduser()).env)
        warnings = [sized]
        if cfg.batch:
            warnings.append(f"transformers serve takes no maximum batch size: batch={cfg.batch} does not bound how "
                            "many requests it runs at once (load.max_concurrency does, from the client)")
        return ServerLaunch(argv=argv, env=env, prompt="text", id_words=model_dir is not None, warnings=warnings,
                            max_in_flight_null_reason="transformers serve --continuous-batching has no maximum "
                            "batch size: its KV cache bounds how many requests it runs at once")

    def request_extras(self, output_len: int) -> Dict[str, Any]:
        """transformers serve has no ignore_eos: a generation config with min_new_tokens does it."""
        import json

        return {"generation_config": json.dumps({"min_new_tokens": output_len})}


class PyTorchEngine(Engine):
    name = "pytorch"
    config_class = PyTorchConfig
    resolved_class = PyTorchResolved
    package = "transformers"
    reserved_args = _RESERVED
    no_arrivals = None  # static batches of what has arrived (one process; data parallel refuses a rate)
    no_natural_lengths = None  # a batch runs to its longest request; each keeps its own length
    no_conversations = ("it runs static batches, each to its end, so a turn cannot be added when the turn before "
                        "it finishes (backend=vllm and backend=tensorrt follow turns in-process)")
    serving_class = PyTorchServing

    def __init__(self, config: Config, device: str) -> None:
        super().__init__(config, device)
        self._pool = None
        self._runner = None
        self._uuids: Optional[List[str]] = None
        self._counts: Optional[WorkCounts] = None

    @classmethod
    def validate_config(cls, config: Config) -> None:
        super().validate_config(config)
        for key in config.backend.generate_args:
            if key in _RESERVED_GENERATE:
                raise ConfigError(
                    f"backend.generate_args.{key} duplicates llem's own key: use {_RESERVED_GENERATE[key]} instead"
                )
        if config.server.mode == "none" and config.backend.num_processes > 1 and (
                config.load.timed or config.load.max_concurrency is not None):
            raise ConfigError("load.request_rate, load.trace and load.max_concurrency need backend.num_processes=1 "
                              "in-process: "
                              "data-parallel replicas each take a fixed share of the requests, not what has arrived; "
                              "use one process, or server=launch")
        if config.server.mode == "none" and not config.load.timed and config.load.max_concurrency is not None:
            raise ConfigError(
                f"load.max_concurrency={config.load.max_concurrency} with load.request_rate=inf is a closed loop (a "
                "request admitted as another finishes), which backend=pytorch cannot run in-process: it runs static "
                "batches, each to its end. Use batch=N for N requests at a time, backend=vllm, or server=launch")
        q = config.backend.quantization
        if q.method != "none" and config.model.dtype.value == "float32" and q.method != "bnb_8bit":
            log.info("4-bit quantisation with model.dtype=float32: non-quantised layers stay float32")

    @classmethod
    def gpus_required(cls, backend: Any) -> int:
        return int(backend.num_processes) * int(backend.gpus_per_process)

    def compile_cache(self, root: Path) -> CompileCache:
        return _compile_cache(self.backend, root)

    def check(self) -> None:
        """Cheap checks only (no import of torch or transformers: importing them and creating the CUDA
        context is engine start-up, timed and metered in ``load``)."""
        b = self.backend
        needs = ["torch", "transformers"] + (["accelerate"] if b.num_processes > 1 or b.device_map is not None else [])
        missing = [name for name in needs if not installed(name)]
        if missing:
            raise EngineUnavailable(
                f"backend=pytorch needs {', '.join(needs)} ({', '.join(missing)} missing): {install_hint('pytorch')}"
            )
        cuda_only = {"backend.quantization": b.quantization.method != "none",
                     f"backend.attn_implementation={b.attn_implementation}": b.attn_implementation.startswith("flash"),
                     "backend.device_map": b.device_map is not None}
        for key, used in cuda_only.items():
            if used and self.device != "cuda":
                raise ConfigError(f"{key} needs device=cuda (this job runs on the CPU)")
        if b.attn_implementation.startswith("flash"):
            version = b.attn_implementation[-1]
            package = {"2": "flash_attn", "3": "flash_attn_interface"}[version]
            if not installed(package):
                raise EngineUnavailable(f"backend.attn_implementation={b.attn_implementation} needs the flash-attn "
                                        f"{version} package, which is not installed here: install it, or use sdpa")
            if self.config.model.dtype.value == "float32":
                raise ConfigError(f"backend.attn_implementation={b.attn_implementation} needs model.dtype "
                                  "float16 or bfloat16")
        major = (package_version("transformers") or "").split(".")[0]
        if b.decode_loop == "llem" and major.isdigit() and int(major) < 5:
            raise EngineUnavailable("backend.decode_loop=llem needs transformers >= 5 (its static cache API): "
                                    "pip install -U transformers, or use decode_loop=generate")
        if b.quantization.method != "none" and not installed("bitsandbytes"):
            raise EngineUnavailable(
                f"backend.quantization.method={b.quantization.method} needs bitsandbytes: pip install bitsandbytes")

    # -- load / generate ------------------------------------------------------------------
    @classmethod
    def build_key(cls, config: Config) -> Optional[str]:
        """One process: the model, its seed (random weights) and every backend key; with a compiled or static
        decode, the shapes it was built at (batch, lengths) too. Data parallel replicas are built per job."""
        b = config.backend
        if b.num_processes > 1:
            return None
        shaped = b.torch_compile != "off" or b.cache_implementation == "static" or b.decode_loop == "llem"
        shapes = (config.batch, config.input_len, config.output_len_max, config.warmup.output_len) if shaped else None
        return build_text(engine=cls.name, model=config.model, backend=b, seed=config.seed, shapes=shapes,
                          cache_dir=config.cache_dir)

    def reconfigure(self, config: Config) -> None:
        super().reconfigure(config)
        if self._runner is not None:
            self._runner.config, self._runner.backend = config, config.backend

    @classmethod
    def preload(cls) -> None:
        import torch  # noqa: F401  (importing torch opens no CUDA context)
        from transformers import AutoModelForCausalLM  # noqa: F401

    def load(self) -> None:
        if self.backend.num_processes > 1:
            from llem.backends._torch_workers import WorkerPool

            self._pool = WorkerPool(self.config, self.device, self.backend.num_processes)
            self._uuids = [u for uuids in self._pool.call("load") for u in (uuids or [])] or None
        else:
            from llem.backends._torch_runner import Runner

            self._runner = Runner(self.config, "cuda:0" if self.device == "cuda" else "cpu")
            self._runner.load()

    def generate(self, requests: Sequence[Request], output_len: int, progress: Progress) -> List[RequestResult]:
        if self._runner is not None:
            out = self._runner.generate(requests, output_len, progress)
            self._counts = self._runner.counts
            return out
        from llem.backends._torch_workers import merge_counts

        t0 = now()  # replicas take every request at once (a burst: validate_config refuses any other load)
        replies = self._pool.call("generate", list(requests), output_len)
        out = sorted((r for results, _ in replies for r in results), key=lambda r: r.request_id)
        for r in out:
            r.arrival_s = t0  # due when the call started, not when a replica got it
        self._counts = merge_counts([counts for _, counts in replies])
        progress(len(out))
        return out

    def sequences_in_flight(self) -> int:
        return super().sequences_in_flight() * self.backend.num_processes

    def work_counts(self) -> Optional[WorkCounts]:
        return self._counts

    def prefix_cache(self) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
        return None, "backend=pytorch has no prefix cache: every request does its full prefill"

    # -- device -------------------------------------------------------------------------
    def synchronize(self) -> None:
        if self._runner is not None:
            self._runner.synchronize()
        elif self._pool is not None and self.device == "cuda":
            self._pool.call("sync")

    def reset_memory_peak(self) -> None:
        if self._runner is not None:
            self._runner.reset_memory_peak()
        elif self._pool is not None:
            self._pool.call("reset_memory_peak")

    def memory_peak_mib(self) -> Optional[float]:
        """Peak memory allocated by the model on all of the job's GPUs, summed."""
        if self._runner is not None:
            return self._runner.memory_peak_mib()
        peaks = self._pool.call("memory_peak_mib")
        return None if any(p is None for p in peaks) else float(sum(peaks))

    def device_uuids(self) -> Optional[List[str]]:
        return self._runner.device_uuids() if self._runner is not None else self._uuids

    def info(self) -> EngineInfo:
        return self._runner.info() if self._runner is not None else self._pool.call("info")[0]

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
        if self._pool is not None:
            self._pool.close()
        self._runner = self._pool = None


ENGINE = PyTorchEngine
