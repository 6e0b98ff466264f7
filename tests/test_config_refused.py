"""Bad input is refused when the config is built, before anything loads, by an error that names the key and
says what is allowed: server URLs, hosts and keys a server mode does not use, request fields llem sets
itself, arrival processes no clock can keep, overflowing numbers, impossible architectures, JSONL prompts
that are not text, and an external server that does not answer in a dry run."""

from __future__ import annotations

import json
import socket

import pytest

from llem.config import to_config
from llem.config.validate import check, check_overrides
from llem.support.errors import ConfigError, WorkloadError
from llem.workload import read_prompts
from tests.conftest import run_llem

EXTERNAL = ["server=external", "server.url=http://127.0.0.1:8000"]


def _refused(compose_cfg, overrides):
    with pytest.raises(ConfigError) as err:
        to_config(compose_cfg(overrides))
    return str(err.value)


def test_credentials_in_the_url_are_refused_without_being_repeated(compose_cfg):
    message = _refused(compose_cfg, ["server=external", "server.url=http://alice:Pa55wordX@127.0.0.1:8000"])
    assert "server.url" in message and "server.api_key_env" in message
    assert "Pa55wordX" not in message and "alice" not in message


@pytest.mark.parametrize("url, says", [
    ("http://999.1.1.1:8000", "'999.1.1.1' is not an IP address or host name"),
    ("'http://my host:8000'", "no spaces"),
    ("http://127.0.0.1:99999", "does not parse"),
    ("ftp://127.0.0.1:8000", "http:// or https://"),
    ("http://bad_host:80", "is not an IP address or host name"),
])
def test_an_unusable_url_is_refused_naming_the_key(compose_cfg, url, says):
    message = _refused(compose_cfg, ["server=external", f"server.url={url}"])
    assert message.startswith("server.url=") and says in message


@pytest.mark.parametrize("url", ["http://localhost:8000", "https://api.example.com/v1", "'http://[::1]:8000'",
                                 "http://10.0.0.7:30000/"])
def test_usable_urls_are_accepted(compose_cfg, url):
    assert to_config(compose_cfg(["server=external", f"server.url={url}"])).server.url == url.strip("'")


@pytest.mark.parametrize("host", ["999.1.1.1", "-bad.example", "a..b", "has space"])
def test_a_server_host_that_is_no_address_or_name_is_refused(compose_cfg, host):
    message = _refused(compose_cfg, ["server=launch", f"server.host='{host}'"])
    assert message.startswith("server.host=") and "IP address or a host name" in message


@pytest.mark.parametrize("overrides, key, used_by", [
    (["server.url=http://127.0.0.1:8000"], "server.url", "server=external"),
    (["server=launch", "server.url=http://127.0.0.1:8000"], "server.url", "server=external"),
    (["server=external", "server.url=http://127.0.0.1:8000", "server.port=9000"], "server.port", "server=launch"),
    (["server.args=[--x]"], "server.args", "server=launch"),
    (["server.model_name=m"], "server.model_name", "server=launch or server=external"),
    (["+server.extra_body.foo=1"], "server.extra_body", "server=launch or server=external"),
    (["server=launch", "server.api_key_env=MY_API_KEY"], "server.api_key_env", "server=external"),
])
def test_a_server_key_the_mode_does_not_use_is_refused(compose_cfg, overrides, key, used_by):
    message = _refused(compose_cfg, overrides)
    assert message.startswith(f"{key} is set but server.mode=") and f"only {used_by} does" in message


@pytest.mark.parametrize("key", ["model", "prompt", "max_tokens", "min_tokens", "stream", "stream_options", "n",
                                 "best_of", "echo", "ignore_eos", "messages", "max_completion_tokens", "temperature",
                                 "generation_config"])
