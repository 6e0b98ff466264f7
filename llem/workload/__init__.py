"""Requests from a dataset: seeded random token ids, or prompts from a file, llem's built-in
prompt set or a Hugging Face dataset (:mod:`llem.workload.datasets_hf`).

Every request carries token ids, so all engines do the same work; text datasets are
tokenized here, once, with the model's tokenizer, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence, TextIO, Tuple

from llem.results.row import WorkloadCounts
from llem.support.errors import WorkloadError
from llem.support.install import install_hint
from llem.workload.records import Request

log = logging.getLogger(__name__)

BUILTIN_PROMPTS = Path(__file__).resolve().parent / "prompts" / "builtin.jsonl"
BYTES_TOKENIZER = "bytes"  # model.tokenizer value naming llem's byte-level tokenizer


@dataclass
class Workload:
    requests: List[Request]
    truncated: int = 0  # prompts cut to input_len
    dropped_short: int = 0  # prompts skipped: fewer than dataset.min_input_len tokens (or empty)
    dropped_long: int = 0  # prompts skipped: more than input_len tokens with long_prompts=drop
    read: Optional[int] = None  # source records looked at (None: one per request)
    repeated: int = 0  # requests that reuse an earlier prompt: the source ran out

    def counts(self) -> WorkloadCounts:
        """How many requests, their input-length distribution, what was cut or skipped."""
        import numpy as np

        lengths = np.array([r.input_tokens for r in self.requests], dtype=np.int64)
        digest = hashlib.sha256()
        for r in self.requests:
            digest.update(np.asarray(r.token_ids, dtype=np.int64).tobytes() + b"|")
        return WorkloadCounts(
            num_requests=len(lengths),
            input_tokens_total=int(lengths.sum()),
            input_tokens_min=int(lengths.min()),
            input_tokens_p50=float(np.percentile(lengths, 50)),
            input_tokens_mean=float(lengths.mean()),
            input_tokens_p90=float(np.percentile(lengths, 90)),
            input_tokens_max=int(lengths.max()),
            prompts_read=len(lengths) if self.read is None else self.read,
            prompts_truncated=self.truncated,
            prompts_dropped_short=self.dropped_short,
            prompts_dropped_long=self.dropped_long,
            prompts_repeated=self.repeated,
            workload_sha256=digest.hexdigest()[:16],  # equal ⇔ the same token ids were measured
            prefix_reusable_tokens_total=None if self.requests[0].prefix_reusable_tokens is None else sum(
                r.prefix_reusable_tokens or 0 for r in self.requests),
        )


def special_token_ids(architecture: dict) -> set:
    ids = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = architecture.get(key)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def random_ids(rows: int, length: int, vocab_size: int, seed: Sequence[int], avoid: set = frozenset()) -> Any:
    """A (rows, length) array of token ids drawn uniformly with ``seed`` (a sequence of ints), special ids
    redrawn from a second stream in row order: more rows keep the first as they were."""
    import numpy as np

    if vocab_size <= len(avoid) + 1:
        raise WorkloadError(f"vocab_size={vocab_size} is too small for random prompts")
    ids = np.random.default_rng(list(seed)).integers(0, vocab_size, size=(rows, length))
    if avoid:
        redraw = np.random.default_rng([*seed, 1])
        bad = np.isin(ids, list(avoid))
        while bad.any():
            ids[bad] = redraw.integers(0, vocab_size, size=int(bad.sum()))
            bad = np.isin(ids, list(avoid))
    return ids


def random_requests(num: int, input_len: int, vocab_size: int, seed: int, avoid: set = frozenset()) -> List[Request]:
    """``num`` prompts of ``input_len`` token ids drawn uniformly (seeded), avoiding special ids."""
    return [Request(i, row.tolist()) for i, row in enumerate(random_ids(num, input_len, vocab_size, (seed,), avoid))]


PIECE_CHARS = 1 << 20  # a line is read (and checked) this much at a time: a binary file fails early, not whole
NOT_TEXT = re.compile("[\x00\udc80-\udcff]")  # a NUL, or a byte that is not UTF-8 (surrogateescape)
FILE_FORMATS = "a file (JSONL with one object per line, or text with one prompt per line)"
FILE_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))


def _check_prompt_file(path: Path) -> None:
    """Raise WorkloadError unless ``path`` is a regular file: checked before opening, so a device such as
    /dev/zero or a FIFO is never read (or waited on)."""
    where = f"dataset.path={str(path)!r}"
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        broken = " (a symlink to a missing file)" if path.is_symlink() else ""
        raise WorkloadError(f"{where}: no such file{broken}: give {FILE_FORMATS}") from None
    except PermissionError:
        raise WorkloadError(f"{where} cannot be reached: permission denied on a folder above it") from None
    except OSError as exc:
        raise WorkloadError(f"{where} cannot be read ({exc.strerror}): give {FILE_FORMATS}") from None
    if stat.S_ISDIR(mode):
        raise WorkloadError(f"{where} is a directory: give {FILE_FORMATS}; dataset=file reads one file, "
                            f"dataset=hf dataset.path=DIR reads a folder of data files")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in FILE_KINDS if test(mode)), "not a regular file")
        raise WorkloadError(f"{where} is {kind}, not a regular file: give {FILE_FORMATS}")


def _open_prompt_file(path: Path) -> TextIO:
    """``path`` opened as UTF-8 text; bytes that are not UTF-8 come through escaped, for :func:`_text_lines`."""
    _check_prompt_file(path)
    try:
        return path.open(encoding="utf-8", errors="surrogateescape")
    except PermissionError:
        raise WorkloadError(f"dataset.path={str(path)!r} is not readable (permission denied): make it readable "
                            "by this user, or copy it somewhere that is") from None
    except OSError as exc:
        raise WorkloadError(f"dataset.path={str(path)!r} cannot be opened ({exc.strerror})") from None


def _not_text(path: Path, line_no: int, char: str) -> WorkloadError:
    what = "a NUL byte" if char == "\x00" else f"byte 0x{ord(char) - 0xDC00:02x}, which is not UTF-8,"
    return WorkloadError(f"dataset.path={str(path)!r} is not text: {what} on line {line_no}; expected a JSONL file "
                         "(one object per line) or UTF-8 text (one prompt per line)")


def _text_lines(path: Path, fh: TextIO) -> Iterator[Tuple[int, str]]:
    """(line number, line) of ``fh``, streamed; each piece is checked as it is read, so a binary file fails at
    its first non-text byte without being read whole."""
    line_no, parts = 1, []
    for piece in iter(lambda: fh.readline(PIECE_CHARS), ""):
        bad = NOT_TEXT.search(piece)
        if bad:
            raise _not_text(path, line_no, bad.group())
        parts.append(piece)
        if piece.endswith("\n"):
            yield line_no, "".join(parts)
            line_no, parts = line_no + 1, []
    if parts:
        yield line_no, "".join(parts)


def read_prompts(path: Path, fmt: str, field: str) -> List[str]:
    """Prompts from a JSONL file (``field`` of each object) or a text file (one per line)."""
    if fmt == "auto":
        fmt = "jsonl" if path.suffix in (".jsonl", ".json") else "text"
    prompts: List[str] = []
    with _open_prompt_file(path) as fh:
        for line_no, line in _text_lines(path, fh):
            line = (line.removeprefix("\ufeff") if line_no == 1 else line).strip()  # a UTF-8 BOM is not text
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
            value = record[field]
            if not isinstance(value, str):
                kind = "null" if value is None else type(value).__name__
                raise WorkloadError(f"{path}:{line_no}: field {field!r} (dataset.field) is {kind}, not text: every "
                                    "prompt must be a JSON string")
            prompts.append(value)
    if not prompts:
        raise WorkloadError(f"dataset.path={str(path)!r} holds no prompts")
    return prompts


class ByteTokenizer:
    """``model.tokenizer=bytes``: one token per UTF-8 byte (ids 3..258; 0-2 left to pad/bos/eos).

    Needs no files, so a text workload runs offline on a model with random weights; lengths are
    bytes, not the real model's tokens, and results say so through ``cfg.model.tokenizer``.
    """

    OFFSET = 3
    name_or_path = BYTES_TOKENIZER

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [b + self.OFFSET for b in text.encode("utf-8")]}

    def __len__(self) -> int:
        return 256 + self.OFFSET


def load_tokenizer(model: Any) -> Any:
    """The model's tokenizer from a local dir or the local cache (the Hub when reachable); a clear error when absent."""
    source = model.tokenizer or model.hf_id
    if not source:
        raise WorkloadError(
            "a text dataset needs a tokenizer: set model.tokenizer (an HF id in the local cache, or a "
            f"local directory; or '{BYTES_TOKENIZER}', llem's byte-level tokenizer, for model.weights=random), "
            "or use dataset=random"
        )
    if source == BYTES_TOKENIZER:
        if getattr(model.weights, "value", model.weights) != "random":
            raise WorkloadError(f"model.tokenizer={BYTES_TOKENIZER!r} is for model.weights=random only: a pretrained "
                                "model must see its own tokens (set model.tokenizer to its tokenizer)")
        return ByteTokenizer()
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise WorkloadError(
            f"a text dataset needs transformers for its tokenizer: {install_hint('pytorch')}"
        ) from None
    local_only = False
    if not Path(source).expanduser().is_dir():
        from llem.workload.datasets_hf import hub_unreachable

        local_only = hub_unreachable() is not None  # read the cache only: never wait on a dead network
    try:
        return AutoTokenizer.from_pretrained(source, revision=model.revision, trust_remote_code=model.trust_remote_code,
                                             local_files_only=local_only)
    except Exception as exc:
        raise WorkloadError(
            f"tokenizer {source!r} could not be loaded ({type(exc).__name__}: {exc}). Offline, pre-fetch it with "
            f"`hf download {source}` (older huggingface_hub: `huggingface-cli download {source}`) or point "
            "model.tokenizer at a local directory"
        ) from None


