"""A secret with any characters never reaches a file, the index, the aggregate or the console, in any encoding:
real jobs against the stand-in server with nasty values reaching the config through ``${oc.env:…}``, every
byte they wrote searched for each value's every form. URL credentials and the API key named by
server.api_key_env are kept out the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest

from llem.support import secrets
from tests.conftest import FAST, run_llem
from tests.stand_in_server import StandIn

pytestmark = pytest.mark.slow
pytest.importorskip("aiohttp")

NASTY = {  # quotes, backslashes, non-ASCII, newlines, interpolation syntax: each escapes differently
    "E2E_QUOTE_TOKEN": 'ab"cd\\ef\'gh',
    "E2E_UNICODE_TOKEN": "naïve-ключ-😀-€",
    "E2E_NEWLINE_TOKEN": "line-one\nline-two\ttab",
    "E2E_BRACES_TOKEN": "${oc.env:HOME}-${x}-%(y)s",
}
API_KEY_VAR, API_KEY = "E2E_PLAIN_NAME", "sk-e2e/Api+Key=0123456789"  # a name no rule would call secret


def _leaks(text_or_bytes, values: Dict[str, str]) -> list:
    """(name, form) of every encoded form of a value found in ``text_or_bytes``."""
    found = []
    for name, value in values.items():
        for form in secrets.encodings(value):
            needle = form.encode("utf-8") if isinstance(text_or_bytes, bytes) else form
            if needle in text_or_bytes:
                found.append((name, form))
    return found


def _everything_written(root: Path) -> Dict[str, object]:
    """Every file under ``root`` as bytes, and parquet files decoded too (their values as JSON text)."""
    import pyarrow.parquet as pq

    out: Dict[str, object] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        out[str(path)] = path.read_bytes()
        if path.suffix == ".parquet":
            rows = pq.read_table(path).to_pylist()
            out[f"{path} (decoded)"] = json.dumps(rows, default=str, ensure_ascii=False) + repr(rows)
    return out


@pytest.fixture(scope="module")
def nasty_sweep(tmp_path_factory):
    """One real sweep (two jobs, then the aggregate) whose config holds every nasty value."""
    root = tmp_path_factory.mktemp("nasty")
    env = {**NASTY, API_KEY_VAR: API_KEY}
    with StandIn() as server:
        args = ["-m", *FAST, "server=external", f"server.url={server.url}",
                f"server.api_key_env={API_KEY_VAR}", "model.name=${oc.env:E2E_QUOTE_TOKEN}", "repeat=0,1",
                *[f"+server.extra_body.x{i}=${{oc.env:{name}}}" for i, name in enumerate(NASTY)],
                "hydra.sweep.dir=sweep"]
        sweep = run_llem(args, cwd=root, env_extra=env, timeout=300)
        aggregate = run_llem_module(["llem.aggregate", "sweep"], root, env)
    return root, sweep, aggregate, server


def run_llem_module(args, cwd, env):
    import subprocess
    import sys

    from tests.conftest import llem_env

    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=llem_env(env), capture_output=True,
                          text=True, timeout=300)


def test_the_nasty_values_reached_the_requests(nasty_sweep):
    """Else the search below would find nothing for the wrong reason."""
    root, sweep, _, server = nasty_sweep
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    measured = [b for b in server.bodies if b.get("stream")]  # not the one-token probe of how prompts go
    assert measured and all(b[f"x{i}"] == v for b in measured for i, v in enumerate(NASTY.values()))
    assert list((root / "sweep").rglob("results.parquet"))


def test_no_written_byte_holds_a_value_in_any_encoding(nasty_sweep):
    root, _, _, _ = nasty_sweep
    written = _everything_written(root)
    assert any("index" in name or "runs.parquet" in name for name in written)  # the index and the aggregate
    leaks = {name: _leaks(data, {**NASTY, API_KEY_VAR: API_KEY}) for name, data in written.items()}
    assert {name: found for name, found in leaks.items() if found} == {}


def test_the_console_holds_no_value_in_any_encoding(nasty_sweep):
    _, sweep, aggregate, _ = nasty_sweep
    console = sweep.stdout + sweep.stderr + aggregate.stdout + aggregate.stderr
    assert _leaks(console, {**NASTY, API_KEY_VAR: API_KEY}) == []


def test_the_named_api_key_is_sent_as_a_bearer_token_on_every_request(nasty_sweep):
    _, _, _, server = nasty_sweep
    assert len(server.authorization) > len(server.bodies) > 0  # the check and the model discovery too
    assert set(server.authorization) == {f"Bearer {API_KEY}"}


def test_credentials_in_the_url_never_reach_a_file_or_the_console(tmp_path):
    proc = run_llem([*FAST, "server=external", "server.url=http://alice:Pa55wordXYZ@127.0.0.1:9"], cwd=tmp_path,
                    timeout=120)
    assert proc.returncode == 1
    console = proc.stdout + proc.stderr
    assert "server.url holds credentials" in console and "server.api_key_env" in console
    written = _everything_written(tmp_path)
    assert any(name.endswith("results.parquet") for name in written)  # the failed row
    assert any(name.endswith("overrides.yaml") for name in written)
    for name, data in {**written, "console": console}.items():
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        assert "Pa55wordXYZ" not in text and "alice" not in text, name
