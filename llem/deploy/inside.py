"""The measurement process inside a container: ``python -m llem.deploy.inside <job_dir>/.llem-job.pkl``.

Run by ``<runtime> exec`` in the foreground (llem.deploy.container): it reads the job file the driver wrote
into the bind-mounted job dir, records the engine's version as the image has it, imports the engine, measures
(:class:`llem.measure.experiment.Experiment`, as a spawned measurement process does) and writes the job's files there.
Its stage goes into a small file beside them, so that a death is reported with the stage it happened in.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Dict, Optional


def _stage_writer(path: Path):
    def set_stage(stage) -> None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        tmp.write_text(stage.value + "\n")
        os.replace(tmp, path)

    return set_stage


def _logging_to(log_file: Optional[str], level: int) -> None:
    handlers = [logging.StreamHandler()]
    if log_file and os.access(os.path.dirname(log_file) or ".", os.W_OK):
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
                        handlers=handlers, force=True)


def engine_version(engine_cls: Any) -> Dict[str, Optional[str]]:
    """``engine_version_inside`` (name==version of the engine's package here), or why it is null."""
    from llem.results.environment import package_version

    package = getattr(engine_cls, "package", None)
    version = package_version(package) if package else None
    if version is None:
        return {"engine_version_inside": None,
                "container_null_reason": f"the engine's package ({package}) reports no version in the image"}
    return {"engine_version_inside": f"{package}=={version}"}


def main(job_file: str) -> int:
    from llem.support import secrets

    secrets.install()
    with open(job_file, "rb") as fh:
        job = pickle.load(fh)  # noqa: S301 - written by this job's driver into its own job dir
    _logging_to(job.get("log_file"), job.get("level", logging.INFO))
    from llem.backends import engine_class
    from llem.deploy.container import STAGE_FILE
    from llem.measure.experiment import Experiment
    from llem.measure.preload import preload_engine

    config, job_dir, device = job["config"], Path(job["job_dir"]), job["device"]
    engine_cls = engine_class(config.backend.name)
    facts = dataclasses.replace(job["facts"], **engine_version(engine_cls))
    import_s = preload_engine(config, device)
    Experiment(config, job_dir, device, job["idle"], _stage_writer(job_dir / STAGE_FILE), import_s=import_s,
               container=facts).run()
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # every file is written: skip the engine's teardown (the container stays for the next job)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m llem.deploy.inside <job_dir>/.llem-job.pkl")
    sys.exit(main(sys.argv[1]))