def tokenize_prompts(texts: Iterable[Any], tok: Any, dataset: Any, input_len: int, vocab_size: Optional[int],
                     num_requests: int, natural: bool = False) -> Workload:
    """Tokenize prompts in order until ``num_requests`` fit the length bounds; count the rest. A source
    that runs out first is repeated from its first prompt (counted, and warned about). An item may be
    (text, reference completion): with ``natural`` lengths the request asks for the reference's length
    in tokens (within dataset.output_lengths' min and max)."""
    if dataset.min_input_len > input_len:
        raise WorkloadError(f"dataset.min_input_len={dataset.min_input_len} is larger than input_len={input_len}: "
                            "no prompt could fit")
    work = Workload([], read=0)
    for text in texts:
        if len(work.requests) >= num_requests:
            break
        work.read += 1
        text, reference = text if isinstance(text, tuple) else (text, None)
        text = (text or "").strip()
        ids = list(tok(text, add_special_tokens=True)["input_ids"]) if text else []
        if len(ids) < dataset.min_input_len:
            work.dropped_short += 1
            continue
        if len(ids) > input_len:
            if dataset.long_prompts == "drop":
                work.dropped_long += 1
                continue
            ids, work.truncated = ids[:input_len], work.truncated + 1
        if vocab_size and max(ids) >= vocab_size:
            raise WorkloadError(
                f"the tokenizer gives token id {max(ids)} but model.architecture.vocab_size={vocab_size}: set "
                "model.tokenizer to one that fits the model"
            )
        asked = None
        if natural and reference:
            bounds = dataset.output_lengths
            asked = min(max(len(tok(reference, add_special_tokens=False)["input_ids"]), bounds.min), bounds.max)
        work.requests.append(Request(len(work.requests), ids, text, output_len=asked))
    if not work.requests:
        raise WorkloadError(
            f"no prompt of dataset {dataset.name!r} fits: {work.read} read, {work.dropped_short} shorter than "
            f"dataset.min_input_len={dataset.min_input_len}, {work.dropped_long} longer than input_len={input_len} "
            "(dataset.long_prompts=drop)"
        )
    distinct = len(work.requests)
    if distinct < num_requests:
        log.warning("dataset %s gave %d prompts for %d requests (%d read, %d too short, %d too long): each is "
                    "repeated in turn", dataset.name, distinct, num_requests, work.read, work.dropped_short,
                    work.dropped_long)
        for i in range(distinct, num_requests):
            first = work.requests[i % distinct]
            work.requests.append(Request(i, first.token_ids, first.text, output_len=first.output_len))
        work.repeated = num_requests - distinct
    return work


