"""``python -m llem`` / ``llem``: one Hydra job per measured experiment (``-m`` for sweeps)."""

from __future__ import annotations

import importlib.util
import re
import signal
import sys
from typing import List, Optional

from llem.support import reaper, secrets
from llem.support.install import install_hint

# Optional Hydra plugins a config group needs: (override pattern, module, llem extra).
PLUGIN_EXTRAS = [
    (r"hydra/launcher=(slurm|local|submitit_\w+)", "hydra_plugins.hydra_submitit_launcher", "slurm"),
    (r"hydra/sweeper=(energy_search|optuna)", "hydra_plugins.hydra_optuna_sweeper", "search"),
]
DRY_RUN = re.compile(r"^\+{0,2}dry_run=(true|True|yes|1)$")
OK_STATUSES = ("ok", "would_run", "would_skip")


def _flags_first(argv: List[str]) -> List[str]:
    """Let ``-m`` stand anywhere (``llem backend=vllm -m batch=1,8``): argparse before Python 3.12
    rejects positional overrides after a flag, so value-less flags are moved to the front."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    return argv[:1] + flags + [a for a in argv[1:] if a not in flags]


def _missing_extra(argv: List[str]) -> Optional[str]:
    """The pip line for an optional Hydra plugin the command line asks for but is not installed."""
    for pattern, module, extra in PLUGIN_EXTRAS:
        asked = next((a for a in argv if re.fullmatch(pattern, a)), None)
        if asked is None:
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            return f"{asked} needs the '{extra}' extra: {install_hint(extra)}"
    return None


def _dry_run_overrides(argv: List[str]) -> List[str]:
    """A dry run writes nothing: no .hydra/ folder, no log file (console only)."""
    if any(DRY_RUN.match(a) for a in argv):
        return ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    return []


def _register_sweeper() -> None:
    """Make llem's sweeper known to Hydra also where its plugin scan cannot list it (an editable install)."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # first: its scan re-executes Hydra's own plugin modules, BasicSweeper's too
    from hydra_plugins.llem_sweeper.llem_sweeper import LlemSweeper

    plugins.register(LlemSweeper)


def _leave_no_orphans(held) -> None:
    """Before exiting: stop what llem still runs and reap it (a process llem leaves is PID 1's to reap)."""
    held.stop_all()
    reaper.reap_adopted()
    reaper.stop_resource_tracker()


def main() -> None:
    secrets.install()  # before anything can print or log a secret
    reaper.adopt_orphans()  # a stopped server's workers become ours to reap, not PID 1's
    argv = _flags_first(sys.argv)
    missing = _missing_extra(argv)
    if missing:
        print(f"llem: {missing}", file=sys.stderr)
        sys.exit(2)
    sys.argv = argv + _dry_run_overrides(argv)

    import hydra

    from llem.backends import register_all
    from llem.config import conf_dir
    from llem.config.help import register_resolvers
    from llem.deploy.held import Held
    from llem.deploy.process import Interrupted

    register_all()
    register_resolvers()
    _register_sweeper()
    failed = []
    held = Held()  # what outlives a job (a kept engine, a running server): the driver's, handed to every job

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
    def app(cfg):
        from llem.run import job

        try:
            row, value = job.run(cfg, held)
        finally:
            reaper.reap_adopted(held.pids())  # orphans of this job's processes
        if row.get("status") not in OK_STATUSES:
            failed.append(row)
        return value

    def between_jobs(signum, frame) -> None:  # a job's own handler replaces this while it runs
        raise Interrupted(signal.Signals(signum).name, None, None)

    signal.signal(signal.SIGTERM, between_jobs)
    signal.signal(signal.SIGINT, between_jobs)
    try:
        app()
    except Interrupted as exc:
        _leave_no_orphans(held)
        where = (f"during {exc.stage.value if exc.stage else 'the job'} of {exc.job_dir}: the measurement was "
                 "stopped and no result was written for it" if exc.job_dir else "between jobs")
        print(f"llem: interrupted by {exc.signal_name} {where}. Run the same command again to resume (finished "
              "jobs are skipped).", file=sys.stderr)
        sys.exit(130 if exc.signal_name == "SIGINT" else 143)
    _leave_no_orphans(held)
    from llem.run.sweep import SweepSummary

    if failed or SweepSummary.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
