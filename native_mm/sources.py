"""Data sources named by reference: a spec says ``"package.module:function"``.

Why: the library's trainers and evaluators must not know any application's datasets. A
spec (or a command line) names the function that yields the data, the way LightningCLI
names a ``class_path``, and the library calls it. The function takes the split name and
returns :class:`LabeledMedia`::

    data: native_mm.apps.digits.sources:digit_images   # tokenizers/image/digits.yaml

Plain folders and documents JSONL files need no reference: the trainers read them
directly.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class SourceError(ValueError):
    """A source reference that does not resolve, or a source that returned bad data."""


@dataclass
class LabeledMedia:
    """The media of one split, optionally labelled and with an independent judge.

    ``items`` are PIL images, audio file paths or anything the consumer reads; ``judge``
    (when given) scores media of the same kind against ``labels`` and returns an accuracy
    in [0, 1]: a classifier that never saw the tokenizer, so reconstructions can be judged
    by how much of the labels' information they keep.
    """

    items: list[Any]
    labels: list[int] | None = None
    judge: Callable[[Sequence[Any], Sequence[int]], float] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.items):
            raise SourceError(f"{len(self.items)} items but {len(self.labels)} labels")

    def head(self, n: int) -> LabeledMedia:
        """The first ``n`` items (and labels); ``n <= 0`` keeps all."""
        if n <= 0:
            return self
        labels = None if self.labels is None else self.labels[:n]
        return LabeledMedia(self.items[:n], labels, self.judge)


def is_ref(value: Any) -> bool:
    """True for a ``module:function`` reference (a path never matches: no ``/``)."""
    return isinstance(value, str) and bool(_REF.match(value))


def resolve(ref: str) -> Callable[..., Any]:
    """The callable a ``module:function`` reference names, or a :class:`SourceError`."""
    if not is_ref(ref):
        raise SourceError(f"{ref!r} is not a 'package.module:function' reference")
    module, _, name = ref.partition(":")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise SourceError(f"{ref}: cannot load ({e})") from None
    if not callable(obj):
        raise SourceError(f"{ref}: not callable")
    return obj


def load(ref: str, split: str) -> LabeledMedia:
    """Call the source ``ref`` for ``split``; an empty or ill-typed result is an error."""
    out = resolve(ref)(split)
    if not isinstance(out, LabeledMedia):
        raise SourceError(f"{ref}({split!r}) returned {type(out).__name__}, not LabeledMedia")
    if not out.items:
        raise SourceError(f"{ref}({split!r}): no items")
    return out