def shuffled(items: List[Any], shuffle: bool, seed: int) -> List[Any]:
    """``items`` in order, or permuted with ``seed``."""
    if not shuffle:
        return items
    import numpy as np

    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]


def build(config: Any, num_requests: Optional[int] = None) -> Workload:
    """``num_requests`` requests of one job (default: ``dataset.num_requests``, else measure.waves ×
    batch), from the typed config. The same config and a larger count give the same first requests
    and more after them."""
    from llem.config import (
        IN_PROCESS_BATCH,
        BuiltinDatasetConfig,
        ConversationsDatasetConfig,
        FileDatasetConfig,
        HFDatasetConfig,
        RandomDatasetConfig,
        SharedPrefixDatasetConfig,
    )

    dataset = config.dataset
    if config.load.trace is not None:
        return _traced(config, num_requests)
    count = num_requests or dataset.num_requests or config.measure.waves * (config.batch or IN_PROCESS_BATCH)
    arch = config.model.architecture
    if isinstance(dataset, RandomDatasetConfig):
        vocab = arch.get("vocab_size")
        if not vocab:
            tok = load_tokenizer(config.model)
            vocab = len(tok)
        reqs = random_requests(count, config.input_len, int(vocab), config.seed, special_token_ids(arch))
        return Workload(reqs)
    if isinstance(dataset, ConversationsDatasetConfig):  # its count is its conversations' turns
        from llem.workload.conversations import conversation_requests

        reqs, cut = conversation_requests(config)
        return Workload(reqs, dropped_long=cut)
    if isinstance(dataset, SharedPrefixDatasetConfig):
        from llem.workload.shared_prefix import shared_prefix_requests

        vocab = arch.get("vocab_size") or len(load_tokenizer(config.model))
        return Workload(shared_prefix_requests(count, dataset.num_groups, dataset.prefix_len, config.input_len,
                                               int(vocab), config.seed, special_token_ids(arch)))
    if isinstance(dataset, (FileDatasetConfig, BuiltinDatasetConfig, HFDatasetConfig)):
        if isinstance(dataset, HFDatasetConfig):
            from llem.workload.datasets_hf import hf_prompts

            tok = load_tokenizer(config.model)  # first: a missing tokenizer fails before any download
            texts = hf_prompts(dataset, config.seed)
        else:
            path = BUILTIN_PROMPTS if isinstance(dataset, BuiltinDatasetConfig) else Path(dataset.path).expanduser()
            fmt, field = ("jsonl", "prompt") if isinstance(dataset, BuiltinDatasetConfig) else (dataset.format,
                                                                                                 dataset.field)
            texts = shuffled(read_prompts(path, fmt, field), dataset.shuffle, config.seed)
            tok = load_tokenizer(config.model)
        vocab = arch.get("vocab_size")
        return tokenize_prompts(texts, tok, dataset, config.input_len, int(vocab) if vocab else None, count,
                                natural=config.output_len is None)
    raise WorkloadError(f"dataset.name={dataset.name!r} is not known to this version of llem")


def _traced(config: Any, num_requests: Optional[int]) -> Workload:
    """The requests of ``load.trace``: random token ids of each line's input length, asking for its output
    length (None: a natural length, drawn later), due at its time × ``load.trace_time_scale``, with its class."""
    from llem.workload import trace

    lines = trace.replayed(config)
    lines = lines[:num_requests] if num_requests else lines
    arch = config.model.architecture
    vocab = arch.get("vocab_size") or len(load_tokenizer(config.model))
    reqs = trace.trace_prompts([x.input_tokens for x in lines], int(vocab), config.seed,
                               frozenset(special_token_ids(arch)))
    scale = config.load.trace_time_scale
    for r, x in zip(reqs, lines):
        r.output_len, r.arrival_s, r.request_class = x.output_tokens, x.timestamp_s * scale, x.request_class
    return Workload(reqs)
