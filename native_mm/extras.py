"""Optional dependencies ("extras"): imported only when a recipe asks for them.

Experiment trackers are not needed to train (the CSV logger records everything), nor
pyarrow to read our own documents, nor Dask to tokenize on one machine, so they are
extras, e.g. ``pip install -e ".[wandb]"``; asking for one that is not installed is a
one-line error naming the extra, before any work starts.
"""

from __future__ import annotations

import importlib.util


class MissingExtra(ValueError):
    """A recipe asks for an optional dependency that is not installed."""


def require(module: str, extra: str, asked_by: str, instead: str = "") -> None:
    """Raise :class:`MissingExtra` if ``module`` cannot be imported (``instead``: what to do
    without it, e.g. "log to csv")."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(
            f'{asked_by} needs {module}, which is not installed: pip install -e ".[{extra}]" '
            f"(or pip install 'native-mm[{extra}]')" + (f", or {instead}" if instead else "")
        )
