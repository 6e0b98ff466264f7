"""Print the digest of what llem's wheel is built from (the package, its config, its build file), or the files.

The test image carries it as the label ``llem.source``: an image whose label differs from the checkout's
runs other code than the checkout's, even at the same ``llem.version``. Standard library only, so the
build script can run it with any Python 3.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

SOURCES = ("llem", "conf", "hydra_plugins", "pyproject.toml", "README.md")
SKIPPED = ("__pycache__", ".egg-info")


def source_files(root: Path):
    """The files under SOURCES, sorted, without caches and build metadata."""
    for name in SOURCES:
        path = root / name
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in found:
            rel = f.relative_to(root)
            if not any(part.endswith(SKIPPED) for part in rel.parts) and f.suffix != ".pyc":
                yield rel


def source_digest(root: Path) -> str:
    """sha256 over each source file's relative path and content."""
    h = hashlib.sha256()
    for rel in source_files(root):
        h.update(str(rel).encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()


if __name__ == "__main__":
    # source_digest.py ROOT: the digest; source_digest.py --files ROOT: the files it covers, one a line
    files = sys.argv[1:2] == ["--files"]
    args = sys.argv[2:] if files else sys.argv[1:]
    top = Path(args[0] if args else ".").resolve()
    print("\n".join(map(str, source_files(top))) if files else source_digest(top))
