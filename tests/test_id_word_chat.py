"""The id-word tokenizer's chat template adds nothing: one user message is the same token ids as the
completions prompt it would be, so server.api=chat does the same work as completions on random weights."""

from __future__ import annotations

import pytest

from llem.backends._served_model import CHAT_TEMPLATE_FILE, id_words, write_chat_template, write_id_tokenizer

pytest.importorskip("transformers")


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_a_chat_message_is_its_prompt_token_for_token(tmp_path):
    write_id_tokenizer(tmp_path, 64, 2)
    ids = [17, 4, 5, 63]
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
