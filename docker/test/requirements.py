"""Print the requirements of llem's test image: llem's dependencies and the extras it runs with.

Read from pyproject.toml (the one place they are declared), so the image's wheels follow it.
Usage: requirements.py PYPROJECT EXTRA... ; needs Python >= 3.11 (tomllib).
"""

from __future__ import annotations

import sys

import tomllib


def requirements(pyproject: str, extras: list) -> list:
    """The project's dependencies, then each extra's, without repeats, in order."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        sys.exit(f"requirements.py: no extra {unknown} in {pyproject}; its extras: {sorted(optional)}")
    out = []
    for req in [*project.get("dependencies", []), *(r for e in extras for r in optional[e])]:
        if req not in out:
            out.append(req)
    return out


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