def test_extra_body_may_not_replace_what_llem_sends(compose_cfg, key):
    message = _refused(compose_cfg, [*EXTERNAL, f"+server.extra_body.{key}=1"])
    assert message.startswith(f"server.extra_body.{key} is invalid: llem sets {key} itself")


def test_extra_body_may_add_other_keys(compose_cfg):
    config = to_config(compose_cfg([*EXTERNAL, "+server.extra_body.repetition_penalty=1.1"]))
    assert config.server.extra_body == {"repetition_penalty": 1.1}


@pytest.mark.parametrize("name", ["'1ABC'", "'MY-KEY'", "'sk-abc123 xyz'"])
def test_api_key_env_must_be_a_variable_name(compose_cfg, name):
    message = _refused(compose_cfg, [*EXTERNAL, f"server.api_key_env={name}"])
    assert message.startswith("server.api_key_env=") and "the name of an environment variable" in message


def test_api_key_env_must_be_set_at_the_check(compose_cfg, monkeypatch):
    monkeypatch.delenv("LLEM_TEST_UNSET_KEY", raising=False)
    config = to_config(compose_cfg([*EXTERNAL, "server.api_key_env=LLEM_TEST_UNSET_KEY"]))
    with pytest.raises(ConfigError, match=r"server.api_key_env=LLEM_TEST_UNSET_KEY: the environment variable "
                                          r"LLEM_TEST_UNSET_KEY is not set"):
        check(config)


@pytest.mark.parametrize("override, key, allowed", [
    ("load.request_rate=1e-300", "load.request_rate", "[0.001, 1e+06], or inf"),
    ("load.request_rate=1e7", "load.request_rate", "[0.001, 1e+06], or inf"),
    ("load.request_rate=0", "load.request_rate", "[0.001, 1e+06], or inf"),
    ("load.burstiness=1e-300", "load.burstiness", "[0.01, 100]"),
    ("load.burstiness=1000", "load.burstiness", "[0.01, 100]"),
    ("load.burstiness=inf", "load.burstiness", "[0.01, 100]"),
])
def test_arrival_processes_a_clock_cannot_keep_are_refused(compose_cfg, override, key, allowed):
    message = _refused(compose_cfg, [override])
    assert message.startswith(f"{key}=") and allowed in message


@pytest.mark.parametrize("override", ["load.request_rate=0.001", "load.request_rate=1e6", "load.request_rate=inf",
                                      "load.burstiness=0.01", "load.burstiness=100"])
def test_arrival_limits_are_inclusive_and_inf_is_a_burst(compose_cfg, override):
    to_config(compose_cfg([override]))


def test_an_overflowing_literal_is_refused_but_inf_as_written_is_not():
    with pytest.raises(ConfigError, match=r"load.request_rate=1e400 is invalid: the number overflows a float"):
        check_overrides(["load.request_rate=1e400"])
    with pytest.raises(ConfigError, match=r"server.extra_body.x=-1E\+999 is invalid"):
        check_overrides(["+server.extra_body.x=-1E+999"])
    check_overrides(["load.request_rate=inf", "load.burstiness=1e2", "model.name=a1e999b"])


def _dry_run(compose_cfg, overrides, job_dir, monkeypatch, caplog) -> str:
    """The job's dry run in this process, Hydra's part played by the overrides as typed; what it logged."""
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig

    from llem.run.dry_run import dry_run

    typed = SimpleNamespace(overrides=SimpleNamespace(task=[*overrides, "dry_run=true"]))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: typed))
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    job_dir.mkdir(parents=True)
    with caplog.at_level("INFO", logger="llem"):
        dry_run(compose_cfg([*overrides, "dry_run=true"]), job_dir)
    return caplog.text


def test_an_overflowing_literal_on_the_command_line_fails_the_job(tmp_path):
    """The whole path from the command line (inf as typed passes: the test below)."""
    proc = run_llem(["load.request_rate=1e400", "dry_run=true"], cwd=tmp_path, timeout=120)
    assert "load.request_rate=1e400 is invalid: the number overflows a float" in proc.stdout + proc.stderr


