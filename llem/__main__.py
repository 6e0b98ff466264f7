"""``python -m llem`` / ``llem``: one Hydra job per measured experiment (``-m`` for sweeps)."""

from __future__ import annotations

import sys

from llem.backends import register_all
from llem.config import conf_dir


def _flags_first(argv: list) -> list:
    """Let ``-m`` stand anywhere (``llem backend=vllm -m batch=1,8``): argparse before Python 3.12
    rejects positional overrides after a flag, so value-less flags are moved to the front."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    return argv[:1] + flags + [a for a in argv[1:] if a not in flags]


def main() -> None:
    import hydra

    sys.argv = _flags_first(sys.argv)
    register_all()
    failed = []

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
    def app(cfg):
        from llem import job

        row, value = job.run(cfg)
        if row.get("status") != "ok":
            failed.append(row)
        return value

    app()
    from llem.job import SweepSummary

    if failed or SweepSummary.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
