"""server.api is refused before anything loads where it cannot work: a value the client does not speak, token
ids for chat, an API a launched engine's server does not serve, or prompts with no text for a text-only API."""

from __future__ import annotations

import pytest

from llem.backends import engine_class
from llem.backends.pytorch import PyTorchEngine, PyTorchServing
from llem.config import to_config
from llem.config.validate import check_prompts
from llem.support.errors import ConfigError

EXTERNAL = ["server=external", "server.url=http://127.0.0.1:8000"]


def _refused(compose_cfg, overrides):
    with pytest.raises(ConfigError) as err:
        to_config(compose_cfg(overrides))
    return str(err.value)


def test_an_api_the_client_does_not_speak_is_refused(compose_cfg):
    message = _refused(compose_cfg, [*EXTERNAL, "server.api=responses"])
    assert message.startswith("server.api=") and "completions, chat" in message


def test_chat_with_token_id_prompts_is_refused(compose_cfg):
    message = _refused(compose_cfg, [*EXTERNAL, "server.api=chat", "server.prompt=token_ids"])
    assert message.startswith("server.prompt=") and "auto or text with server.api=chat" in message


def test_an_api_without_a_server_is_refused(compose_cfg):
    message = _refused(compose_cfg, ["server.api=chat"])
    assert message.startswith("server.api is set but server.mode=none")


def test_the_launched_servers_serve_chat():
    assert all("chat" in engine_class(name).serving_class.apis for name in ("pytorch", "vllm", "tensorrt"))


def test_a_launched_server_that_does_not_serve_the_api_is_refused(compose_cfg):
    class CompletionsOnly(PyTorchServing):
        apis = ("completions",)

    class Engine(PyTorchEngine):
        serving_class = CompletionsOnly

    config = to_config(compose_cfg(["server=launch", "server.api=chat"]))
    with pytest.raises(ConfigError, match=r"server.api=chat is invalid with backend=pytorch and server=launch: "
                                          r"allowed completions"):
        Engine.validate_config(config)


def test_random_prompts_for_chat_against_an_external_server_are_refused(compose_cfg):
    config = to_config(compose_cfg([*EXTERNAL, "server.api=chat"]))
    with pytest.raises(ConfigError, match=r"dataset=random is invalid with server.api=chat takes text prompts only"):
        check_prompts(config)


def test_shared_prefix_prompts_for_chat_against_an_external_server_are_refused(compose_cfg):
    config = to_config(compose_cfg([*EXTERNAL, "server.api=chat", "dataset=shared_prefix"]))
    with pytest.raises(ConfigError, match=r"dataset=shared_prefix is invalid with server.api=chat takes text"):
        check_prompts(config)


def test_random_prompts_as_text_against_an_external_server_are_refused(compose_cfg):
    config = to_config(compose_cfg([*EXTERNAL, "server.prompt=text"]))
    with pytest.raises(ConfigError, match=r"dataset=random is invalid with server.prompt=text"):
        check_prompts(config)


@pytest.mark.parametrize("overrides", [
    ["server=launch", "server.api=chat"],  # random weights: the id-word tokenizer writes ids as text
    [*EXTERNAL, "server.api=chat", "dataset=builtin"],
    [*EXTERNAL],
])
def test_prompts_that_can_be_sent_pass(compose_cfg, overrides):
    check_prompts(to_config(compose_cfg(overrides)))


def test_random_prompts_for_chat_on_pretrained_weights_are_refused(compose_cfg):
    config = to_config(compose_cfg(["server=launch", "server.api=chat", "model=llama3"]))
    with pytest.raises(ConfigError, match=r"server=launch on pretrained weights"):
        check_prompts(config)


def test_the_api_is_in_the_hash_and_the_default_leaves_older_hashes(compose_cfg, monkeypatch):
    import llem.config as schema

    base = to_config(compose_cfg(EXTERNAL))
    assert schema.config_hash(to_config(compose_cfg([*EXTERNAL, "server.api=chat"]))) != schema.config_hash(base)
    now = schema.config_hash(base)
    to_dict = schema.to_dict

    def before_the_key(config):  # the tree a config from before server.api gave
        tree = to_dict(config)
        del tree["server"]["api"]
        return tree

    monkeypatch.setattr(schema, "to_dict", before_the_key)
    assert schema.config_hash(base) == now


def test_a_chat_job_without_text_prompts_fails_at_its_config_stage(tmp_path):
    import pandas as pd

    from tests.conftest import run_llem

    proc = run_llem(["server=external", "server.url=http://127.0.0.1:9", "server.api=chat", "hydra.run.dir=run"],
                    cwd=tmp_path, timeout=120)
    row = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert proc.returncode != 0 and row["status"] == "failed" and row["error_stage"] == "config"
    assert row["error"].startswith("dataset=random is invalid with server.api=chat")


def test_every_api_the_config_allows_is_one_the_client_speaks():
    from llem.config.load import SERVER_APIS
    from llem.serving.apis import APIS

    assert set(APIS) == set(SERVER_APIS) and all(APIS[name].name == name for name in APIS)
