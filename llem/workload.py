"""Requests from a dataset: seeded random token ids, or prompts from a file.

Every request carries token ids, so all engines do the same work; text datasets are
tokenized here, once, with the model's tokenizer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from llem.errors import WorkloadError

log = logging.getLogger(__name__)


@dataclass
class Request:
    request_id: int
    token_ids: List[int]
    text: Optional[str] = None

    @property
    def input_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class Workload:
    requests: List[Request]
    truncated: int = 0  # prompts cut to input_len

    def counts(self) -> dict:
        lengths = [r.input_tokens for r in self.requests]
        return {
            "num_requests": len(lengths),
            "input_tokens_total": sum(lengths),
            "input_tokens_min": min(lengths),
            "input_tokens_max": max(lengths),
            "prompts_truncated": self.truncated,
        }


def special_token_ids(architecture: dict) -> set:
    ids = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = architecture.get(key)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def random_requests(num: int, input_len: int, vocab_size: int, seed: int, avoid: set = frozenset()) -> List[Request]:
    """``num`` prompts of ``input_len`` token ids drawn uniformly (seeded), avoiding special ids."""
    import numpy as np

    if vocab_size <= len(avoid) + 1:
        raise WorkloadError(f"vocab_size={vocab_size} is too small for random prompts")
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, size=(num, input_len))
    if avoid:
        bad = np.isin(ids, list(avoid))
        while bad.any():
            ids[bad] = rng.integers(0, vocab_size, size=int(bad.sum()))
            bad = np.isin(ids, list(avoid))
    return [Request(i, row.tolist()) for i, row in enumerate(ids)]


def read_prompts(path: Path, fmt: str, field: str) -> List[str]:
    """Prompts from a JSONL file (``field`` of each object) or a text file (one per line)."""
    if not path.is_file():
        raise WorkloadError(f"dataset.path={str(path)!r}: no such file")
    if fmt == "auto":
        fmt = "jsonl" if path.suffix in (".jsonl", ".json") else "text"
    prompts: List[str] = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            if fmt == "text":
                prompts.append(line)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WorkloadError(f"{path}:{line_no}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or field not in record:
                raise WorkloadError(f"{path}:{line_no}: no key {field!r} (set dataset.field)")
            prompts.append(str(record[field]))
    if not prompts:
        raise WorkloadError(f"dataset.path={str(path)!r} holds no prompts")
    return prompts


def load_tokenizer(model: Any) -> Any:
    """The model's tokenizer from the local cache or a local dir; a clear error when absent."""
    source = model.tokenizer or model.hf_id
    if not source:
        raise WorkloadError(
            "a text dataset needs a tokenizer: set model.tokenizer (an HF id in the local cache, or a "
            "local directory), or use dataset=random"
        )
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise WorkloadError(
            "a text dataset needs transformers for its tokenizer: pip install 'llem[pytorch]'"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(source, revision=model.revision, trust_remote_code=model.trust_remote_code)
    except Exception as exc:
        raise WorkloadError(
            f"tokenizer {source!r} could not be loaded ({type(exc).__name__}: {exc}). Offline, pre-fetch it with "
            f"`huggingface-cli download {source}` or point model.tokenizer at a local directory"
        ) from None


def build(config: Any) -> Workload:
    """The requests of one job, from the typed config."""
    dataset = config.dataset
    if dataset.name == "random":
        arch = config.model.architecture
        vocab = arch.get("vocab_size")
        if not vocab:
            tok = load_tokenizer(config.model)
            vocab = len(tok)
        reqs = random_requests(dataset.num_requests, config.input_len, int(vocab), config.seed, special_token_ids(arch))
        return Workload(reqs)
    if dataset.name == "file":
        path = Path(dataset.path).expanduser()
        prompts = read_prompts(path, dataset.format, dataset.field)[: dataset.num_requests]
        tok = load_tokenizer(config.model)
        reqs, truncated = [], 0
        for i, text in enumerate(prompts):
            ids = list(tok(text, add_special_tokens=True)["input_ids"])
            if len(ids) > config.input_len:
                ids, truncated = ids[: config.input_len], truncated + 1
            reqs.append(Request(i, ids, text))
        if len(reqs) < dataset.num_requests:
            log.warning("dataset %s holds %d prompts, fewer than dataset.num_requests=%d", path, len(reqs),
                        dataset.num_requests)
        return Workload(reqs, truncated=truncated)
    raise WorkloadError(f"dataset.name={dataset.name!r} is not known to this version of llem")