def test_inf_as_typed_would_run(compose_cfg, tmp_path, monkeypatch, caplog):
    logged = _dry_run(compose_cfg, ["load.request_rate=inf"], tmp_path / "job", monkeypatch, caplog)
    assert "would run" in logged


@pytest.mark.parametrize("key", ["num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
                                 "hidden_size", "intermediate_size"])
@pytest.mark.parametrize("value", [0, -4])
def test_an_architecture_without_layers_heads_or_vocabulary_is_refused(compose_cfg, key, value):
    message = _refused(compose_cfg, [f"++model.architecture.{key}={value}"])
    assert message.startswith(f"model.architecture.{key}={value} is invalid: allowed an integer >= 1")


@pytest.mark.parametrize("value, kind", [(None, "null"), (42, "int"), (["a"], "list"), ({"a": 1}, "dict")])
def test_a_jsonl_prompt_that_is_not_text_names_file_line_and_field(tmp_path, value, kind):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": value}) + "\n")
    with pytest.raises(WorkloadError) as err:
        read_prompts(path, "jsonl", "text")
    assert str(err.value).startswith(f"{path}:2: field 'text' (dataset.field) is {kind}, not text")


def test_a_dry_run_against_a_server_that_does_not_answer_would_fail(compose_cfg, tmp_path, monkeypatch, caplog):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _dry_run(compose_cfg, ["server=external", f"server.url=http://127.0.0.1:{port}"], tmp_path / "job",
                   monkeypatch, caplog)
    assert "invalid: server.url='http://127.0.0.1:" in out and "did not answer GET /v1/models" in out
    assert "would run" not in out


def test_a_job_with_a_non_text_jsonl_prompt_fails_at_the_workload_stage(compose_cfg, tmp_path):
    from tests.conftest import run_in_process

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "hello there"}\n{"prompt": null}\n')
    row = run_in_process(compose_cfg, ["dataset=file", f"dataset.path={path}"], tmp_path / "job")
    assert row["status"] == "failed" and row["error_stage"] == "workload"
    assert f"{path}:2: field 'prompt' (dataset.field) is null" in row["error"]


def test_the_api_key_variable_measures_nothing_and_leaves_the_hash(compose_cfg):
    from llem.config import config_hash

    base = config_hash(to_config(compose_cfg(EXTERNAL)))
    assert config_hash(to_config(compose_cfg([*EXTERNAL, "server.api_key_env=SOME_NAME"]))) == base


@pytest.mark.parametrize("value", ["key-with\nnewline", "key with space", "schlüssel-123", "tab\tkey123"])
def test_an_api_key_no_http_header_can_carry_is_refused_at_the_check_without_being_repeated(
        compose_cfg, monkeypatch, value):
    monkeypatch.setenv("LLEM_TEST_ODD_KEY", value)
    config = to_config(compose_cfg([*EXTERNAL, "server.api_key_env=LLEM_TEST_ODD_KEY"]))
    with pytest.raises(ConfigError, match=r"server.api_key_env=LLEM_TEST_ODD_KEY: .*printable ASCII") as err:
        check(config)
    assert value not in str(err.value)


@pytest.mark.parametrize("override, path", [("+server.extra_body.x=nan", "server.extra_body.x"),
                                            ("+server.extra_body={a:{b:[1,inf]}}", "server.extra_body.a.b[1]")])
def test_extra_body_values_strict_json_cannot_carry_are_refused(compose_cfg, override, path):
    message = _refused(compose_cfg, [*EXTERNAL, override])
    assert message.startswith(f"{path}=") and "allowed a JSON value" in message


def test_an_empty_server_model_name_is_refused(compose_cfg):
    message = _refused(compose_cfg, [*EXTERNAL, "server.model_name=''"])
    assert message.startswith("server.model_name='' is invalid") and "null" in message
