"""One transformers model on one process: load it as configured, generate over static batches.

The PyTorch engine drives one :class:`Runner` in its own process, or one per data-parallel
worker (see ``_torch_workers``). Token times come from a streamer that ``generate`` calls once
per decoding step with the step's tokens already on the host (so the stamp follows the step's
end). A request's service starts with its batch; its TTFT counts from its due time to the
batch's first generated token. With ``backend.decode_loop=llem`` batches run through llem's
own decode loop (``_torch_decode``) instead of ``generate``.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from llem.backends._torch_args import HUB_KWARGS, check_loading_args
from llem.backends._torch_batches import static_batches
from llem.backends.base import EngineInfo, WorkCounts
from llem.config import Config, Weights
from llem.support.errors import DeviceError
from llem.workload.records import Progress, Request, RequestResult, now

log = logging.getLogger(__name__)

QUANT_BITS = {"bnb_8bit": "int8", "bnb_nf4": "nf4", "bnb_fp4": "fp4"}

def _meaning(text: str):
    return field(default=None, metadata={"meaning": text})


@dataclass
class PyTorchResolved:
    """The PyTorch engine's resolved settings (``engine.*`` columns)."""

    device: Optional[str] = _meaning("where the inputs go (the device of the embeddings)")
    device_map: Optional[str] = _meaning("where each module went (accelerate's map), or the device")
    attn_implementation: Optional[str] = _meaning("the attention kernel transformers chose")
    torch_compile: Optional[str] = _meaning("torch.compile mode (off: not compiled)")
    cache_implementation: Optional[str] = _meaning("dynamic or static KV cache")
    compile_s: Optional[float] = _meaning("compilation and graph capture at the measured shapes, in load (s)")
    decode_loop: Optional[str] = _meaning("generate (transformers) or llem (llem's own loop)")
    cuda_graph: Optional[bool] = _meaning("decode_loop=llem: whether the step was captured as a CUDA graph")
    cuda_graph_error: Optional[str] = _meaning("why the step could not be captured, if so")
    num_processes: Optional[int] = _meaning("data-parallel replicas")
    sort_by_length: Optional[bool] = _meaning("prompts batched by length")
    quantization: Optional[str] = _meaning("bitsandbytes method, or none")


class _TokenClock:
    """A transformers streamer that stamps the host time at which every generated step reaches the
    host. transformers hands the streamer tokens already copied to the host (a blocking copy, or one
    step late where it defers its stop check so the host can queue the next step), so no extra
    synchronisation happens here: one would keep the host from queuing the next step."""

    def __init__(self) -> None:
        self._prompt_seen = False
        self.times: List[float] = []

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate first hands the streamer the prompt
            self._prompt_seen = True
            return
        self.times.append(now())

    def end(self) -> None:
        pass


