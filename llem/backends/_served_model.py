"""Model directories a server can load when the weights are random (no download, no real tokenizer).

A server needs a tokenizer even where llem has only token ids. llem writes its own *id-word*
tokenizer beside the model: token ``i`` is the word ``t<i>`` (a word-level vocabulary over the whole
model vocabulary, split on white space, no special tokens added; its special words ``t0`` and the EOS
word match whole words only, so ``t2217`` stays one token where EOS is ``t2``), so the text
``"t17 t4000 t5"`` is exactly the token ids ``[17, 4000, 5]`` and back: a text-only server does the
same work as the engine in llem's process, token for token, and ``vllm bench serve --tokenizer DIR`` can
use it too. Its chat template is the messages' text alone, nothing added, so a chat request
(``server.api=chat``: one user message) is the same tokens as a completions request of the same prompt.

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
    if not target.is_file():
        _replace_text(target, ID_WORDS_CHAT_TEMPLATE)


def _replace_text(path: Path, text: str) -> None:
    """``text`` as the file ``path``, written beside it and moved in: whole or absent, when jobs write it at once."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".tmp-", suffix=path.suffix, delete=False) as fh:
        fh.write(text)
    Path(fh.name).replace(path)


def write_id_tokenizer(folder: Path, vocab_size: int, eos_token_id: Optional[int], special_words: bool = True
                       ) -> None:
    """The id-word tokenizer (tokenizer.json + tokenizer_config.json + its chat template) in ``folder``;
    kept if there and current (one written when special words matched inside longer words is rewritten).
    ``special_words``: ``t0`` (unknown, padding) and the EOS word are declared special, for servers that
    read the EOS from the tokenizer; without them every id is a plain word, streamed back like any other
    (a server drops special words from the text it streams)."""
    if not _id_tokenizer_current(folder, special_words):
        _save_id_tokenizer(folder, vocab_size, eos_token_id, special_words)
    write_chat_template(folder)


def _id_tokenizer_current(folder: Path, special_words: bool) -> bool:
    """Whether ``folder`` holds the id-word tokenizer asked for: its special words matched as whole words
    only, or none."""
    try:
        added = json.loads((folder / TOKENIZER_FILE).read_text()).get("added_tokens", [])
    except (OSError, ValueError):
        return False
    return all(isinstance(t, dict) and t.get("single_word") for t in added) if special_words else not added


def _save_id_tokenizer(folder: Path, vocab_size: int, eos_token_id: Optional[int], special_words: bool) -> None:
    """Saved beside ``folder`` first, then moved in file by file, tokenizer.json (what marks it written) last."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def whole_word(word: str) -> AddedToken:  # an added token otherwise matches inside words: t2 in t2217
        return AddedToken(word, single_word=True, special=True, normalized=False)

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    specials = {}
    if special_words:
        specials = {"unk_token": whole_word("t0"), "pad_token": whole_word("t0")}
        if isinstance(eos_token_id, int):
            specials["eos_token"] = whole_word(f"t{eos_token_id}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, add_bos_token=False, add_eos_token=False, **specials)
    with tempfile.TemporaryDirectory(prefix=".tmp-tokenizer-", dir=folder) as tmp:
        fast.save_pretrained(tmp)
        written = sorted(Path(tmp).iterdir(), key=lambda f: f.name == TOKENIZER_FILE)
        for f in written:
            if f.name != CHAT_TEMPLATE_FILE:
                f.replace(folder / f.name)


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
    ``root/served``, named by what defines it; built once (in a separate process) and kept.

    It generates every token asked for, as llem asks of every engine: its generation config names no EOS
    (``transformers serve --continuous-batching`` does not take a request's ``min_new_tokens``, and random
    weights reach their EOS id), and its tokenizer declares no special word (the server would drop them
    from the text it streams, and the client count them missing)."""
    spec = {"architecture": dict(architecture), "dtype": dtype, "seed": seed}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    target = root.expanduser() / "served" / key
    if (target / "config.json").is_file() and (target / TOKENIZER_FILE).is_file():
        _served_as_built(target, architecture)  # one written before these rules gets them
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


def _served_as_built(folder: Path, architecture: Dict[str, Any]) -> None:
    """The random checkpoint's tokenizer without special words, and no EOS in its generation config."""
    write_id_tokenizer(folder, int(architecture["vocab_size"]), _eos(architecture), special_words=False)
    path = folder / "generation_config.json"
    try:
        generation = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if generation.pop("eos_token_id", None) is not None:
        _replace_text(path, json.dumps(generation, indent=2))


def _build(folder: Path, spec: Dict[str, Any]) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = dict(spec["architecture"])
    hf_config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    torch.manual_seed(int(spec["seed"]))
    model = AutoModelForCausalLM.from_config(hf_config, dtype=getattr(torch, spec["dtype"]))
    model.save_pretrained(str(folder))
    _served_as_built(folder, {**spec["architecture"], "vocab_size": hf_config.vocab_size})


if __name__ == "__main__":  # python -m llem.backends._served_model FOLDER SPEC_JSON
    _build(Path(sys.argv[1]), json.loads(sys.argv[2]))
