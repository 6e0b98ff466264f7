"""The id-word tokenizer a server loads on random weights: its text is exactly the token ids, every id of the
vocabulary included, and its chat template adds nothing (one user message is the same token ids as the
completions prompt), so a server does the same work as the engine in llem's process, by either API."""

from __future__ import annotations

import json

import pytest

from llem.backends._served_model import (
    CHAT_TEMPLATE_FILE,
    TOKENIZER_FILE,
    id_words,
    write_chat_template,
    write_id_tokenizer,
)

pytest.importorskip("transformers")


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_every_id_is_one_word_and_back(tmp_path):
    """The special words (t0; EOS t2) match whole words only: t2217 is one token, not t2 then 217."""
    write_id_tokenizer(tmp_path, 4096, 2)
    ids = list(range(4096))
    assert _tokenizer(tmp_path)(id_words(ids), add_special_tokens=True)["input_ids"] == ids


def test_a_tokenizer_whose_special_words_matched_inside_words_is_rewritten(tmp_path):
    write_id_tokenizer(tmp_path, 4096, 2)
    path = tmp_path / TOKENIZER_FILE
    written = json.loads(path.read_text())
    for token in written["added_tokens"]:
        token["single_word"] = False  # as llem wrote it before
    path.write_text(json.dumps(written))
    assert _tokenizer(tmp_path)("t2217")["input_ids"] != [2217]
    write_id_tokenizer(tmp_path, 4096, 2)
    assert _tokenizer(tmp_path)("t2217 t2 t20")["input_ids"] == [2217, 2, 20]


def test_a_chat_message_is_its_prompt_token_for_token(tmp_path):
    write_id_tokenizer(tmp_path, 4096, 2)
    ids = [17, 2217, 5, 4095]
    rendered = _tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": id_words(ids)}],
                                                        add_generation_prompt=True, tokenize=True, return_dict=True)
    assert rendered["input_ids"] == ids


def test_a_tokenizer_written_without_a_template_gets_it(tmp_path):
    write_id_tokenizer(tmp_path, 64, 2)
    (tmp_path / CHAT_TEMPLATE_FILE).unlink()
    assert _tokenizer(tmp_path).chat_template is None
    write_id_tokenizer(tmp_path, 64, 2)  # kept tokenizer, template added
    assert _tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "t3 t9"}], tokenize=False) == "t3 t9"


def test_a_template_already_there_is_kept(tmp_path):
    (tmp_path / CHAT_TEMPLATE_FILE).write_text("{{ messages[0]['content'] }}!")
    write_chat_template(tmp_path)
    assert (tmp_path / CHAT_TEMPLATE_FILE).read_text() == "{{ messages[0]['content'] }}!"


def test_without_special_words_every_generated_id_is_streamed_as_a_word(tmp_path):
    """transformers serve streams through a DecodeStream that skips special words: none are declared."""
    from tokenizers.decoders import DecodeStream

    write_id_tokenizer(tmp_path, 4096, 2, special_words=False)
    stream, backend = DecodeStream([], skip_special_tokens=True), _tokenizer(tmp_path)._tokenizer
    assert "".join(stream.step(backend, i) or "" for i in [5, 2, 0, 7]).split() == ["t5", "t2", "t0", "t7"]


def test_the_served_random_checkpoint_names_no_eos_and_no_special_word(tmp_path):
    """A checkpoint written before these rules (EOS in its generation config, special words) gets them."""
    from llem.backends._served_model import _served_as_built

    write_id_tokenizer(tmp_path, 4096, 2)
    (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    _served_as_built(tmp_path, {"vocab_size": 4096, "eos_token_id": 2})
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {"bos_token_id": 1}
    tokenizer = _tokenizer(tmp_path)
    assert tokenizer.eos_token is None and tokenizer("t2217 t2 t0")["input_ids"] == [2217, 2, 0]
