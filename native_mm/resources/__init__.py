"""Where the shipped files are: recipes (``recipes/``, the committed spoken digits in
``recipes/data/``) and tokenizer specs and trained tokenizers (``tokenizers/``).

In a clone they are the repository's top-level folders; an installed wheel carries them as
package data under ``native_mm/resources/`` (pyproject.toml maps the two folders there),
so ``native-mm run`` works from any directory without a clone.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def root() -> Path:
    """The folder holding ``recipes/`` and ``tokenizers/``: the wheel's package data when
    installed, else the clone this package sits in."""
    if (_PACKAGE / "recipes").is_dir() and (_PACKAGE / "tokenizers").is_dir():
        return _PACKAGE
    return _PACKAGE.parent.parent


def path(relative: str | Path) -> Path:
    """A shipped file, e.g. ``path("recipes/digits.yaml")``."""
    return root() / relative
