"""Where ``model.weights=pretrained`` comes from, checked before anything runs.

A pretrained model loads from a local copy — ``model.hf_id`` is a directory, or the Hugging Face
cache holds a snapshot of the repo (and ``model.revision``) with its config and weight files — or
is downloaded from the Hub at load. Without a local copy and with no Hub to download from, loading
would fail only after the baseline and the engine's start (tens of seconds per job); this check
fails the job at once with the command that fetches the model. Only the standard library is used:
no import of huggingface_hub or transformers, and the Hub is asked one short question.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import urllib.parse
from pathlib import Path
from typing import Optional

from llem.config import ModelConfig, Weights, hub
from llem.support.errors import LlemError

PROBE_TIMEOUT_S = 1.0  # the Hub answers a HEAD in well under this; a closed network must not stall a job
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # as huggingface_hub reads its boolean variables
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ModelUnavailable(LlemError):
    """Pretrained weights that can be neither loaded locally nor downloaded."""


def check(model: ModelConfig) -> None:
    """Raise :class:`ModelUnavailable` when pretrained weights have no local copy and no Hub to come from."""
    if model.weights != Weights.pretrained or not model.hf_id:
        return
    if Path(model.hf_id).expanduser().is_dir():
        return
    missing = missing_from_cache(model.hf_id, model.revision)
    if missing is None:
        return
    offline = hub_offline()
    if offline:
        why = f"{offline} is set, so the Hugging Face Hub is not asked"
    else:
        why = probe_hub(model.hf_id, model.revision)
        if why is None:
            return
    raise ModelUnavailable(
        f"model.hf_id={model.hf_id} (model.weights=pretrained) has no local copy ({missing}) and cannot be "
        f"downloaded: {why}. Download it where the Hub is reachable: {download_command(model.hf_id, model.revision)}"
        " (or set model.hf_id to a local directory), or measure its architecture offline with model.weights=random")


def hf_home() -> Path:
    default = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(os.environ.get("HF_HOME", default))))


def hub_cache() -> Path:
    """The hub cache transformers, vLLM and TensorRT-LLM read: HF_HUB_CACHE, else HF_HOME/hub."""
    legacy = os.environ.get("HUGGINGFACE_HUB_CACHE", str(hf_home() / "hub"))
    return Path(os.path.expandvars(os.path.expanduser(os.environ.get("HF_HUB_CACHE", legacy))))


def hub_offline() -> Optional[str]:
    """The variable that turns the Hub off (HF_HUB_OFFLINE, or the older TRANSFORMERS_OFFLINE), if one does."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name):
            return name if os.environ[name].upper() in TRUE_VALUES else None
    return None


def missing_from_cache(hf_id: str, revision: Optional[str]) -> Optional[str]:
    """None when the cache holds a snapshot of ``hf_id`` at ``revision`` with config and weights; else what
    is missing (the cache layout: ``models--<org>--<name>/refs/<revision>`` → ``snapshots/<commit>/``)."""
    repo = hub_cache() / ("models--" + hf_id.replace("/", "--"))
    ref = revision or "main"
    if not repo.is_dir():
        return f"not a local directory, and not in the Hugging Face cache {hub_cache()}"
    commit = ref if COMMIT.match(ref) else _read_ref(repo / "refs" / ref)
    snapshot = repo / "snapshots" / commit if commit else None
    if snapshot is None or not snapshot.is_dir():
        return f"the Hugging Face cache {hub_cache()} holds no snapshot of revision {ref}"
    if not (snapshot / "config.json").is_file():
        return f"its cached snapshot {snapshot} has no config.json"
    if not _has_weights(snapshot):
        return f"its cached snapshot {snapshot} has no complete weight files"
    return None


def _read_ref(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _has_weights(snapshot: Path) -> bool:
    """Every shard an index names, or (no index) any weight file; a dangling link is a download cut short."""
    import json

    for name in INDEX_FILES:
        index = snapshot / name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
            except (OSError, ValueError, AttributeError):
                return False
            return bool(shards) and all((snapshot / shard).is_file() for shard in shards)
    return any(p.suffix in WEIGHT_SUFFIXES and p.is_file() for p in snapshot.iterdir())


def probe_hub(hf_id: str, revision: Optional[str], timeout_s: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """None when the Hub serves the repo's config.json at ``revision``; else why not (never the token).
    One HEAD request, as transformers makes before a download, bounded in time as a whole."""
    base = hub.endpoint()
    url = f"{base}/{hf_id}/resolve/{urllib.parse.quote(revision or 'main', safe='')}/config.json"
    token = _token()
    status, error = hub.head(url, timeout_s, {"Authorization": f"Bearer {token}"} if token else None)
    if status is None:
        if error and error.startswith("no answer"):
            return f"the Hugging Face Hub at {base} did not answer within {timeout_s:g} s"
        return f"the Hugging Face Hub at {base} cannot be reached ({error})"
    if status in (401, 403, 404):
        access = ("HF_TOKEN is set but gives no access to it" if token else "set HF_TOKEN to a token with access")
        return f"{base} answers {status} for it: not found or gated; {access}"
    return None  # 2xx or a redirect to the file: downloadable; any other answer is left to the engine's load


def _token() -> Optional[str]:
    """The token huggingface_hub would send: HF_TOKEN, else the file ``hf auth login`` wrote."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token.strip()
    path = Path(os.path.expandvars(os.path.expanduser(os.environ.get("HF_TOKEN_PATH", str(hf_home() / "token")))))
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def download_command(hf_id: str, revision: Optional[str]) -> str:
    """The download command of the installed huggingface_hub: ``hf download``, or ``huggingface-cli download``
    in versions before ``hf`` existed."""
    try:
        scripts = {ep.name for ep in importlib.metadata.distribution("huggingface_hub").entry_points
                   if ep.group == "console_scripts"}
    except importlib.metadata.PackageNotFoundError:
        scripts = set()
    cli = "huggingface-cli download" if "huggingface-cli" in scripts and "hf" not in scripts else "hf download"
    command = f"{cli} {hf_id}" + (f" --revision {revision}" if revision else "")
    return command if scripts else f"pip install huggingface_hub && {command}"
