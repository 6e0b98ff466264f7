"""vLLM's ``LLM`` arguments from llem's config: the keys llem sets itself, the arguments a job passes,
which arguments the installed vLLM accepts (read from its source without importing it), and the same
arguments as ``vllm serve`` flags."""

from __future__ import annotations

import ast
import functools
import json
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional

from llem.backends._engine_args import class_fields, source_classes
from llem.backends._hf_model import weights_args
from llem.config import Config

# engine_args keys llem sets itself → the llem key that sets each
RESERVED = {
    "model": "model.hf_id / model.weights", "tokenizer": "model.tokenizer", "revision": "model.revision",
    "trust_remote_code": "model.trust_remote_code", "dtype": "model.dtype", "load_format": "model.weights",
    "max_num_seqs": "batch", "seed": "seed", "skip_tokenizer_init": "dataset (token ids need no tokenizer)",
    "tensor_parallel_size": "backend.tensor_parallel_size", "pipeline_parallel_size": "backend.pipeline_parallel_size",
    "max_model_len": "backend.max_model_len", "gpu_memory_utilization": "backend.gpu_memory_utilization",
    "enforce_eager": "backend.enforce_eager", "enable_prefix_caching": "backend.enable_prefix_caching",
    "disable_log_stats": "nothing (llem needs the engine's request timestamps)",
}


def llm_kwargs(config: Config, model_path: str, token_ids_only: bool) -> Dict[str, Any]:
    """The arguments of ``vllm.LLM`` for this job (llem's keys, then engine_args)."""
    b = config.backend
    kwargs: Dict[str, Any] = {
        "model": model_path,
        "dtype": config.model.dtype.value,
        "max_num_seqs": config.batch,
        "tensor_parallel_size": b.tensor_parallel_size,
        "pipeline_parallel_size": b.pipeline_parallel_size,
        "max_model_len": b.max_model_len or (config.input_len + config.output_len_max),
        "gpu_memory_utilization": b.gpu_memory_utilization,
        "enforce_eager": b.enforce_eager,
        "enable_prefix_caching": b.enable_prefix_caching,
        "seed": config.seed,
        "disable_log_stats": False,
        "skip_tokenizer_init": token_ids_only,
        "trust_remote_code": config.model.trust_remote_code,
    }
    kwargs.update(weights_args(config.model))
    kwargs.update(b.engine_args)
    return kwargs


def _init(cls: Optional[ast.ClassDef]) -> Optional[ast.FunctionDef]:
    """A parsed class's ``__init__``, if it defines one."""
    methods = [n for n in (cls.body if cls is not None else []) if isinstance(n, ast.FunctionDef)]
    return next((m for m in methods if m.name == "__init__"), None)


def _parameter_names(function: ast.FunctionDef) -> List[str]:
    """The named parameters of a parsed function (``self`` left out)."""
    a = function.args
    return [arg.arg for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs) if arg.arg != "self"]


@functools.cache
def llm_arguments(package: Path) -> FrozenSet[str]:
    """The keyword arguments ``vllm.LLM`` accepts, read from the vllm source under ``package`` without
    importing it (~10 s): the named parameters of ``LLM.__init__`` (vllm/entrypoints/llm.py) and, as it
    forwards ``**kwargs`` to ``EngineArgs``, that dataclass's fields (vllm/engine/arg_utils.py).
    Empty where the source does not have this shape (then nothing is checked)."""
    init = _init(source_classes(package / "entrypoints" / "llm.py").get("LLM"))
    if init is None:
        return frozenset()
    names = set(_parameter_names(init))
    if init.args.kwarg is not None:
        engine_args = class_fields(source_classes(package / "engine" / "arg_utils.py"), "EngineArgs")
        if engine_args is None:
            return frozenset()
        names |= engine_args
    return frozenset(names)


NEGATED_FLAGS = ("enable_prefix_caching",)  # False must be said: vLLM's default is True


def cli_flags(kwargs: Dict[str, Any]) -> List[str]:
    """Engine arguments as ``vllm serve`` flags: ``--kebab-key value``; True → ``--key``; False left out (the
    default) or ``--no-key`` where vLLM's default is True; None left out; mappings and lists as JSON."""
    flags: List[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            if value or key in NEGATED_FLAGS:
                flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (dict, list, tuple)):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags
