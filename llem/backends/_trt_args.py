"""TensorRT-LLM's ``LLM`` arguments from llem's config: the keys llem sets itself, which arguments its
source accepts (read without importing it), the plain values a job passes, their conversion to TensorRT-LLM's
config objects, the name a built engine is cached under, and the same arguments as ``trtllm-serve``'s."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, FrozenSet, List

from llem.backends._engine_args import class_fields, source_classes
from llem.backends._hf_model import weights_args
from llem.config import Config

# engine_args keys llem sets itself → the llem key that sets each
RESERVED = {
    "model": "model.hf_id / model.weights", "tokenizer": "model.tokenizer", "revision": "model.revision",
    "trust_remote_code": "model.trust_remote_code", "dtype": "model.dtype", "load_format": "model.weights",
    "max_batch_size": "batch", "skip_tokenizer_init": "dataset (token ids need no tokenizer)",
    "tensor_parallel_size": "backend.tensor_parallel_size", "pipeline_parallel_size": "backend.pipeline_parallel_size",
    "max_seq_len": "backend.max_seq_len", "max_num_tokens": "backend.max_num_tokens",
    "kv_cache_config": "backend.kv_cache_free_gpu_memory_fraction / backend.enable_block_reuse",
    "quant_config": "backend.quantization / backend.kv_cache_dtype", "backend": "backend.llm_backend",
    "return_perf_metrics": "nothing (llem needs the executor's request timestamps)",
}

# llem's names → tensorrt_llm.llmapi.QuantAlgo members
QUANT_ALGOS = {"none": None, "fp8": "FP8", "fp8_block": "FP8_BLOCK_SCALES", "nvfp4": "NVFP4",
               "w8a16": "W8A16", "w4a16": "W4A16", "w4a16_awq": "W4A16_AWQ", "w8a8_sq": "W8A8_SQ_PER_CHANNEL"}
KV_CACHE_ALGOS = {"auto": None, "fp8": "FP8", "int8": "INT8"}

# backend.llm_backend → the pydantic class (tensorrt_llm/llmapi/llm_args.py) that checks LLM's arguments
ARGS_CLASSES = {"pytorch": "TorchLlmArgs", "trt": "TrtLlmArgs"}


@functools.cache
def llm_arguments(package: Path, llm_backend: str) -> FrozenSet[str]:
    """The keyword arguments ``LLM`` accepts with ``llm_backend``, read from the tensorrt_llm source under
    ``package`` without importing it: the fields of its args class and of the classes it derives from in
    llmapi/llm_args.py (BaseLlmArgs), i.e. the ``model_fields`` TensorRT-LLM checks LLM's kwargs against.
    Private attributes and ``model_config`` are not fields. Empty where the source has another shape."""
    classes = source_classes(package / "llmapi" / "llm_args.py")
    fields = class_fields(classes, ARGS_CLASSES[llm_backend], fieldless=("BaseModel", "StrictBaseModel"))
    return frozenset(n for n in fields or () if not n.startswith("_") and n != "model_config")


def llm_kwargs(config: Config, model_path: str, token_ids_only: bool) -> Dict[str, Any]:
    """The arguments of ``LLM`` as plain values (llem's keys, then engine_args); :func:`to_api`
    turns the nested ones into TensorRT-LLM's config objects. Shown by ``engine.*`` columns."""
    b = config.backend
    kwargs: Dict[str, Any] = {
        "model": model_path,
        "dtype": config.model.dtype.value,
        "max_batch_size": config.batch,
        "tensor_parallel_size": b.tensor_parallel_size,
        "pipeline_parallel_size": b.pipeline_parallel_size,
        "max_seq_len": b.max_seq_len or (config.input_len + config.output_len_max),
        "kv_cache_config": {"free_gpu_memory_fraction": b.kv_cache_free_gpu_memory_fraction,
                            "enable_block_reuse": b.enable_block_reuse},
        "skip_tokenizer_init": token_ids_only,
        "trust_remote_code": config.model.trust_remote_code,
        "return_perf_metrics": True,
    }
    if b.max_num_tokens is not None:
        kwargs["max_num_tokens"] = b.max_num_tokens
    quant = {"quant_algo": QUANT_ALGOS[b.quantization], "kv_cache_quant_algo": KV_CACHE_ALGOS[b.kv_cache_dtype]}
    if any(quant.values()):
        kwargs["quant_config"] = quant
    kwargs.update(weights_args(config.model))
    kwargs.update(b.engine_args)
    return kwargs


def to_api(kwargs: Dict[str, Any], llmapi: Any) -> Dict[str, Any]:
    """Plain kwargs → TensorRT-LLM objects (KvCacheConfig, QuantConfig with QuantAlgo members)."""
    out = dict(kwargs)
    out["kv_cache_config"] = llmapi.KvCacheConfig(**kwargs["kv_cache_config"])
    if "quant_config" in kwargs:
        q = kwargs["quant_config"]
        out["quant_config"] = llmapi.QuantConfig(**{k: getattr(llmapi.QuantAlgo, v) for k, v in q.items() if v})
    return out


def cache_key(kwargs: Dict[str, Any], version: str) -> str:
    """A name for a built engine: every build setting and the TensorRT-LLM version."""
    text = json.dumps({**kwargs, "tensorrt_llm": version}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def serve_argv(config: Config, model: str, host: str, port: int) -> List[str]:
    """``trtllm-serve MODEL`` with its documented flags; the other LLM arguments (load_format, KV-cache and
    quantisation configs, engine_args) in the YAML file ``--extra_llm_api_options`` reads (under cache_dir)."""
    import shutil
    import sys

    import yaml

    kwargs = llm_kwargs(config, model, token_ids_only=False)
    kwargs.pop("model")
    flags = {"--backend": "tensorrt" if config.backend.llm_backend == "trt" else "pytorch",
             "--max_batch_size": kwargs.pop("max_batch_size"), "--max_seq_len": kwargs.pop("max_seq_len"),
             "--tp_size": kwargs.pop("tensor_parallel_size"), "--pp_size": kwargs.pop("pipeline_parallel_size"),
             "--kv_cache_free_gpu_memory_fraction": kwargs["kv_cache_config"].pop("free_gpu_memory_fraction")}
    for key in ("skip_tokenizer_init", "return_perf_metrics"):
        kwargs.pop(key, None)
    extra = Path(config.cache_dir).expanduser() / "served" / f"trtllm-{cache_key(kwargs, 'serve')}.yaml"
    extra.parent.mkdir(parents=True, exist_ok=True)
    extra.write_text(yaml.safe_dump(kwargs, sort_keys=True))
    exe = shutil.which("trtllm-serve")
    argv = ([exe] if exe else [sys.executable, "-m", "tensorrt_llm.commands.serve"]) + [model, "--host", host,
                                                                                        "--port", str(port)]
    for flag, value in flags.items():
        if value is not None:  # batch null: no --max_batch_size, the server's own default
            argv += [flag, str(value)]
    if kwargs.get("trust_remote_code"):
        argv.append("--trust_remote_code")
    return argv + ["--extra_llm_api_options", str(extra)]
