"""llem.support.secrets: secret environment values never reach logs, the console or written files."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from llem.support import secrets as s

TOKEN = "hf_NotARealSecret4242xyz"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No secrets from the real environment; everything install() did is undone after each test.

    Tests call install() in their body, not in a fixture: pytest's capture sets sys.stdout / sys.stderr again
    between setup and call, which would drop wrappers installed during setup.
    """
    for name, _ in s.secrets():
        monkeypatch.delenv(name)
    yield
    s.uninstall()


@pytest.fixture
def log():
    """A logger writing to a StringIO (``log.out``), isolated from the root logger."""
    logger = logging.getLogger("test_secrets")
    logger.out = io.StringIO()
    handler = logging.StreamHandler(logger.out)
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO
    yield logger
    logger.removeHandler(handler)


# --- scrub ---------------------------------------------------------------------------------------------------


def test_secret_values_are_replaced_by_their_name(monkeypatch):
    env = {"HF_TOKEN": TOKEN, "OPENAI_API_KEY": "sk-FakeKey0000111122223333", "CLIENT_SECRET": "not-a-secret-9",
           "GITHUB_TOKEN": "ghp_FakeGithubToken1234", "DB_PASSWORD": "hunter2hunter2",
           "HUGGING_FACE_HUB_TOKEN": "hf_Other999"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    text = " ".join(f"{n}={v}" for n, v in env.items())
    out = s.scrub(text)
    assert out == " ".join(f"{n}=<{n}>" for n in env)
    assert not any(v in out for v in env.values())


def test_short_values_and_other_names_are_left_alone(monkeypatch):
    monkeypatch.setenv("SHORT_TOKEN", "ab123")  # < MIN_SECRET_LEN
    monkeypatch.setenv("SIX_TOKEN", "abc123")  # == MIN_SECRET_LEN: a secret
    monkeypatch.setenv("KEYBOARD_LAYOUT", "dvorak-international")
    monkeypatch.setenv("TOKEN_COUNT", "123456789")
    text = f"ab123 dvorak-international 123456789 {os.environ['PATH']} abc123"
    assert s.scrub(text) == text.replace("abc123", "<SIX_TOKEN>")
    assert [n for n, _ in s.secrets()] == ["SIX_TOKEN"]


def test_names_match_case_insensitively():
    assert s.is_secret_name("hf_token") and s.is_secret_name("wandb_api_key") and s.is_secret_name("X_Password")
    assert not s.is_secret_name("KEYS") and not s.is_secret_name("SECRETS_DIR") and not s.is_secret_name("PATH")


def test_a_value_containing_another_secret_is_replaced_whole(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("A_SECRET", f"prefix-{TOKEN}-suffix")
    assert [n for n, _ in s.secrets()] == ["A_SECRET", "HF_TOKEN"]
    assert s.scrub(f"x prefix-{TOKEN}-suffix y {TOKEN}") == "x <A_SECRET> y <HF_TOKEN>"


def test_environment_is_read_on_every_call(monkeypatch):
    assert s.scrub(TOKEN) == TOKEN
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert s.scrub(TOKEN) == "<HF_TOKEN>"
    monkeypatch.delenv("HF_TOKEN")
    assert s.scrub(TOKEN) == TOKEN


def test_non_strings_are_returned_unchanged(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    obj = object()
    assert s.scrub(None) is None and s.scrub(42) == 42 and s.scrub(obj) is obj
    assert s.scrub(TOKEN.encode()) == TOKEN.encode()


def test_scrub_value_walks_nested_rows(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    row = {"model.name": TOKEN, "n": 3, "ok": None, "warnings": [f"bad {TOKEN}", ("x", TOKEN, 1.5)],
           TOKEN: {"inner": [TOKEN]}}
    assert s.scrub_value(row) == {"model.name": "<HF_TOKEN>", "n": 3, "ok": None,
                                  "warnings": ["bad <HF_TOKEN>", ("x", "<HF_TOKEN>", 1.5)],
                                  "<HF_TOKEN>": {"inner": ["<HF_TOKEN>"]}}
    assert TOKEN in row["model.name"]  # the input is not modified


# --- logging and streams -------------------------------------------------------------------------------------


def test_log_args_are_scrubbed(monkeypatch, log):
    s.install()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    log.info("tok=%s, 100%% sure", TOKEN)
    assert log.out.getvalue() == "tok=<HF_TOKEN>, 100% sure\n"


def test_logged_exception_is_scrubbed(monkeypatch, log):
    s.install()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    try:
        raise ValueError(f"bad token {TOKEN}")
    except ValueError:
        log.exception("failed with %s", TOKEN)
    out = log.out.getvalue()
    assert TOKEN not in out
    assert "failed with <HF_TOKEN>" in out and "Traceback" in out and "ValueError: bad token <HF_TOKEN>" in out


def test_stack_info_is_scrubbed(monkeypatch):
    s.install()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    record = logging.getLogRecordFactory()("n", logging.INFO, "f.py", 1, "m", (), None, sinfo=f"Stack: {TOKEN}")
    assert record.stack_info == "Stack: <HF_TOKEN>"


def test_records_are_untouched_without_secrets():
    s.install()
    record = logging.getLogRecordFactory()("n", logging.INFO, "f.py", 1, "a=%s", (TOKEN,), None)
    assert record.msg == "a=%s" and record.args == (TOKEN,)


def test_print_is_scrubbed(monkeypatch, capsys):
    s.install()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    print("token:", TOKEN)
    print(f"err {TOKEN}", file=sys.stderr)
    out, err = capsys.readouterr()
    assert out == "token: <HF_TOKEN>\n" and err == "err <HF_TOKEN>\n"


def test_stream_wrapper_scrubs_writes_and_delegates_the_rest(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    buf = io.StringIO()
    stream = s.ScrubbingStream(buf)
    assert stream.write(TOKEN) == len(TOKEN)
    stream.writelines([" a", f" {TOKEN}\n"])
    stream.flush()
    assert stream.getvalue() == "<HF_TOKEN> a <HF_TOKEN>\n" and not stream.isatty()
    with open(tmp_path / "f.txt", "w", encoding="utf-8") as f:
        wrapped = s.ScrubbingStream(f)
        assert wrapped.fileno() == f.fileno() and wrapped.encoding == "utf-8" and wrapped.buffer is f.buffer


def test_install_twice_does_not_double_wrap_and_uninstall_restores():
    before = sys.stdout, sys.stderr, logging.getLogRecordFactory()
    s.install()
    factory = logging.getLogRecordFactory()
    s.install()
    assert logging.getLogRecordFactory() is factory is not before[2]
    for stream, orig in zip((sys.stdout, sys.stderr), before):
        assert isinstance(stream, s.ScrubbingStream) and stream._wrapped is orig
    s.uninstall()
    assert (sys.stdout, sys.stderr, logging.getLogRecordFactory()) == before


# --- files ---------------------------------------------------------------------------------------------------


def _old_mtime(path: Path) -> int:
    os.utime(path, ns=(10**18, 10**18))
    return path.stat().st_mtime_ns


def test_scrub_file_rewrites_only_files_holding_a_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    dirty, clean = tmp_path / "dirty.yaml", tmp_path / "clean.yaml"
    dirty.write_bytes(f"model:\r\n  name: {TOKEN}\r\n".encode())
    dirty.chmod(0o640)
    clean.write_bytes(b"model:\n  name: gpt2\n")
    clean_mtime = _old_mtime(clean)
    assert s.scrub_file(dirty) is True
    assert dirty.read_bytes() == b"model:\r\n  name: <HF_TOKEN>\r\n"  # line endings kept
    assert dirty.stat().st_mode & 0o777 == 0o640
    assert s.scrub_file(clean) is False
    assert clean.read_bytes() == b"model:\n  name: gpt2\n" and clean.stat().st_mtime_ns == clean_mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.yaml", "dirty.yaml"]  # no temp file left


def test_scrub_file_leaves_binary_and_missing_files_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    nul, latin = tmp_path / "a.bin", tmp_path / "b.txt"
    nul.write_bytes(b"PAR1\0\x01" + TOKEN.encode())
    latin.write_bytes(b"caf\xe9 " + TOKEN.encode())
    assert not s.scrub_file(nul) and not s.scrub_file(latin) and not s.scrub_file(tmp_path / "missing.txt")
    assert nul.read_bytes() == b"PAR1\0\x01" + TOKEN.encode() and latin.read_bytes() == b"caf\xe9 " + TOKEN.encode()


def test_scrub_tree_rewrites_matching_files_recursively(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    files = {".hydra/config.yaml": f"name: {TOKEN}\n", "multirun.yaml": f"- model.name={TOKEN}\n",
             "0/job.log": f"[INFO] {TOKEN}\n", "0/result.json": '{"ok": 1}', "notes.md": TOKEN}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    untouched = {rel: _old_mtime(tmp_path / rel) for rel in ("0/result.json", "notes.md")}
    changed = s.scrub_tree(tmp_path)
    assert changed == sorted(tmp_path / rel for rel in (".hydra/config.yaml", "multirun.yaml", "0/job.log"))
    for rel in changed:
        assert TOKEN not in rel.read_text() and "<HF_TOKEN>" in rel.read_text()
    for rel, mtime in untouched.items():
        assert (tmp_path / rel).read_text() == files[rel] and (tmp_path / rel).stat().st_mtime_ns == mtime
    assert s.scrub_tree(tmp_path) == []


# --- end to end ----------------------------------------------------------------------------------------------


def test_subprocess_output_never_holds_the_token():
    code = ("import llem.support.secrets as s; s.install(); import logging; logging.basicConfig(level=logging.INFO); "
            f"logging.getLogger('x').info('tok=%s', '{TOKEN}'); print('{TOKEN}'); raise RuntimeError('{TOKEN}')")
    env = {k: v for k, v in os.environ.items() if not s.is_secret_name(k)}
    env["HF_TOKEN"] = TOKEN
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert TOKEN not in proc.stdout and TOKEN not in proc.stderr
    assert proc.stdout == "<HF_TOKEN>\n"
    assert "INFO:x:tok=<HF_TOKEN>" in proc.stderr and "RuntimeError: <HF_TOKEN>" in proc.stderr


# --- encoded forms, URL credentials, protected names ----------------------------------------------------------

NASTY = 'q"uo\\te-ñ€😀\nnext ${x}'


@pytest.mark.parametrize("encode", [
    lambda v: v,
    lambda v: json.dumps(v),
    lambda v: json.dumps(v, ensure_ascii=False),
    repr,
    lambda v: urllib.parse.quote(v, safe=""),
    lambda v: urllib.parse.quote_plus(v),
    lambda v: base64.b64encode(v.encode()).decode(),
    lambda v: yaml.safe_dump({"k": v}),
    lambda v: v.encode("unicode_escape").decode(),
])
def test_every_encoded_form_of_a_value_is_replaced(monkeypatch, encode):
    monkeypatch.setenv("NASTY_TOKEN", NASTY)
    out = s.scrub(f"before {encode(NASTY)} after")
    assert "<NASTY_TOKEN>" in out and not any(form in out for form in s.encodings(NASTY))


@pytest.mark.parametrize("outer", [json.dumps, repr], ids=["json", "repr"])
@pytest.mark.parametrize("inner", [json.dumps, repr], ids=["json", "repr"])
def test_a_value_escaped_twice_is_replaced(monkeypatch, inner, outer):
    monkeypatch.setenv("NASTY_TOKEN", NASTY)  # e.g. a server's error event quoting the key, quoted in a summary
    out = s.scrub(f"before {outer(inner(NASTY)[1:-1])} after")
    assert "<NASTY_TOKEN>" in out and "te-" not in out


def test_rows_are_scrubbed_before_they_are_encoded(monkeypatch, compose_cfg):
    from llem.config import to_config
    from llem.results.files import result_table
    from llem.results.row import assemble

    monkeypatch.setenv("NASTY_TOKEN", NASTY)
    config = to_config(compose_cfg(["server=external", "server.url=http://127.0.0.1:8000"]))
    config.server.extra_body = {"key": NASTY, NASTY: [NASTY]}
    row = assemble({}, config=config)
    assert row.values["cfg.server.extra_body"] == {"key": NASTY, NASTY: [NASTY]}  # encoded only when written
    text = json.dumps(result_table(row).to_pylist(), ensure_ascii=False)
    assert "<NASTY_TOKEN>" in text and not any(form in text for form in s.encodings(NASTY))


def test_url_credentials_are_replaced_wherever_they_appear():
    text = "server.url=http://alice:Pa55word@10.0.0.1:8000/v1 and https://tok3n@host"
    assert s.scrub(text) == "server.url=http://<credentials>@10.0.0.1:8000/v1 and https://<credentials>@host"
    assert s.scrub_value({"url": ["http://u:p@h"]}) == {"url": ["http://<credentials>@h"]}
    assert s.scrub("mail alice@example.com, http://host/a@b") == "mail alice@example.com, http://host/a@b"


def test_a_protected_variable_is_a_secret_whatever_its_name_also_in_child_processes(monkeypatch):
    monkeypatch.delenv(s.PROTECTED_VAR, raising=False)
    monkeypatch.setenv("PLAIN_NAME", "value-of-a-plain-name")
    assert s.scrub("x value-of-a-plain-name") == "x value-of-a-plain-name"
    s.protect("PLAIN_NAME")
    assert s.scrub("x value-of-a-plain-name") == "x <PLAIN_NAME>"
    code = "from llem.support import secrets; print(secrets.scrub('x value-of-a-plain-name'))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert child.stdout.strip() == "x <PLAIN_NAME>"


def test_a_yaml_file_is_checked_parsed_too(monkeypatch, tmp_path):
    """A value YAML folded over lines is no text form: the parsed values are scrubbed and written again."""
    value = "word " * 30 + "end-of-secret"
    monkeypatch.setenv("LONG_TOKEN", value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": value}}, width=40))
    assert value not in path.read_text()  # folded: no text form matches
    assert s.scrub_file(path)
    assert yaml.safe_load(path.read_text()) == {"model": {"name": "<LONG_TOKEN>"}}


# --- a launched server's log -----------------------------------------------------------------------------------

PRINTER = ("import os, sys, time\n"
           "time.sleep(float(sys.argv[1]))\n"
           "print('token is', os.environ['HF_TOKEN'], flush=True)\n"
           "time.sleep(float(sys.argv[2]))\n")


def _wait_for(path: Path, text: str, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never reached {path}")


def test_a_server_log_is_scrubbed_as_it_is_written(monkeypatch, tmp_path):
    from llem.serving import log_pipe

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    path = tmp_path / "server.log"
    pipe = log_pipe.start(path)
    child = subprocess.Popen([sys.executable, "-c", PRINTER, "0", "30"], stdout=pipe.stdin, stderr=subprocess.STDOUT)
    pipe.stdin.close()
    try:
        content = _wait_for(path, "token is")  # while the server-like child still runs
        assert "<HF_TOKEN>" in content and TOKEN not in content
    finally:
        child.kill()
        child.wait(10)
    pipe.wait(10)  # the child's output ended: the pipe exits by itself


def test_a_server_log_is_still_written_when_llem_dies(monkeypatch, tmp_path):
    """The driver starts the pipe and a child that prints later, then is killed: the line still arrives, scrubbed."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    path = tmp_path / "server.log"
    driver = ("import subprocess, sys, os, signal\n"
              "from llem.serving import log_pipe\n"
              f"pipe = log_pipe.start({str(path)!r})\n"
              f"subprocess.Popen([sys.executable, '-c', {PRINTER!r}, '1', '0'], stdout=pipe.stdin)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", driver], cwd=REPO, timeout=60)
    assert proc.returncode == -9
    content = _wait_for(path, "token is")
    assert "<HF_TOKEN>" in content and TOKEN not in content


def test_a_server_that_writes_a_lot_never_blocks_on_the_log_pipe(tmp_path):
    """Megabytes of output, and one line longer than the pipe's line limit, go through at once."""
    from llem.serving import log_pipe

    path = tmp_path / "server.log"
    flood = ("import sys\nfor i in range(50000): print('line', i, 'x' * 80)\n"
             "sys.stdout.write('y' * (3 * (1 << 20)))\n")
    pipe = log_pipe.start(path)
    child = subprocess.Popen([sys.executable, "-c", flood], stdout=pipe.stdin)
    pipe.stdin.close()
    assert child.wait(60) == 0
    pipe.wait(60)
    data = path.read_bytes()
    assert data.count(b"\n") == 50000 and data.endswith(b"y" * (3 * (1 << 20)))


def test_a_job_dir_name_holds_a_secrets_name_not_its_value(monkeypatch):
    from llem.config.dirnames import job_dirname

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    name = job_dirname([f"model.name={TOKEN}", "server.url=http://alice:Pa55word@10.0.0.1:8000"])
    assert name == "name=_HF_TOKEN_,url=http_credentials_@10.0.0.1_8000"
