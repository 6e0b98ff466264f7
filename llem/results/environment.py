"""Hardware and software facts recorded with every result (``env.*`` columns).

Reads package versions from metadata (nothing is imported), GPU facts from NVML, and the
scheduler's ids from the environment. Never records environment variables wholesale, so
secrets such as HF_TOKEN cannot leak into results (llem.support.secrets scrubs what reaches them anyway).
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Dict, List, Optional

from llem import __version__
from llem.results.schema import col

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


@dataclass
class Environment:
    """Where a job ran (``env.*`` columns)."""

    llem_version: Optional[str] = col("llem version")
    python: Optional[str] = col("Python version")
    platform: Optional[str] = col("operating system and kernel")
    host: Optional[str] = col("host name")
    cpu_model: Optional[str] = col("CPU model")
    cpu_count: Optional[int] = col("logical CPUs of the host")
    cuda_visible_devices: Optional[str] = col("CUDA_VISIBLE_DEVICES as the job saw it")
    torch_version: Optional[str] = col("installed torch")
    transformers_version: Optional[str] = col("installed transformers")
    accelerate_version: Optional[str] = col("installed accelerate")
    vllm_version: Optional[str] = col("installed vllm")
    tensorrt_llm_version: Optional[str] = col("installed tensorrt_llm")
    nvidia_ml_py_version: Optional[str] = col("installed nvidia-ml-py")
    hydra_core_version: Optional[str] = col("installed hydra-core")
    codecarbon_version: Optional[str] = col("installed codecarbon")
    pandas_version: Optional[str] = col("installed pandas")
    pyarrow_version: Optional[str] = col("installed pyarrow")
    slurm_job_id: Optional[str] = col("SLURM_JOB_ID")
    slurm_array_job_id: Optional[str] = col("SLURM_ARRAY_JOB_ID")
    slurm_array_task_id: Optional[str] = col("SLURM_ARRAY_TASK_ID")
    slurm_procid: Optional[str] = col("SLURM_PROCID")
    slurm_job_nodelist: Optional[str] = col("SLURM_JOB_NODELIST")
    slurm_job_partition: Optional[str] = col("SLURM_JOB_PARTITION")
    gpu_count: int = col("GPUs metered", default=0)
    gpu_name: Optional[str] = col("their model names")
    gpu_uuids: Optional[str] = col("their UUIDs, comma-separated")
    gpu_nvml_indices: Optional[str] = col("their NVML indices, comma-separated")
    gpu_power_limit_w: Optional[float] = col("highest power limit among them (W)")
    gpu_memory_total_mib: Optional[float] = col("largest device memory among them (MiB)")
    gpu_mig_enabled: Optional[bool] = col("MIG mode on any of them")
    gpu_persistence_mode: Optional[bool] = col("persistence mode on all of them")
    driver_version: Optional[str] = col("NVIDIA driver version")
    cuda_driver_version: Optional[str] = col("CUDA version the driver supports")


def capture(gpu_facts: List[Dict[str, Any]], nvml: Any = None) -> Environment:
    """The facts of this process's host, packages and metered GPUs."""
    env = Environment(
        llem_version=__version__, python=platform.python_version(), platform=platform.platform(),
        host=socket.gethostname(), cpu_model=_cpu_model(), cpu_count=os.cpu_count(),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    for pkg in PACKAGES:
        setattr(env, f"{pkg.replace('-', '_')}_version", package_version(pkg))
    for var in SLURM_VARS:
        setattr(env, var.lower(), os.environ.get(var))
    env.gpu_count = len(gpu_facts)
    env.gpu_name = ", ".join(sorted({g["name"] for g in gpu_facts})) or None
    env.gpu_uuids = ",".join(g["uuid"] for g in gpu_facts) or None
    env.gpu_nvml_indices = ",".join(str(g["index"]) for g in gpu_facts) or None
    limits = [g["power_limit_w"] for g in gpu_facts if g.get("power_limit_w") is not None]
    env.gpu_power_limit_w = max(limits) if limits else None
    mems = [g["memory_total_mib"] for g in gpu_facts if g.get("memory_total_mib") is not None]
    env.gpu_memory_total_mib = max(mems) if mems else None
    env.gpu_mig_enabled = any(g.get("mig_enabled") for g in gpu_facts) if gpu_facts else None
    env.gpu_persistence_mode = all(g.get("persistence_mode") for g in gpu_facts) if gpu_facts else None
    if nvml is not None:
        try:
            v = nvml.nvmlSystemGetDriverVersion()
            env.driver_version = v.decode() if isinstance(v, bytes) else str(v)
            c = int(nvml.nvmlSystemGetCudaDriverVersion())
            env.cuda_driver_version = f"{c // 1000}.{(c % 1000) // 10}"
        except Exception:
            pass
    return env
