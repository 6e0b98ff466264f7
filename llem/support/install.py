"""The one form of an install hint, as the README gives it: an extra installed from a clone of llem."""


def install_hint(extra: str) -> str:
    """``pip install ".[extra]"`` with where to run it (llem is installed from its source tree)."""
    return f'pip install ".[{extra}]" from a clone of llem'
