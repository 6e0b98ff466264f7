"""TensorRT-LLM's setup shared by the engine and its server (``trtllm-serve``), from the config alone: the
cheap check, the compile caches, and the serving part (:class:`~llem.backends.base.Serving`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from llem.backends._engine_args import check_engine_args, package_dir
from llem.backends._trt_args import ARGS_CLASSES, llm_arguments, serve_argv
from llem.backends.base import CompileCache, ServerLaunch, Serving, installed
from llem.results.environment import package_version
from llem.support.errors import DeviceError, EngineUnavailable
from llem.support.install import install_hint

INSTALL_HINT = install_hint("tensorrt") + " (or use docker/Dockerfile.tensorrt, NVIDIA's release image)"


def check_setup(backend: Any, device: str) -> None:
    """The engine's (and trtllm-serve's) cheap check: TensorRT-LLM installed, a GPU, and an engine_args key LLM
    does not take named as llem's key here, not in load (its argument set is read from tensorrt_llm's source:
    importing it is start-up)."""
    if not installed("tensorrt_llm"):  # no import: that is start-up, timed in load
        raise EngineUnavailable(f"backend=tensorrt needs tensorrt_llm, which is not installed: {INSTALL_HINT}")
    if device != "cuda":
        raise DeviceError("backend=tensorrt runs on GPUs only: use device=cuda (or auto on a GPU machine)")
    if not backend.engine_args:
        return
    package = package_dir("tensorrt_llm")
    known = llm_arguments(package, backend.llm_backend) if package is not None else frozenset()
    llm = "tensorrt_llm._tensorrt_engine.LLM" if backend.llm_backend == "trt" else "tensorrt_llm.LLM"
    version = package_version("tensorrt_llm") or "version unknown"
    target = f"{llm} ({ARGS_CLASSES[backend.llm_backend]}, TensorRT-LLM {version})"
    check_engine_args(backend.engine_args, known, target, package)


def caches(backend: Any, root: Path) -> CompileCache:
    """Built TensorRT engines (llm_backend=trt: the hit/miss signal), and Triton's and Inductor's
    kernels, under the root."""
    env = {"TRITON_CACHE_DIR": str(root / "triton"), "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor")}
    if backend.llm_backend != "trt":
        return CompileCache(env=env)
    engines = Path(backend.engine_cache_dir or root / "trt").expanduser()
    return CompileCache(env=env, artifacts=[str(engines / "*" / "*")])


class TensorRTServing(Serving):
    """``trtllm-serve``: what the engine needs, its documented flags and an options file for the rest."""

    apis = ("completions", "chat")

    def check(self) -> None:
        check_setup(self.backend, self.device)  # trtllm-serve needs what the engine needs

    def served_model(self, root: Path) -> Optional[Path]:
        """Random weights: the dummy model dir (config.json) with llem's id-word tokenizer beside it."""
        from llem.backends._served_model import dummy_model_dir

        return dummy_model_dir(self.config.model, root)

    def command(self, model_dir: Optional[Path], host: str, port: int) -> ServerLaunch:
        """``trtllm-serve MODEL`` with its documented flags; the other LLM arguments (load_format, KV-cache and
        quantisation configs, engine_args) in the YAML file ``--extra_llm_api_options`` reads. With ``batch``
        null no ``--max_batch_size``: the server runs at its own default."""
        cfg = self.config
        argv = serve_argv(cfg, str(model_dir) if model_dir else cfg.model.hf_id, host, port)
        env = dict(caches(self.backend, Path(cfg.cache_dir).expanduser()).env)
        return ServerLaunch(argv=argv, env=env, prompt="token_ids", id_words=model_dir is not None,
                            max_in_flight=cfg.batch, in_flight_flag="--max_batch_size",
                            max_in_flight_null_reason=None if cfg.batch else (
                                "batch is null: trtllm-serve ran at its own default max_batch_size, which llem "
                                "does not read back"))
