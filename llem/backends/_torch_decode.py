"""llem's own decode loop for the PyTorch engine (``backend.decode_loop=llem``).

transformers' ``generate`` does host work every step (logits processors, stopping criteria,
mask and cache bookkeeping, a device-to-host copy of the new tokens), so at batch 1 the GPU
waits on the host and decode runs far below the memory-bandwidth limit. This loop keeps the
whole step on the device:

- a static KV cache of ``rows × (width + output_len)``, allocated once and reset per batch;
- one step = forward of the last tokens + token choice + in-place update of its own inputs
  (next token ids, positions, output column; the cache advances its own length), so steps
  chain with no host work; the prefill (one forward of the prompts) runs eagerly;
- on CUDA the step is captured once as a CUDA graph (after ``torch.compile`` when
  ``backend.torch_compile`` is set) and each step is one graph replay; on the CPU it runs plainly;
- token times come from a CUDA event recorded after every step, read after the batch ends and
  placed on the host clock from an event recorded at the batch's synchronised start.

Semantics match llem's ``generate`` path: left-padded prompts, position ids from the attention
mask, EOS suppressed (exactly ``output_len`` tokens), greedy or temperature → top-k → top-p sampling.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, List, Optional, Sequence, Tuple

from llem.workload.records import now

log = logging.getLogger(__name__)

# backend.torch_compile → the inductor mode used under llem's own CUDA graph (which replaces
# inductor's: graphs inside a graph capture are not allowed)
GRAPH_SAFE_MODES = {"default": "default", "reduce-overhead": "default",
                    "max-autotune": "max-autotune-no-cudagraphs"}


class Decoder:
    """A fixed-shape decode loop for ``rows`` sequences of prompt ``width`` and up to ``output_len`` new tokens."""

    def __init__(self, model, rows: int, width: int, output_len: int, eos: Sequence[int], decoding: Any,
                 compile_mode: str = "off") -> None:
        import torch

        self.torch, self.model = torch, model
        self.rows, self.width, self.output_len = rows, width, output_len
        self.decoding = decoding
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda"
        dev, long = self.device, torch.long
        self.max_len = width + output_len
        from transformers import StaticCache

        self.cache = StaticCache(config=model.config, max_cache_len=self.max_len)
        self.eos = torch.tensor(sorted(eos), dtype=long, device=dev) if eos else None
        # the step's own inputs, updated in place by the step itself
        self.ids = torch.zeros((rows, 1), dtype=long, device=dev)
        self.pos = torch.zeros((rows, 1), dtype=long, device=dev)
        self.column = torch.zeros((1,), dtype=long, device=dev)
        self.mask = torch.ones((rows, self.max_len), dtype=long, device=dev)
        self.tokens = torch.zeros((rows, output_len), dtype=long, device=dev)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "past_key_values" if "past_key_values" in params else "cache"  # renamed in transformers 5.2x
        self._step_fn = self._step
        if compile_mode != "off":
            mode = GRAPH_SAFE_MODES[compile_mode] if self.cuda else compile_mode
            self._step_fn = torch.compile(self._step, mode=mode, fullgraph=True, dynamic=False)
        self.graph = None
        self.graph_error: Optional[str] = None
        self._events: List[Any] = []

    # -- the two device programs -----------------------------------------------------------
    def _choose(self, logits):
        """Next token per row from last-position logits: EOS suppressed, then greedy or sampled."""
        torch = self.torch
        logits = logits.float()
        if self.eos is not None:
            logits = logits.index_fill(-1, self.eos, float("-inf"))
        d = self.decoding
        if d.temperature == 0:
            return logits.argmax(-1)
        logits = logits / d.temperature
        if d.top_k:
            kth = torch.topk(logits, min(d.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if d.top_p < 1.0:
            ordered, order = torch.sort(logits, dim=-1, descending=True)
            probs = ordered.softmax(-1)
            drop = probs.cumsum(-1) - probs > d.top_p  # keep the smallest prefix reaching top_p
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        probs = logits.softmax(-1)
        # exponential race (Gumbel-max): a draw from probs with fixed shapes and no host sync
        return (probs / torch.empty_like(probs).exponential_()).argmax(-1)

    def _forward(self, ids, positions):
        """Logits of the last position → next token. The static cache places ``ids`` after what it
        holds (its own length counter) and the full-length mask hides the prompts' left padding."""
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self._cache_kw: self.cache})
        return self._choose(out.logits[:, -1, :])

    def _step(self) -> None:
        nxt = self._forward(self.ids, self.pos)
        self.tokens.index_copy_(1, self.column, nxt[:, None])
        self.ids.copy_(nxt[:, None])
        self.pos.add_(1)
        self.column.add_(1)

    # -- driving ---------------------------------------------------------------------------
    def _start(self, ids, prompt_mask) -> None:
        """Reset the cache, load a batch and run its prefill (the first token)."""
        self.cache.reset()
        self.mask[:, : self.width].copy_(prompt_mask)
        self.mask[:, self.width :].fill_(1)
        positions = (prompt_mask.cumsum(-1) - 1).clamp_(min=0)
        first = self._forward(ids, positions)
        self.tokens[:, 0].copy_(first)
        self.ids.copy_(first[:, None])
        self.pos.copy_(positions[:, -1:] + 1)
        self.column.fill_(1)

    def prepare(self, ids, prompt_mask) -> None:
        """Compile (if asked) and capture the step as a CUDA graph, on a batch of the real shape.
        Leaves the decoder ready for :meth:`run`; a step that cannot be captured runs uncaptured."""
        torch = self.torch
        with torch.no_grad():
            self._start(ids, prompt_mask)
            if not self.cuda:
                self._step_fn()
                return
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):  # compiles, autotunes, allocates workspaces before capture
                    self._step_fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._step_fn()
                self.graph = graph
            except Exception as err:  # e.g. a host sync inside the eager forward of this model
                self.graph_error = f"{type(err).__name__}: {err}"
                log.warning("decode step not captured as a CUDA graph (%s); it runs uncaptured", self.graph_error)
                torch.cuda.synchronize(self.device)
        self._events = [torch.cuda.Event(enable_timing=True) for _ in range(self.output_len + 1)] if self.cuda else []

    def run(self, ids, prompt_mask, new_tokens: Optional[int] = None, timed: bool = True) -> Tuple[Any, List[float]]:
        """Generate ``new_tokens`` (default: ``output_len``) tokens for a batch (``rows × width`` ids,
        left padded). Returns the new tokens (on the device) and, when ``timed``, the host time of every step."""
        torch = self.torch
        n = self.output_len if new_tokens is None else new_tokens
        if tuple(ids.shape) != (self.rows, self.width) or not 1 <= n <= self.output_len:
            raise ValueError(f"the decode loop was built for {self.rows}×{self.width} prompts and up to "
                             f"{self.output_len} new tokens, got {tuple(ids.shape)} and {n}")
        steps = range(1, n)
        times: List[float] = []
        with torch.no_grad():
            if not self.cuda:
                self._start(ids, prompt_mask)
                times.append(now())
                for _ in steps:
                    self._step_fn()
                    times.append(now())
                return self.tokens[:, :n].clone(), times if timed else []
            events = self._events[: n + 1] if timed else []
            advance = self.graph.replay if self.graph is not None else self._step_fn
            torch.cuda.synchronize(self.device)
            start_s = now()
            if events:
                events[0].record()
            self._start(ids, prompt_mask)
            if events:
                events[1].record()
            for i in steps:
                advance()
                if events:
                    events[i + 1].record()
            torch.cuda.synchronize(self.device)
            if events:
                times = [start_s + events[0].elapsed_time(e) / 1e3 for e in events[1:]]
            return self.tokens[:, :n].clone(), times
