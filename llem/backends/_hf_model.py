"""Model facts from a Hugging Face architecture, for engines that load by path (vLLM, TensorRT-LLM):
a ``config.json`` for dummy weights, the parameter count, and the ``LLM`` arguments that say where the
weights come from. Not an engine (underscore module)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional

from llem.config import Config, Weights

log = logging.getLogger(__name__)


def _dummy_config_text(architecture: Dict[str, Any], dtype: str) -> str:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    arch = dict(architecture)
    model_type = arch.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **arch)
    hf_config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]
    hf_config.torch_dtype = dtype
    return json.dumps(hf_config.to_dict(), indent=1, default=str)


def write_dummy_model(architecture: Dict[str, Any], dtype: str, folder: Path) -> Path:
    """A model dir an engine can load with ``load_format="dummy"``: config.json from the architecture."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(_dummy_config_text(architecture, dtype))
    return folder


def shared_dummy_model(architecture: Dict[str, Any], dtype: str, cache_root: Path) -> Path:
    """The dummy model dir under ``cache_root/models``, named by its config's hash and kept: every job of
    the same architecture loads the same path, so an engine's compile cache (keyed by the model path,
    as vLLM's is) is hit by the jobs after the first. Written atomically; never deleted."""
    import hashlib
    import tempfile

    text = _dummy_config_text(architecture, dtype)
    target = cache_root.expanduser() / "models" / hashlib.sha256(text.encode()).hexdigest()[:16]
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    (tmp / "config.json").write_text(text)
    try:
        tmp.rename(target)
    except OSError:  # another job wrote it first: the same content
        (tmp / "config.json").unlink(missing_ok=True)
        tmp.rmdir()
    return target


def count_parameters(config: Config) -> Optional[int]:
    """Parameters of the architecture, counted on the meta device (no memory, no download)."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        if config.model.weights == Weights.random:
            arch = dict(config.model.architecture)
            hf_config = AutoConfig.for_model(arch.pop("model_type"), **arch)
        else:
            hf_config = AutoConfig.from_pretrained(config.model.hf_id, revision=config.model.revision,
                                                   trust_remote_code=config.model.trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
        return sum(p.numel() for p in model.parameters())
    except Exception as exc:  # the count is a nicety; never fail a job over it
        log.info("parameter count unavailable: %s", exc)
        return None


def weights_args(model: Any) -> Dict[str, Any]:
    """The ``LLM`` arguments vLLM and TensorRT-LLM share for the weights: dummy ones for random weights,
    else the revision (and the tokenizer, when model.tokenizer names one)."""
    if model.weights == Weights.random:
        return {"load_format": "dummy"}
    return {"revision": model.revision, **({"tokenizer": model.tokenizer} if model.tokenizer else {})}
