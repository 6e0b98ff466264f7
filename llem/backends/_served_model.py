"""Model directories a server can load when the weights are random (no download, no real tokenizer).

A server needs a tokenizer even where llem has only token ids. llem writes its own *id-word*
tokenizer beside the model: token ``i`` is the word ``t<i>`` (a word-level vocabulary over the whole
model vocabulary, split on white space, no special tokens added), so the text ``"t17 t4000 t5"`` is
exactly the token ids ``[17, 4000, 5]`` and back: a text-only server does the same work as the engine
in llem's process, token for token, and ``vllm bench serve --tokenizer DIR`` can use it too. Its chat
template is the messages' text alone, nothing added, so a chat request (``server.api=chat``: one user
message) is the same tokens as a completions request of the same prompt.

A server that cannot create random weights itself (``transformers serve``) gets a real checkpoint:
the architecture's random init, seeded, saved once under ``cache_dir/served`` by a separate process
(the job's parent never imports torch's device runtime).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers (and the servers, through it) read a chat template
ID_WORDS_CHAT_TEMPLATE = ("{%- for message in messages -%}{%- if not loop.first %} {% endif -%}"
                          "{{ message['content'] }}{%- endfor -%}")


def id_words(ids: Iterable[int]) -> str:
    """Token ids as the id-word tokenizer's text."""
    return " ".join(f"t{i}" for i in ids)


def words_in(text: str) -> int:
    """Tokens in a piece of id-word text."""
    return len(text.split())


def write_chat_template(folder: Path) -> None:
    """The id-word chat template in ``folder`` (a folder written before it had one gets it); kept if there."""
    target = folder / CHAT_TEMPLATE_FILE
    if target.is_file():
        return
    with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".tmp-", suffix=".jinja", delete=False) as fh:
        fh.write(ID_WORDS_CHAT_TEMPLATE)
    Path(fh.name).replace(target)  # whole or absent, when jobs write it at once


def write_id_tokenizer(folder: Path, vocab_size: int, eos_token_id: Optional[int]) -> None:
    """The id-word tokenizer (tokenizer.json + tokenizer_config.json + its chat template) in ``folder``;
    kept if there."""
    if not (folder / TOKENIZER_FILE).is_file():
        _save_id_tokenizer(folder, vocab_size, eos_token_id)
    write_chat_template(folder)


def _save_id_tokenizer(folder: Path, vocab_size: int, eos_token_id: Optional[int]) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    eos = f"t{eos_token_id}" if isinstance(eos_token_id, int) else None
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", eos_token=eos, pad_token="t0",
                                   add_bos_token=False, add_eos_token=False)
    fast.save_pretrained(str(folder))


def _eos(architecture: Dict[str, Any]) -> Optional[int]:
    eos = architecture.get("eos_token_id")
    return eos[0] if isinstance(eos, (list, tuple)) and eos else eos if isinstance(eos, int) else None


def dummy_model_dir(model: Any, root: Path) -> Optional[Path]:
    """For engines that create random weights themselves (``load_format=dummy``): the shared dummy model dir
    (config.json, llem.backends._hf_model) with the id-word tokenizer beside it; None for pretrained weights."""
    if getattr(model.weights, "value", model.weights) != "random":
        return None
    from llem.backends._hf_model import shared_dummy_model

    folder = shared_dummy_model(model.architecture, model.dtype.value, root)
    write_id_tokenizer(folder, int(model.architecture["vocab_size"]), _eos(model.architecture))
    return folder


def random_checkpoint(architecture: Dict[str, Any], dtype: str, seed: int, root: Path) -> Path:
    """A saved random-weight checkpoint of ``architecture`` with the id-word tokenizer, under
    ``root/served``, named by what defines it; built once (in a separate process) and kept."""
    spec = {"architecture": dict(architecture), "dtype": dtype, "seed": seed}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    target = root.expanduser() / "served" / key
    if (target / "config.json").is_file() and (target / TOKENIZER_FILE).is_file():
        write_chat_template(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    log.info("writing a random-weight checkpoint for the server under %s (once)", target)
    argv = [sys.executable, "-m", "llem.backends._served_model", str(tmp), json.dumps(spec, default=str)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"writing the random-weight checkpoint failed: {proc.stderr.strip()[-2000:]}")
    try:
        tmp.rename(target)
    except OSError:  # another job wrote it first: the same content
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build(folder: Path, spec: Dict[str, Any]) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = dict(spec["architecture"])
    eos = _eos(arch)
    hf_config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    torch.manual_seed(int(spec["seed"]))
    model = AutoModelForCausalLM.from_config(hf_config, dtype=getattr(torch, spec["dtype"]))
    model.save_pretrained(str(folder))
    write_id_tokenizer(folder, int(hf_config.vocab_size), eos)


if __name__ == "__main__":  # python -m llem.backends._served_model FOLDER SPEC_JSON
    _build(Path(sys.argv[1]), json.loads(sys.argv[2]))
