"""The PyTorch engine's ``backend.engine_args`` check: what transformers' loading takes, known only once
transformers is imported, so it runs as load starts, before any weights are built."""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, FrozenSet

from llem.backends._engine_args import reject_unknown_args
from llem.support.errors import ConfigError

# What from_pretrained takes through **kwargs, beyond the keyword parameters its signature names (cache_dir,
# token, revision, use_safetensors, … read with inspect): the names PreTrainedModel.from_pretrained pops
# from kwargs in transformers' modeling_utils.py, 4.50 to 5.x (a union: a name one version lacks passes
# here and fails there in transformers), and code_revision, which AutoModel*.from_pretrained pops.
# Left out: private names (_fast_init, _commit_hash, …) and mirror, a no-op. Whatever else it is given
# becomes a config override where the model's config has that attribute (checked separately).
FROM_PRETRAINED_KWARGS = frozenset({
    # the checkpoint and where it comes from
    "state_dict", "subfolder", "variant", "gguf_file", "key_mapping", "proxies", "use_auth_token", "resume_download",
    "from_tf", "from_flax", "trust_remote_code", "code_revision", "adapter_kwargs", "adapter_name",
    "generation_config", "output_loading_info", "tqdm_class",
    # precision, placement and memory while loading
    "dtype", "torch_dtype", "device_map", "max_memory", "offload_folder", "offload_state_dict", "offload_buffers",
    "low_cpu_mem_usage", "quantization_config", "load_in_8bit", "load_in_4bit",
    # kernels and tensor parallelism
    "attn_implementation", "experts_implementation", "use_flash_attention_2", "use_kernels", "kernel_config",
    "allow_all_kernels", "tp_plan", "tp_size", "device_mesh", "distributed_config",
})
# from_pretrained's arguments for reaching the hub, which reading the config alone needs too
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "subfolder", "token")
# What from_config takes (llem builds random weights with it) besides dtype, torch_dtype and
# attn_implementation, which llem sets from its own keys: PreTrainedModel._from_config pops these; anything
# else goes to the model's __init__, which takes the config alone (AutoModel*.from_config pops
# code_revision only for remote code).
FROM_CONFIG_KWARGS = frozenset({"experts_implementation"})


def from_pretrained_kwargs() -> FrozenSet[str]:
    """Every loading argument from_pretrained takes: its signature's keyword parameters and the documented
    ``**kwargs`` above (needs transformers, imported by then: this runs in load)."""
    import inspect

    from transformers import PreTrainedModel

    params = inspect.signature(PreTrainedModel.from_pretrained).parameters.values()
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return frozenset(named - {"pretrained_model_name_or_path"}) | FROM_PRETRAINED_KWARGS


def check_loading_args(engine_args: Dict[str, Any], hf_config: Callable[[], Any], from_config: bool) -> None:
    """Raise ConfigError for an engine_args key transformers would not take, before any weights are built:
    loading arguments, else attributes of the model's config (from_pretrained applies those as overrides).
    ``hf_config`` gives the config, called only when a key is not a loading argument; None from it skips
    the check. With ``from_config`` (random weights) only from_config's arguments pass."""
    loading = from_pretrained_kwargs()
    hf_config = functools.cache(hf_config)  # read once, and only if needed
    for key in engine_args:
        if key in (FROM_CONFIG_KWARGS if from_config else loading):
            continue
        config = hf_config()
        if config is None:
            return
        if from_config and (key in loading or hasattr(config, key)):
            raise ConfigError(_from_config_error(key, key in loading))
        if not hasattr(config, key):
            names = f"loading arguments, or {type(config).__name__} attributes"
            reject_unknown_args([key], loading | set(config.to_dict()), f"transformers' from_pretrained ({names})")


def _from_config_error(key: str, loading: bool) -> str:
    """Why a key from_pretrained would take fails with random weights (built with from_config)."""
    prefix = f"backend.engine_args.{key} is "
    if loading:
        return (prefix + "a from_pretrained argument, and model.weights=random builds the model with from_config "
                f"instead: allowed with random weights: {', '.join(sorted(FROM_CONFIG_KWARGS))}")
    return (prefix + "an attribute of the model's config, which model.weights=random builds from "
            f"model.architecture: set model.architecture.{key} instead")
