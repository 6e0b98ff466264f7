"""Hardware and software facts recorded with every result (``env.*`` columns).

Reads package versions from metadata (nothing is imported), GPU facts from NVML, and the
scheduler's ids from the environment. Never records environment variables wholesale, so
secrets such as HF_TOKEN cannot leak into results.
"""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from typing import Any, Dict, List, Optional

from llem import __version__

PACKAGES = ("torch", "transformers", "accelerate", "vllm", "tensorrt_llm", "nvidia-ml-py", "hydra-core",
            "codecarbon", "pandas", "pyarrow")
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID", "SLURM_JOB_NODELIST",
              "SLURM_JOB_PARTITION")


def package_version(package: str) -> Optional[str]:
    """The installed version of ``package`` (distribution name), without importing it; None if absent."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def capture(gpu_facts: List[Dict[str, Any]], nvml: Any = None) -> Dict[str, Any]:
    """One flat dict of ``env.*`` facts."""
    env: Dict[str, Any] = {
        "env.llem_version": __version__,
        "env.python": platform.python_version(),
        "env.platform": platform.platform(),
        "env.host": socket.gethostname(),
        "env.cpu_model": _cpu_model(),
        "env.cpu_count": os.cpu_count(),
        "env.cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    for pkg in PACKAGES:
        env[f"env.{pkg.replace('-', '_')}_version"] = package_version(pkg)
    for var in SLURM_VARS:
        env[f"env.{var.lower()}"] = os.environ.get(var)
    env["env.gpu_count"] = len(gpu_facts)
    env["env.gpu_name"] = ", ".join(sorted({g["name"] for g in gpu_facts})) or None
    env["env.gpu_uuids"] = ",".join(g["uuid"] for g in gpu_facts) or None
    env["env.gpu_nvml_indices"] = ",".join(str(g["index"]) for g in gpu_facts) or None
    limits = [g["power_limit_w"] for g in gpu_facts if g.get("power_limit_w") is not None]
    env["env.gpu_power_limit_w"] = max(limits) if limits else None
    mems = [g["memory_total_mb"] for g in gpu_facts if g.get("memory_total_mb") is not None]
    env["env.gpu_memory_total_mb"] = max(mems) if mems else None
    env["env.gpu_mig_enabled"] = any(g.get("mig_enabled") for g in gpu_facts) if gpu_facts else None
    env["env.gpu_persistence_mode"] = all(g.get("persistence_mode") for g in gpu_facts) if gpu_facts else None
    env["env.driver_version"] = None
    env["env.cuda_driver_version"] = None
    if nvml is not None:
        try:
            v = nvml.nvmlSystemGetDriverVersion()
            env["env.driver_version"] = v.decode() if isinstance(v, bytes) else str(v)
            c = int(nvml.nvmlSystemGetCudaDriverVersion())
            env["env.cuda_driver_version"] = f"{c // 1000}.{(c % 1000) // 10}"
        except Exception:
            pass
    return env


def scrub(text: str) -> str:
    """Remove secret values (tokens in the environment) from text bound for logs or results."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, f"<{var}>")
    return text
