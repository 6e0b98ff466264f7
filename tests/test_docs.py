"""The docs cannot drift from the code: every config key is in docs/configuration.md (an engine's
``backend.*`` keys in docs/engines.md), and every install hint has the README's form."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterator

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
SERVER_MODES = ("none", "launch", "external")
BACKENDS = ("pytorch", "vllm", "tensorrt")


def _leaves(tree: Dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def documented(key: str, text: str) -> bool:
    """``key`` is written out in full, or as ``.tail`` in a line that names its top-level key."""
    if f"`{key}`" in text:
        return True
    parts = key.split(".")
    tails = [".".join(parts[i:]) for i in range(1, len(parts))]
    return any(f"`{parts[0]}" in line and any(f"`.{tail}`" in line for tail in tails) for line in text.splitlines())


def test_documented_reads_the_table_shorthand():
    line = "| `warmup.batches`, `.until_cv` | 1, null | ... |"
    assert documented("warmup.until_cv", line) and documented("warmup.batches", line)
    assert not documented("warmup.cv_window", line)


def test_every_config_key_is_in_the_configuration_doc(compose_cfg):
    config_doc = (ROOT / "docs" / "configuration.md").read_text()
    engines_doc = (ROOT / "docs" / "engines.md").read_text()
    missing = set()
    for overrides in ([], *[[f"server={mode}"] for mode in SERVER_MODES], *[[f"backend={b}"] for b in BACKENDS]):
        tree = OmegaConf.to_container(compose_cfg(overrides), resolve=False)
        for key in _leaves(tree):
            docs = config_doc + engines_doc if key.startswith("backend.") else config_doc
            if not documented(key, docs):
                missing.add(key)
    assert not missing, f"keys missing from docs/configuration.md: {sorted(missing)}"


def test_install_hints_have_the_readme_form():
    readme = (ROOT / "README.md").read_text()
    assert 'pip install ".[pytorch,dev]"' in readme
    old_form = re.compile(r"pip install ['\"]?llem\[")
    files = [*ROOT.glob("llem/**/*.py"), *ROOT.glob("conf/**/*.yaml"), *ROOT.glob("docs/*.md"), ROOT / "README.md",
             *ROOT.glob("docker/*")]
    offenders = [str(f.relative_to(ROOT)) for f in files if f.is_file() and old_form.search(f.read_text())]
    assert not offenders, f"install hints not in the README's form (pip install \".[extra]\"): {offenders}"