class Runner:
    """A model on ``device`` (``cpu``, ``cuda:N``; with ``backend.device_map`` the first of its GPUs)."""

    def __init__(self, config: Config, device: str) -> None:
        import torch

        self.torch = torch
        self.config = config
        self.backend = config.backend
        self.device = torch.device(device)
        self.gpu_ids: List[int] = []
        if self.device.type == "cuda":
            first = self.device.index or 0
            self.gpu_ids = list(range(first, first + self.backend.gpus_per_process))
        self.model = None
        self.compile_s: Optional[float] = None
        self.decoder = None  # llem's own decode loop, with backend.decode_loop=llem
        self.counts: Optional[WorkCounts] = None

    # -- load ---------------------------------------------------------------------------
    def _quantization(self, dtype) -> Optional[Any]:
        q = self.backend.quantization
        if q.method == "none":
            return None
        from transformers import BitsAndBytesConfig

        compute = getattr(self.torch, q.compute_dtype) if q.compute_dtype else dtype
        if q.method == "bnb_8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=QUANT_BITS[q.method],
                                  bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=q.double_quant)

    def _device_map(self) -> Any:
        dm = self.backend.device_map
        if dm is None:
            return str(self.device)
        return dict(dm) if not isinstance(dm, str) else dm

    def load(self) -> None:
        torch = self.torch
        from transformers import AutoConfig, AutoModelForCausalLM

        model_cfg = self.config.model
        dtype = getattr(torch, model_cfg.dtype.value)
        torch.manual_seed(self.config.seed)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise DeviceError("device=cuda was asked for, but torch sees no GPU (a CPU-only torch build, or "
                                  "check CUDA_VISIBLE_DEVICES)")
            torch.cuda.set_device(self.device)
        args = dict(self.backend.engine_args)
        args["attn_implementation"] = self.backend.attn_implementation
        quant = self._quantization(dtype)
        if quant is not None:
            args["quantization_config"] = quant
        pretrained = dict(revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
        if model_cfg.weights == Weights.random:
            arch = dict(model_cfg.architecture)
            hf_config = AutoConfig.for_model(arch.pop("model_type"), **arch)
            check_loading_args(self.backend.engine_args, lambda: hf_config, from_config=True)
            if quant is None and self.backend.device_map is None:
                with self.device:  # initialise the random weights where they will run
                    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, **args)
            else:  # quantisation and sharding happen on load: go through a temporary checkpoint
                model = self._random_via_checkpoint(hf_config, dtype, args)
        else:
            check_loading_args(self.backend.engine_args, self._pretrained_config, from_config=False)
            model = AutoModelForCausalLM.from_pretrained(model_cfg.hf_id, dtype=dtype, device_map=self._device_map(),
                                                         **pretrained, **args)
        self.model = model.eval()
        self.device = next(p.device for p in model.parameters())  # inputs go where the embeddings are
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.model.config.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.model.config.pad_token_id
        self.pad = pad if pad is not None else (min(self.eos) if self.eos else 0)
        if self.backend.decode_loop == "llem":
            self._prepare_decoder()
        else:
            self._prepare_compile()
        self.synchronize()

    def _pretrained_config(self) -> Optional[Any]:
        """The pretrained model's config, read as from_pretrained reads it (the hub arguments of engine_args
        included); None where it cannot be read: from_pretrained then reports why."""
        from transformers import AutoConfig

        m = self.config.model
        hub = {k: v for k, v in self.backend.engine_args.items() if k in HUB_KWARGS}
        try:
            return AutoConfig.from_pretrained(m.hf_id, revision=m.revision, trust_remote_code=m.trust_remote_code,
                                              **hub)
        except Exception as exc:  # any failure here is from_pretrained's to report, with its own message
            log.debug("config of %s not read (%s): backend.engine_args not checked before load", m.hf_id, exc)
            return None

    def _random_via_checkpoint(self, hf_config, dtype, args: Dict[str, Any]):
        """Random weights saved to a temporary checkpoint and loaded back with the quantisation and
        device map, so bitsandbytes and accelerate treat them exactly as they treat real weights."""
        from transformers import AutoModelForCausalLM

        init_on = "cpu" if self.backend.device_map is not None else self.device
        plain = {k: v for k, v in args.items() if k != "quantization_config"}
        with tempfile.TemporaryDirectory(prefix="llem-random-") as tmp:
            with self.torch.device(init_on):
                model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, **plain)
            model.save_pretrained(tmp)
            del model
            if self.device.type == "cuda":
                self.torch.cuda.empty_cache()
            return AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, device_map=self._device_map(), **args)

    def _prepare_compile(self) -> None:
        """Static KV cache and torch.compile, compiled here (the load phase) at the measured shapes."""
        from transformers import CompileConfig

        mode = self.backend.torch_compile
        gen = self.model.generation_config
        if self.backend.cache_implementation == "static":
            gen.cache_implementation = "static"
            if mode == "off":
                gen.disable_compile = True  # transformers would otherwise compile a static-cache decode step
            else:
                gen.compile_config = CompileConfig(mode=mode)
        elif mode != "off":
            self.model.forward = self.torch.compile(self.model.forward, mode=mode, dynamic=True)
        if mode == "off":
            return
        t0 = now()
        batch = self.config.batch
        ids = [Request(-1 - i, [self._filler_id()] * self.config.input_len) for i in range(batch)]
        self.generate(ids, self.config.output_len_max, lambda n: None)
        self.compile_s = now() - t0
        log.info("torch.compile (%s, %s cache): %.1f s", mode, self.backend.cache_implementation, self.compile_s)

    def _prepare_decoder(self) -> None:
        """llem's decode loop at the measured shapes: compiled (if asked) and captured here, in the
        load phase, then run once over a filler batch."""
        from llem.backends._torch_decode import Decoder

        cfg = self.config
        t0 = now()
        capacity = max(cfg.output_len_max, cfg.warmup.output_len or 0)
        self.decoder = Decoder(self.model, cfg.batch, cfg.input_len, capacity, sorted(self.eos), cfg.decoding,
                               compile_mode=self.backend.torch_compile)
        filler = [Request(-1 - i, [self._filler_id()] * cfg.input_len) for i in range(cfg.batch)]
        ids, mask = self._batch_tensors(filler, cfg.batch, cfg.input_len)
        self.decoder.prepare(ids, mask)
        self.decoder.run(ids, mask, cfg.output_len_max)
        self.compile_s = now() - t0
        log.info("llem decode loop (torch.compile %s, CUDA graph %s): ready in %.1f s", self.backend.torch_compile,
                 "captured" if self.decoder.graph is not None else "not used", self.compile_s)

    def _filler_id(self) -> int:
        specials = self.eos | {self.pad}
        return next(i for i in range(3, 1000) if i not in specials)

    # -- generate -----------------------------------------------------------------------
    def _batch_tensors(self, batch: Sequence[Request], rows: int, width: int):
        torch = self.torch
        ids = torch.full((rows, width), self.pad, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        for row in range(rows):  # left padding: generation continues from the right edge
            req = batch[min(row, len(batch) - 1)]  # rows past the batch repeat its last request
            ids[row, width - req.input_tokens :] = torch.tensor(req.token_ids, dtype=torch.long)
            mask[row, width - req.input_tokens :] = 1
        return ids.to(self.device), mask.to(self.device)

    def count_generated(self, new_tokens) -> List[int]:
        """Tokens really generated per row: up to and including the first EOS, else all."""
        counts = []
        for row in new_tokens.tolist():
            n = len(row)
            for i, tok in enumerate(row):
                if tok in self.eos and i < n - 1:
                    n = i + 1
                    break
            counts.append(n)
        return counts

    def _generation_config(self, output_len: int):
        from transformers import GenerationConfig

        decoding = self.config.decoding
        sampling = {} if decoding.greedy else {"temperature": decoding.temperature, "top_p": decoding.top_p,
                                                "top_k": decoding.top_k or None}
        base = self.model.generation_config
        extra = {k: getattr(base, k) for k in ("cache_implementation", "compile_config", "disable_compile")
                 if getattr(base, k, None) is not None}
        return GenerationConfig(
            max_new_tokens=output_len,
            min_new_tokens=output_len,  # EOS is suppressed until output_len: equal work on every engine
            do_sample=not decoding.greedy,
            num_beams=1,
            **sampling,
            eos_token_id=sorted(self.eos) or None,
            pad_token_id=self.pad,
            **extra,
            **self.backend.generate_args,
        )

    def generate(self, requests: Sequence[Request], output_len: Optional[int], progress: Progress
                 ) -> List[RequestResult]:
        """Static batches of up to ``batch`` requests (and ``load.max_concurrency``), each run to its end, formed
        by ``_torch_batches.static_batches`` (all at once, or what has arrived); each request's latencies count
        from its due time (a burst: the call's start). With a static cache every
        batch is padded to ``batch`` rows × ``input_len`` so shapes never change. A batch runs
        to its longest request's length; each request keeps its own (the rest is padding work)."""
        cfg = self.config
        size = min(cfg.batch, cfg.load.max_concurrency or cfg.batch)
        results: List[RequestResult] = []
        self._work = [0, 0]
        for b, (batch, t0) in enumerate(static_batches(requests, size, self.backend.sort_by_length)):
            results += self._run_batch(batch, output_len, b, t0)
            progress(len(batch))
        self.counts = WorkCounts(*self._work)
        return sorted(results, key=lambda r: r.request_id)

    def _run_batch(self, batch: List[Request], output_len: Optional[int], b: int,
                   t0: float) -> List[RequestResult]:
        cfg = self.config
        lengths = [output_len if output_len is not None else (r.output_len or cfg.output_len_max) for r in batch]
        steps = max(lengths)
        static = self.backend.cache_implementation == "static"
        rows = cfg.batch if static else len(batch)
        width = max(cfg.input_len, *(r.input_tokens for r in batch)) if static else max(r.input_tokens for r in batch)
        ids, mask = self._batch_tensors(batch, rows, width)
        self._work[0] += rows * (width + steps)
        self._work[1] += sum(r.input_tokens for r in batch) + sum(lengths)
        start = now()
        if self.decoder is not None:
            new_tokens, step_times = self.decoder.run(ids, mask, steps)
        else:
            clock = _TokenClock()
            with self.torch.inference_mode():
                out = self.model.generate(input_ids=ids, attention_mask=mask,
                                          generation_config=self._generation_config(steps), streamer=clock)
            self.synchronize()
            new_tokens, step_times = out[:, width:], clock.times
        end = now()
        out_rows = []
        for req, n, own in zip(batch, self.count_generated(new_tokens[: len(batch)]), lengths):
            times = step_times[:min(n, own)]
            out_rows.append(RequestResult(
                request_id=req.request_id, input_tokens=req.input_tokens, output_tokens=len(times) if times else n,
                start_s=start, end_s=times[-1] if times else end, first_token_s=times[0] if times else None,
                token_times_s=times, batch_index=b, output_len_requested=own,
                arrival_s=t0 + (req.arrival_s or 0.0)))  # its due time
        return out_rows

    # -- device -------------------------------------------------------------------------
    def synchronize(self) -> None:
        for i in self.gpu_ids:
            self.torch.cuda.synchronize(i)

    def reset_memory_peak(self) -> None:
        for i in self.gpu_ids:
            self.torch.cuda.reset_peak_memory_stats(i)

    def memory_peak_mib(self) -> Optional[float]:
        if not self.gpu_ids:
            return None
        return sum(self.torch.cuda.max_memory_allocated(i) for i in self.gpu_ids) / 2**20

    def device_uuids(self) -> Optional[List[str]]:
        uuids = [getattr(self.torch.cuda.get_device_properties(i), "uuid", None) for i in self.gpu_ids]
        return [f"GPU-{u}" for u in uuids] if uuids and None not in uuids else None

    def info(self) -> EngineInfo:
        import torch
        import transformers

        params = list(self.model.parameters())
        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        if torch.version.cuda:
            versions["torch_cuda"] = torch.version.cuda
        q = self.backend.quantization
        if q.method != "none":
            import bitsandbytes

            versions["bitsandbytes"] = bitsandbytes.__version__
        dtype = self.config.model.dtype.value
        b = self.backend
        resolved = PyTorchResolved(
            device=str(self.device),
            device_map=str(getattr(self.model, "hf_device_map", None) or self._device_map()),
            attn_implementation=getattr(self.model.config, "_attn_implementation", None),
            torch_compile=b.torch_compile, cache_implementation=b.cache_implementation, compile_s=self.compile_s,
            decode_loop=b.decode_loop, num_processes=b.num_processes, sort_by_length=b.sort_by_length,
            quantization=q.method)
        if self.decoder is not None:
            resolved.cuda_graph = self.decoder.graph is not None
            resolved.cuda_graph_error = self.decoder.graph_error
        return EngineInfo(
            versions=versions,
            resolved=resolved,
            num_parameters=_parameter_count(self.model, params),
            weight_bytes=sum(p.numel() * p.element_size() for p in params),
            weight_precision=QUANT_BITS.get(q.method, dtype),
            compute_precision=(q.compute_dtype or dtype) if q.method in ("bnb_nf4", "bnb_fp4") else dtype,
        )

    def close(self) -> None:
        self.model = self.decoder = None
        if self.gpu_ids:
            self.torch.cuda.empty_cache()


def _parameter_count(model, params) -> int:
    """Parameters of the model as defined (4-bit weights are stored two per byte, so count by config)."""
    try:
        return int(model.num_parameters())
    except Exception:
        return sum(p.numel() for p in params)
