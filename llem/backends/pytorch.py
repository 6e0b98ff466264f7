"""PyTorch engine: transformers ``generate`` over static batches, one device.

Token times come from a streamer that ``generate`` calls once per decoding step with the
step's tokens already copied to the host (so the step has finished on the device); the
streamer also synchronises the device before stamping the time. TTFT of a request is the
time from its batch's start to the batch's first generated token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from llem.backends.base import Engine, EngineInfo, Progress, RequestResult, now
from llem.config import BackendConfig, Config, Weights
from llem.errors import ConfigError, DeviceError, EngineUnavailable
from llem.workload import Request

log = logging.getLogger(__name__)


@dataclass
class PyTorchConfig(BackendConfig):
    """transformers + accelerate. ``engine_args`` go to from_pretrained/from_config."""

    name: str = "pytorch"
    generate_args: Dict[str, Any] = field(default_factory=dict)  # extra GenerationConfig fields


_RESERVED = {
    "dtype": "model.dtype",
    "torch_dtype": "model.dtype",
    "revision": "model.revision",
    "trust_remote_code": "model.trust_remote_code",
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
}


class PyTorchEngine(Engine):
    name = "pytorch"
    config_class = PyTorchConfig
    reserved_args = _RESERVED

    @classmethod
    def validate_config(cls, config: Config) -> None:
        super().validate_config(config)
        for key in config.backend.generate_args:
            if key in _RESERVED_GENERATE:
                raise ConfigError(
                    f"backend.generate_args.{key} duplicates llem's own key: use {_RESERVED_GENERATE[key]} instead"
                )

    def check(self) -> None:
        try:
            import torch
            import transformers  # noqa: F401
        except ImportError as exc:
            raise EngineUnavailable(
                f"backend=pytorch needs torch and transformers ({exc}): pip install 'llem[pytorch]'"
            ) from None
        if self.device == "cuda" and not torch.cuda.is_available():
            raise DeviceError("device=cuda was asked for, but torch sees no GPU (check CUDA_VISIBLE_DEVICES)")
        self._torch = torch

    # -- load ---------------------------------------------------------------------------
    def load(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        model_cfg = self.config.model
        dtype = getattr(torch, model_cfg.dtype.value)
        torch.manual_seed(self.config.seed)
        self._device = torch.device("cuda:0" if self.device == "cuda" else "cpu")
        args = dict(self.backend.engine_args)
        if model_cfg.weights == Weights.random:
            arch = dict(model_cfg.architecture)
            hf_config = AutoConfig.for_model(arch.pop("model_type"), **arch)
            with self._device:  # initialise the random weights where they will run
                model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, **args)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                model_cfg.hf_id,
                revision=model_cfg.revision,
                trust_remote_code=model_cfg.trust_remote_code,
                dtype=dtype,
                device_map=str(self._device),
                **args,
            )
        self.model = model.eval()
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.model.config.eos_token_id
        self._eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.model.config.pad_token_id
        self._pad = pad if pad is not None else (min(self._eos) if self._eos else 0)
        self.synchronize()

    # -- generate -----------------------------------------------------------------------
    def _batch_tensors(self, batch: Sequence[Request]):
        torch = self._torch
        width = max(r.input_tokens for r in batch)
        ids = torch.full((len(batch), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, req in enumerate(batch):  # left padding: generation continues from the right edge
            ids[row, width - req.input_tokens :] = torch.tensor(req.token_ids, dtype=torch.long)
            mask[row, width - req.input_tokens :] = 1
        return ids.to(self._device), mask.to(self._device), width

    def _count_generated(self, new_tokens) -> List[int]:
        """Tokens really generated per row: up to and including the first EOS, else all."""
        counts = []
        for row in new_tokens.tolist():
            n = len(row)
            for i, tok in enumerate(row):
                if tok in self._eos and i < n - 1:
                    n = i + 1
                    break
            counts.append(n)
        return counts

    def generate(self, requests: Sequence[Request], output_len: int, progress: Progress) -> List[RequestResult]:
        from transformers import GenerationConfig

        decoding = self.config.decoding
        sampling = {} if decoding.greedy else {"temperature": decoding.temperature, "top_p": decoding.top_p,
                                                "top_k": decoding.top_k or None}
        gen_cfg = GenerationConfig(
            max_new_tokens=output_len,
            min_new_tokens=output_len,  # EOS is suppressed until output_len: equal work on every engine
            do_sample=not decoding.greedy,
            num_beams=1,
            **sampling,
            eos_token_id=sorted(self._eos) or None,
            pad_token_id=self._pad,
            **self.backend.generate_args,
        )
        batch_size = self.config.batch
        results: List[RequestResult] = []
        for b, first in enumerate(range(0, len(requests), batch_size)):
            batch = requests[first : first + batch_size]
            ids, mask, width = self._batch_tensors(batch)
            clock = _TokenClock(self.synchronize)
            start = now()
            with self._torch.inference_mode():
                out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg, streamer=clock)
            self.synchronize()
            end = now()
            counts = self._count_generated(out[:, width:])
            for req, n in zip(batch, counts):
                times = clock.times[:n]
                results.append(
                    RequestResult(
                        request_id=req.request_id,
                        input_tokens=req.input_tokens,
                        output_tokens=n,
                        start_s=start,
                        end_s=times[-1] if times else end,
                        first_token_s=times[0] if times else None,
                        token_times_s=times,
                        batch_index=b,
                    )
                )
            progress(len(batch))
        return results

    # -- device -------------------------------------------------------------------------
    def synchronize(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.synchronize()

    def reset_memory_peak(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.reset_peak_memory_stats()

    def memory_peak_mb(self) -> Optional[float]:
        if self.device != "cuda":
            return None
        return self._torch.cuda.max_memory_allocated() / 2**20

    def device_uuids(self) -> Optional[List[str]]:
        if self.device != "cuda":
            return None
        uuid = getattr(self._torch.cuda.get_device_properties(0), "uuid", None)
        return [f"GPU-{uuid}"] if uuid is not None else None

    def info(self) -> EngineInfo:
        import torch
        import transformers

        params = sum(p.numel() for p in self.model.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        if torch.version.cuda:
            versions["torch_cuda"] = torch.version.cuda
        return EngineInfo(
            versions=versions,
            resolved_args={
                "device": str(self._device),
                "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
                **self.backend.engine_args,
            },
            num_parameters=params,
            weight_bytes=weight_bytes,
        )

    def close(self) -> None:
        self.model = None
        if self.device == "cuda":
            self._torch.cuda.empty_cache()


class _TokenClock:
    """A transformers streamer that stamps the host time of every generated step."""

    def __init__(self, sync) -> None:
        self._sync = sync
        self._prompt_seen = False
        self.times: List[float] = []

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate first hands the streamer the prompt
            self._prompt_seen = True
            return
        self._sync()
        self.times.append(now())

    def end(self) -> None:
        pass


ENGINE = PyTorchEngine
