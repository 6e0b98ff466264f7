"""Model facts from a Hugging Face architecture, for engines that load by path (vLLM, TensorRT-LLM):
a ``config.json`` for dummy weights, and the parameter count. Not an engine (underscore module)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional

from llem.config import Config, Weights

log = logging.getLogger(__name__)


def write_dummy_model(architecture: Dict[str, Any], dtype: str, folder: Path) -> Path:
    """A model dir an engine can load with ``load_format="dummy"``: config.json from the architecture."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    arch = dict(architecture)
    model_type = arch.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **arch)
    hf_config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]
    hf_config.torch_dtype = dtype
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config.to_dict(), indent=1, default=str))
    return folder


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
