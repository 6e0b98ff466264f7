"""``python -m llem`` / ``llem``: one Hydra job per measured experiment (``-m`` for sweeps)."""

from __future__ import annotations

import sys

from llem.config import conf_dir, register_configs


def main() -> None:
    import hydra

    register_configs()
    failed = []

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
    def app(cfg):
        from llem import job

        row = job.run(cfg)
        if row.get("status") != "ok":
            failed.append(row)

    app()
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
